"""
infer.py: problems.jsonl + model dir -> predictions.jsonl, with THOR's self-correction (paper §2.4)
and self-rewarded best-of-N (paper §3.3).

Each problem is rolled out with tools through model.rollout (at most 10 tool calls, the released
inference script's budget). Self-correction lives in model.py's rollout, because a rollback is a
token / KV-cache operation and eval.py needs it too; this script exposes it:
  when a tool call fails, the failing code block and the last L_suf tokens of the reasoning before
  it are rolled back and regenerated, up to N_corr attempts per failing call; every attempt counts
  against the tool-call budget; after the last failed attempt the failure is kept and generation
  goes on. By default the retry does NOT see the error message: the paper regenerates "conditioned
  on the history up to r_t^pre", which holds no error text, and the released code drops it too
  (--retry-sees-error shows the failed block and its error as forced context instead).
Best-of-N (--best-of N, paper §3.3): sample N candidates and keep the one with the highest code-execution
pass rate = successful executions / executions, rolled-back attempts included (each follows a failed
execution, so executions = kept calls + corrections; the release counts kept calls only, which lets
self-correction hide failures). A candidate without an answer never beats one with an answer. A candidate
without any execution scores 1.0, as in the release (nothing failed; a 0 would make an answer reasoned
out without code lose to any whose code ran). The paper leaves the tie-break open; ours: among tied
candidates, the answer most of them agree on, then the earliest sample.

Records are docs/design.md trajectories plus `corrections`, `tokens` (tokens sampled, rolled-back
attempts included, as the paper's Table 5 counts them) and, with --keep-attempts, `attempts`. With
--retry-sees-error the failed attempts stay in the text, so `tool_calls` and `tool_errors` count them.
The file is appended and flushed per record; a rerun skips the ids already written (a torn last line
is cut off first). Problems are rolled out in fixed chunks of --batch in file order, a chunk seeded with
--seed + the position of its first problem, so a resumed run writes what an uninterrupted one would.

  python infer.py                                    # toy test set, out/rl (or out/sft, out/tiny)
  python infer.py --model DIR --data problems.jsonl --out preds.jsonl --template chat
  python infer.py --n-corr 0                         # no self-correction (the T5 row of the ladder)
  python infer.py --best-of 4 --engine vllm
"""
import argparse
import json
import os
import time
from collections import Counter

import model as M
import rewards
from sandbox import Sandbox

# -----------------------------------------------------------------------------
# Input and output


def done_ids(path):
    if not os.path.exists(path):
        return set()
    rewards.repair_jsonl(path)  # a run killed mid-write leaves a torn last line
    return {str(r.get("id")) for _, r in rewards.read_jsonl(path)}


# -----------------------------------------------------------------------------
# Best-of-N selection (paper §3.3)


def pass_rate(r):
    """Successful executions / executions; every rollback (r.corrections) followed a failed execution."""
    executions = len(r.calls) + r.corrections
    return sum(c.ok for c in r.calls) / executions if executions else 1.0  # no execution: as the release


def best_of_n(cands):
    """Index of the candidate with the highest code-execution pass rate among those with an answer
    (all, if none has one); ties go to the answer most tied candidates agree on (a self-consistency
    vote), then to the earliest sample."""
    preds = [rewards.extract_answer(r.text) for r in cands]
    pool = [i for i, p in enumerate(preds) if p is not None] or list(range(len(cands)))
    top = max(pass_rate(cands[i]) for i in pool)
    tied = [i for i in pool if pass_rate(cands[i]) == top]
    votes = Counter()
    for i in tied:  # group equivalent answers, not just equal strings
        key = next((j for j in votes if preds[j] is not None and rewards.is_equiv(preds[i], preds[j])), i)
        votes[key] += 1
    best_key, _ = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))
    return best_key


def to_record(prob, r, args, sample):
    pred = rewards.extract_answer(r.text)
    gold = prob.get("answer")
    shown = r.corrections if args.retry_sees_error else 0  # failed attempts left in the text (forced context)
    rec = dict(prob, response=r.text, pred=pred,
               correct=None if gold is None else (pred is not None and rewards.is_equiv(pred, str(gold))),
               tool_calls=r.tool_calls + shown, tool_errors=r.tool_errors + shown, corrections=r.corrections,
               tokens=r.generated, finish=r.finish, model=args.model, sample=sample)
    if args.keep_attempts:
        rec["attempts"] = r.attempts
    return rec

