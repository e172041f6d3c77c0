"""
Self-correction's effect at inference (paper §2.4) on a real model: the same problems, seed and budget
without it (N_corr 0) and with it (N_corr 4, L_suf as infer.py); paired differences with a bootstrap 95%
interval over problems (bench/chat_order.py's). For a model that writes code that runs, e.g.
Qwen2.5-Coder-0.5B-Instruct (docs/real-models.md: offline, converted from GGUF).

    python bench/self_correction.py --model out/qwen-coder --n 40          # the first 40 MATH500 problems

Per setting: accuracy, code ratio (answers with a call), call success (calls that ran / calls, pooled; a
rolled-back attempt is not in the answer, so it is not counted), truncated and boxed answers, and the
rollbacks made. Writes every answer to --out (JSONL) and prints one table.
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as M  # noqa: E402
import rewards  # noqa: E402
from chat_order import METRICS, bootstrap, metrics  # noqa: E402  bench/: the same metrics and interval
from sandbox import Sandbox  # noqa: E402

SETTINGS = {"no self-correction": 0, "self-correction (N_corr 4)": 4}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model dir with a chat template")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"),
                   help="folder of the shared JSONL files")
    p.add_argument("--benchmark", default="math500", help="<name>.jsonl in --data-dir")
    p.add_argument("--n", type=int, default=40, help="problems (the first n)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens per answer, tool output included")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (the paper's evaluation: 0.6)")
    p.add_argument("--l-suf", type=int, default=500, help="L_suf: reasoning tokens rolled back before a failed block")
    p.add_argument("--batch", type=int, default=40, help="prompts per rollout call")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/self_correction.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    probs = rewards.read_problems(os.path.join(args.data_dir, f"{args.benchmark}.jsonl"))[:args.n]
    m, tok = M.load(args.model)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = {}
    with Sandbox(workers=2) as sb, open(args.out, "w") as f:
        for setting, n_corr in SETTINGS.items():
            t0, rows[setting] = time.time(), []
            for s in range(0, len(probs), args.batch):
                chunk = probs[s:s + args.batch]
                prompts = [tok.encode(M.build_prompt(tok, q["problem"], "chat"), add_special_tokens=False)
                           for q in chunk]
                rs = M.rollout(m, tok, prompts, sb, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               seed=args.seed + s, max_tool_calls=10, n_corr=n_corr, l_suf=args.l_suf)
                for q, r in zip(chunk, rs):
                    pred = rewards.extract_answer(r.text)
                    rec = dict(setting=setting, id=q["id"], pred=pred,
                               correct=pred is not None and rewards.is_equiv(pred, q["answer"]),
                               calls=r.tool_calls, ok=r.tool_calls - r.tool_errors, corrections=r.corrections,
                               finish=r.finish, tokens=r.generated, response=r.text)
                    rows[setting].append(rec)
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
            print(f"{setting}: {len(probs)} answers in {time.time() - t0:.0f} s", flush=True)
    a, b = rows.values()
    ma, mb, ci = metrics(a), metrics(b), bootstrap(a, b)
    calls = [sum(r["calls"] for r in rs) for rs in (a, b)]
    print(f"\n{args.model}: the first {len(probs)} problems of {args.benchmark}, one sample each, "
          f"T={args.temperature}, seed {args.seed}, {args.max_new_tokens} tokens, chat template; "
          f"calls {calls[0]} vs {calls[1]}; rollbacks {sum(r['corrections'] for r in b)}\n")
    print("| metric (%) | " + " | ".join(SETTINGS) + " | difference [95% CI] |\n|---|---:|---:|---|")
    for k in METRICS:
        lo, hi = ci[k]
        verdict = "n/a" if lo != lo else "within noise" if lo <= 0 <= hi else "excludes 0"
        print(f"| {k} | {ma[k]:.1f} | {mb[k]:.1f} | {mb[k] - ma[k]:+.1f} [{lo:+.1f}, {hi:+.1f}] {verdict} |")


if __name__ == "__main__":
    main()
