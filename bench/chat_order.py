"""
Which order works better in the chat template: the instruction before the problem, or after it?
Same model, same problems, same seed, both orders; paired differences with a bootstrap 95% interval
over problems (the unit that is sampled). The decision it informed is model.build_prompt's `chat`.

    python bench/chat_order.py --model /work/models/smollm2        # 20 GSM8K + 20 MATH500 problems

Per order: accuracy, code ratio (answers with at least one call), call success (succeeded / executed
calls, pooled), truncated answers (hit --max-new-tokens), boxed answers. Writes every answer to
--out (JSONL) and prints one table; "within noise" where the interval holds 0.
"""
import argparse
import json
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model as M  # noqa: E402
import rewards  # noqa: E402
from sandbox import Sandbox  # noqa: E402

ORDERS = {"instruction first": lambda p: M.INSTRUCTION + "\n" + p, "problem first": lambda p: p + "\n" + M.INSTRUCTION}
METRICS = ["accuracy", "code ratio", "call success", "truncated", "boxed"]
MIN_CALLS = 20  # fewer calls per order than this: call success is not compared (a ratio of 1 or 2 calls)


def metrics(rows):
    """Pooled metrics (%) of answer records."""
    calls = sum(r["calls"] for r in rows)
    pct = lambda x, n: 100.0 * x / n if n else float("nan")
    return {"accuracy": pct(sum(r["correct"] for r in rows), len(rows)),
            "code ratio": pct(sum(r["calls"] > 0 for r in rows), len(rows)),
            "call success": pct(sum(r["ok"] for r in rows), calls),
            "truncated": pct(sum(r["finish"] == "length" for r in rows), len(rows)),
            "boxed": pct(sum(r["pred"] is not None for r in rows), len(rows))}


def bootstrap(a, b, n_boot=2000, seed=0):
    """95% interval of metrics(b) - metrics(a), resampling problems (a[i] and b[i] are one problem)."""
    rng, diffs = random.Random(seed), {k: [] for k in METRICS}
    for _ in range(n_boot):
        idx = [rng.randrange(len(a)) for _ in a]
        ma, mb = metrics([a[i] for i in idx]), metrics([b[i] for i in idx])
        for k in METRICS:
            if ma[k] == ma[k] and mb[k] == mb[k]:  # NaN (no calls in the resample) is left out
                diffs[k].append(mb[k] - ma[k])
    ci = lambda xs: (sorted(xs)[int(0.025 * len(xs))],
                     sorted(xs)[int(0.975 * len(xs)) - 1]) if xs else (float("nan"),) * 2
    return {k: ci(v) for k, v in diffs.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model dir with a chat template")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"),
                   help="folder of the shared JSONL files")
    p.add_argument("--n", type=int, default=20, help="problems from each of gsm8k_test and math500 (the first n)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer, tool output included")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (the paper's evaluation: 0.6)")
    p.add_argument("--batch", type=int, default=40, help="prompts per rollout call")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench/chat_order.jsonl")
    p.add_argument("--rescore", action="store_true", help="print the table from the answers already in --out")
    args = p.parse_args()
    if args.rescore:
        rows = {o: [r for r in map(json.loads, open(args.out)) if r["order"] == o] for o in ORDERS}
        return report(rows["instruction first"], rows["problem first"], args)
    torch.set_num_threads(args.threads)
    probs = [q for f in ("gsm8k_test.jsonl",
                         "math500.jsonl") for q in rewards.read_problems(os.path.join(args.data_dir, f))[:args.n]]
    m, tok = M.load(args.model)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    rows = {}
    with Sandbox(workers=2) as sb, open(args.out, "w") as f:
        for order, user in ORDERS.items():
            t0, rows[order] = time.time(), []
            for s in range(0, len(probs), args.batch):
                chunk = probs[s:s + args.batch]
                prompts = [tok.encode(M.chat_prompt(tok, user(q["problem"])), add_special_tokens=False) for q in chunk]
                rs = M.rollout(m, tok, prompts, sb, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               seed=args.seed + s, max_tool_calls=10)
                for q, r in zip(chunk, rs):
                    pred = rewards.extract_answer(r.text)
                    rec = dict(order=order, id=q["id"], pred=pred,
                               correct=pred is not None and rewards.is_equiv(pred, q["answer"]),
                               calls=r.tool_calls, ok=r.tool_calls - r.tool_errors, finish=r.finish, tokens=r.generated,
                               response=r.text)
                    rows[order].append(rec)
                    f.write(json.dumps(rec) + "\n")
            print(f"{order}: {len(probs)} answers in {time.time() - t0:.0f} s", flush=True)
    report(rows["instruction first"], rows["problem first"], args)


def report(a, b, args):
    ma, mb, ci = metrics(a), metrics(b), bootstrap(a, b)
    calls = [sum(r["calls"] for r in rs) for rs in (a, b)]
    print(f"\n{args.model}: {len(a)} problems (the first {args.n} of GSM8K test and of MATH500), one sample each, "
          f"T={args.temperature}, seed {args.seed}, {args.max_new_tokens} tokens; "
          f"{calls[0]} vs {calls[1]} tool calls\n")
    print("| metric (%) | instruction first | problem first | difference [95% CI] |\n|---|---:|---:|---|")
    for k in METRICS:
        lo, hi = ci[k]
        verdict = ("too few calls to compare" if k == "call success" and min(calls) < MIN_CALLS else
                   "n/a" if lo != lo else "within noise" if lo <= 0 <= hi else "excludes 0")
        print(f"| {k} | {ma[k]:.1f} | {mb[k]:.1f} | {mb[k] - ma[k]:+.1f} [{lo:+.1f}, {hi:+.1f}] {verdict} |")


if __name__ == "__main__":
    main()