# -----------------------------------------------------------------------------


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Files
    p.add_argument("--model", default=None, help="model dir (default: out/rl, else out/sft, else the tiny model)")
    p.add_argument("--data", default="data/toy_test.jsonl", help="problems JSONL")
    p.add_argument("--out", default="out/predictions.jsonl", help="predictions JSONL (appended; resumable)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="hf = the KV-cached sampler in model.py")
    p.add_argument("--template", choices=["raw", "chat", "thinking"], default="raw",
                   help="prompt convention (model.build_prompt)")
    # Generation
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens per answer, not per turn: every response token, tool "
                   "output included (rolled-back attempts are not) (paper: 4096 non-reasoning; toy default: 256)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--max-tool-calls", type=int, default=10, help="executions per response, retries included")
    p.add_argument("--batch", type=int, default=32, help="problems rolled out together")
    p.add_argument("--seed", type=int, default=0)
    # Self-correction and best-of-N
    p.add_argument("--n-corr", type=int, default=4, help="N_corr: self-correction attempts per failing call (0 = off)")
    p.add_argument("--l-suf", type=int, default=500,
                   help="L_suf: reasoning tokens rolled back with the failing block (released code: 500)")
    p.add_argument("--retry-sees-error", action="store_true", help="retries see the failed block and its error")
    p.add_argument("--best-of", type=int, default=1, help="N candidates per problem, keep the best pass rate")
    p.add_argument("--keep-attempts", action="store_true", help="store the rolled-back attempts' texts")
    args = p.parse_args()

    args.model = args.model or M.default_model()[0]
    toy = os.path.basename(args.data).startswith("toy_")  # data/toy_test.jsonl, or a copy like the ladder's
    args.max_new_tokens = args.max_new_tokens or (256 if toy else 4096)
    problems = rewards.read_problems(args.data, need_answer=False)  # an answer, where given, is graded
    seen = done_ids(args.out)
    todo = [q for q in problems if q["id"] not in seen]
    print(f"model {args.model} | {len(problems)} problems, {len(problems) - len(todo)} already in {args.out}")
    if args.engine == "vllm":
        engine = M.VLLM(args.model)
        tok = engine.tok
    else:
        engine, tok = M.load(args.model)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    M.build_prompt(tok, "", args.template)  # a template this tokenizer lacks stops here, before the progress bar
    t0 = time.time()
    # Fixed chunks of the file, each seeded by its position: a chunk that a killed run left half written
    # is sampled again whole (the same samples), and only its missing records are written.
    chunks = [(s, problems[s:s + args.batch]) for s in range(0, len(problems), args.batch)]
    chunks = [(s, chunk) for s, chunk in chunks if any(q["id"] not in seen for q in chunk)]
    bar, progress = M.progress_bar(sum(len(c) for _, c in chunks) * args.best_of, "infer")
    with Sandbox() as sb, open(args.out, "a") as f:
        for s, chunk in chunks:
            rs = M.rollout(engine, tok, [M.encode_prompt(tok, q["problem"], args.template) for q in chunk], sb,
                           n=args.best_of, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_p=args.top_p, seed=args.seed + s, max_tool_calls=args.max_tool_calls,
                           n_corr=args.n_corr, l_suf=args.l_suf, retry_sees_error=args.retry_sees_error,
                           progress=progress)
            for i, q in enumerate(chunk):
                if q["id"] in seen:
                    continue
                cands = rs[i * args.best_of:(i + 1) * args.best_of]
                k = best_of_n(cands) if args.best_of > 1 else 0
                rec = to_record(q, cands[k], args, k)
                f.write(json.dumps(rec) + "\n")
                f.flush()
    bar.close()
    summarize(args.out, time.time() - t0)


def summarize(path, seconds):
    recs = [r for _, r in rewards.read_jsonl(path)]
    n = len(recs)
    graded = [r["correct"] for r in recs if r.get("correct") is not None]
    calls = sum(r["tool_calls"] for r in recs)
    errors = sum(r["tool_errors"] for r in recs)
    rows = [("answers", n),
            ("accuracy", f"{sum(graded) / len(graded):.3f}" if graded else "n/a (no gold answers)"),
            ("tool calls / answer", f"{calls / max(n, 1):.2f}"),
            ("tool-call success", f"{1 - errors / calls:.3f}" if calls else "n/a"),
            ("corrections / answer", f"{sum(r.get('corrections', 0) for r in recs) / max(n, 1):.2f}"),
            ("tokens / answer", f"{sum(r.get('tokens', 0) for r in recs) / max(n, 1):.1f}"),
            ("seconds", f"{seconds:.1f}")]
    for k, v in rows:
        print(f"{k:<22}{v}")


if __name__ == "__main__":
    main()
