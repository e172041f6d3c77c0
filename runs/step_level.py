"""
runs/step_level.py: what the step level does in the toy, measured on a ladder's checkpoints and predictions.

    python runs/step_level.py premise  --ladder out/ladder    # does a call that runs predict a right answer?
    python runs/step_level.py failures --ladder out/ladder    # T4's and T5's wrong answers whose calls all ran
    python runs/step_level.py compare  --ladder out/ladder --ablations out/abl-a0 out/abl-w05 ...

premise: the paper's premise (§2.3) is that a successful tool call predicts a correct final answer, so
rewarding the call that runs (Eq. 8) helps the episode. Measured where the step level acts: for each seed's
T4 checkpoint, G rollouts of --problems training problems the RL run never drew, one step prefix per
group chosen as rl.collect chooses it (a failed call, else a random one; Eq. 6 with the toy's L_suf), and
G regenerations from that prefix run to the end with the same budget (not stopped after the call). Within a
prefix: final accuracy after a regeneration whose call ran minus after one whose call failed; and whether
the printed value is the step's true value (the toy knows it: tirgen.TOY_PLANS).
failures: every wrong answer of rows T4 and T5 whose calls all ran, by cause: operands in the code that
are not the problem's, the right output copied into \\boxed{} wrongly, or the problem's operands combined
wrongly (swapped, or the wrong idiom).
compare: each ablation's T5 row (a ladder run with --rl-args on the reference's seeds, reusing its T3 and T4)
against the reference's T4 and T5, paired by seed and problem.
Intervals: 95%, a two-level bootstrap as runs/ladder.py's (seeds, then prefixes or problems within them).
Out: the tables on stdout and in <ladder>/step_level_<command>.md; premise also <ladder>/premise.jsonl.
"""
import argparse
import json
import os
import random
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "runs")]
import ladder  # noqa: E402
import rewards  # noqa: E402
from tirgen import TOY_PLANS  # noqa: E402

TOY_RL = dict(group_size=8, max_new_tokens=160, l_suf=10, temperature=1.0, max_tool_calls=5)  # rl.TOY's
FIRST_UNUSED = 1500  # toy_train problems from here on: the ladder's RL runs draw fewer than 400


def true_values(rec):
    """The true value of each computation step of a toy problem, in order (a later step uses the true
    earlier result)."""
    values, k = [], None
    for step in TOY_PLANS[rec["kind"]]:
        k = step(rec["args"], k)[2]
        values.append(k)
    return values


def printed_number(stdout):
    m = re.findall(r"-?\d+(?:\.\d+)?", stdout or "")
    return float(m[-1]) if m else None


def bootstrap(groups, stat, seed=0, draws=2000):
    """95% interval of stat(pooled items): resample the groups (seeds), then items within each drawn group."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(draws):
        pool = []
        for g in rng.integers(0, len(groups), len(groups)):
            items = groups[g]
            pool += [items[i] for i in rng.integers(0, len(items), len(items))] if items else []
        vals.append(stat(pool))
    vals = [v for v in vals if v is not None]
    return np.percentile(vals, [2.5, 97.5]) if vals else (float("nan"), float("nan"))


def mean(xs):
    return sum(xs) / len(xs) if xs else None

# -----------------------------------------------------------------------------
# premise


def premise_seed(s, args):
    """Regeneration records of one seed's T4 checkpoint (see the module docstring)."""
    import torch

    import model
    from rl import prefix_cut, step_call
    from sandbox import Sandbox
    torch.set_num_threads(args.threads)
    probs = [r for _, r in rewards.read_jsonl(os.path.join(ROOT, "data", "toy_train.jsonl"))]
    probs = probs[FIRST_UNUSED:FIRST_UNUSED + args.problems]
    policy, tok = model.load(os.path.join(args.ladder, f"s{s}", "t4"))
    G, budget = TOY_RL["group_size"], TOY_RL["max_new_tokens"]
    kw = dict(temperature=TOY_RL["temperature"], max_tool_calls=TOY_RL["max_tool_calls"])
    out = []
    with Sandbox(workers=2) as sb:
        prompts = [model.encode_prompt(tok, p["problem"]) for p in probs]
        rs = model.rollout(policy, tok, prompts, sb, n=G, max_new_tokens=budget, seed=1000 + s, **kw)
        steps = []
        for i, p in enumerate(probs):  # the call rl.collect would pick: a failed one, else a random one
            step = step_call(rs[i * G:(i + 1) * G], random.Random(f"{s}/{p['id']}"))
            if step:
                r, c = step
                steps.append((p, r, r.calls.index(c), c))
        if not steps:  # no rollout wrote a call: nothing to regenerate
            return []
        cuts = [prefix_cut(r.mask, c.start, TOY_RL["l_suf"]) for _, r, _, c in steps]
        regen = model.rollout(policy, tok, [r.prompt_ids for _, r, _, _ in steps], sb, n=G,
                              prefixes=[r.response_ids[:k] for (_, r, _, _), k in zip(steps, cuts)],
                              max_new_tokens=[budget - k for k in cuts], seed=2000 + s, **kw)
    for n, (p, r, j, c) in enumerate(steps):
        truth = true_values(p)[j] if j < len(TOY_PLANS[p["kind"]]) else None
        for g in regen[n * G:(n + 1) * G]:
            first = g.calls[0] if g.calls else None
            value = printed_number(first.result.stdout) if first and first.ok else None
            out.append({"seed": s, "prefix": n, "id": p["id"], "call": j, "original_ok": c.ok,
                        "code": first is not None, "ran": bool(first and first.ok),
                        "value_right": value is not None and truth is not None and abs(value - truth) < 1e-6,
                        "correct": rewards.episode_reward(g.text, p["answer"]) == 1.0})
    return out


def premise(args):
    path = os.path.join(args.ladder, "premise.jsonl")
    done = {json.loads(line)["seed"] for line in open(path)} if os.path.exists(path) else set()
    for s in args.seeds:
        if s not in done:  # resumable by seed: each seed's records are appended whole
            recs = premise_seed(s, args)
            with open(path, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in recs)
    recs = [json.loads(line) for line in open(path)]
    recs = [r for r in recs if r["seed"] in args.seeds and r["code"]]  # a regeneration that wrote no block: no call
    by_seed = [[r for r in recs if r["seed"] == s] for s in args.seeds]
    # within a prefix: accuracy after a call that ran minus after one that failed (prefixes with both)
    prefixes = []
    for s, rs in zip(args.seeds, by_seed):
        groups = {}
        for r in rs:
            groups.setdefault(r["prefix"], []).append(r)
        prefixes.append([mean([r["correct"] for r in g if r["ran"]]) - mean([r["correct"] for r in g if not r["ran"]])
                         for g in groups.values() if any(r["ran"] for r in g) and not all(r["ran"] for r in g)])
    rate = lambda key, cond: (lambda pool: mean([r[key] for r in pool if cond(r)]))
    rows = [("final accuracy after a call that ran", rate("correct", lambda r: r["ran"])),
            ("final accuracy after a call that failed", rate("correct", lambda r: not r["ran"])),
            ("printed value = the step's true value, calls that ran", rate("value_right", lambda r: r["ran"])),
            ("final accuracy, ran and value right", rate("correct", lambda r: r["ran"] and r["value_right"])),
            ("final accuracy, ran and value wrong", rate("correct", lambda r: r["ran"] and not r["value_right"]))]
    n_ran = sum(r["ran"] for r in recs)
    lines = [f"T4 checkpoints of seeds {', '.join(map(str, args.seeds))}: {len(recs)} regenerations with a call "
             f"({n_ran} ran) from {len({(r['seed'], r['prefix']) for r in recs})} step prefixes (one per training "
             f"problem from #{FIRST_UNUSED} on whose group wrote a call); G = {TOY_RL['group_size']}, T = 1, "
             f"L_suf = {TOY_RL['l_suf']}, continued to the end.", "",
             "| measure | value [95% interval] | n |", "|---|---|---|"]
    cell = lambda v, lo, hi, fmt: "-" if v is None else f"{fmt.format(100 * v)} [{fmt.format(100 * lo)}, " \
        f"{fmt.format(100 * hi)}]"  # a measure without data (no call ran, say) is "-"
    for name, f in rows:
        v, (lo, hi) = f(recs), bootstrap(by_seed, f)
        n = sum(1 for r in recs if f([r]) is not None)
        lines.append(f"| {name} | {cell(v, lo, hi, '{:.1f}')} | {n} |")
    d = [x for p in prefixes for x in p]
    lo, hi = bootstrap(prefixes, mean)
    lines.append(f"| **within a prefix: accuracy after ran − after failed** (points) | "
                 f"{cell(mean(d), lo, hi, '{:+.1f}')} | {len(d)} prefixes |")
    ran = np.array([r["ran"] for r in recs], float)
    right = np.array([r["value_right"] for r in recs], float)
    phi = np.corrcoef(ran, right)[0, 1] if len(recs) > 1 and ran.std() > 0 and right.std() > 0 else float("nan")
    lines += ["", f"Correlation (phi) of 'the call ran' with 'the printed value is the step's true value', over "
                  f"the regenerations with a call: {phi:.2f}."]
    return "\n".join(lines)

# -----------------------------------------------------------------------------
# failures


def cause(rec, problem):
    """Why a wrong answer whose calls all ran is wrong (the toy knows the operands and the true values)."""
    codes = rewards.CODE_BLOCK.findall(rec["response"])
    outputs = re.findall(r"```output\n(.*?)\n```", rec["response"], re.S)
    boxed = rewards.extract_answer(rec["response"])
    if boxed is None:
        return "no \\boxed{} answer"
    truth = true_values(problem)
    expected = set(problem["args"]) | set(truth)
    used = {int(x) for code in codes for x in re.findall(r"(?<![\w.])\d+(?![\w.])", code)} - {0, 1}
    if not used <= expected or not set(problem["args"]) <= used:
        return "operands in the code are not the problem's"
    last = printed_number(outputs[-1]) if outputs else None
    if last is not None and abs(last - truth[-1]) < 1e-6:
        return "the right output copied into \\boxed{} wrongly"
    return "the problem's operands combined wrongly (swapped, or the wrong idiom)"


def failures(args):
    problems = {r["id"]: r for _, r in rewards.read_jsonl(os.path.join(ROOT, "data", "toy_test1000.jsonl"))}
    causes = sorted({"no \\boxed{} answer", "operands in the code are not the problem's",
                     "the right output copied into \\boxed{} wrongly",
                     "the problem's operands combined wrongly (swapped, or the wrong idiom)"})
    lines = [f"Wrong answers whose calls all ran (at least one), rows T4 and T5 at T = {args.temperature}, seeds "
             f"{', '.join(map(str, args.seeds))}, {args.ladder}.", "",
             "| row | answers | wrong | wrong, calls all ran | " + " | ".join(causes) + " |",
             "|---" * (4 + len(causes)) + "|"]
    for row in ("T4", "T5"):
        recs = [json.loads(line) for s in args.seeds
                for line in open(os.path.join(args.ladder, f"s{s}", f"{row}@{args.temperature}.jsonl"))]
        wrong = [r for r in recs if not r["correct"]]
        ran = [r for r in wrong if r["tool_calls"] > 0 and r["tool_errors"] == 0]
        counts = {c: 0 for c in causes}
        for r in ran:
            counts[cause(r, problems[r["id"]])] += 1
        lines.append(f"| {row} | {len(recs)} | {len(wrong)} | {len(ran)} | "
                     + " | ".join(f"{counts[c]} ({100 * counts[c] / max(len(ran), 1):.0f}%)" for c in causes) + " |")
    return "\n".join(lines)

# -----------------------------------------------------------------------------
# compare


def compare(args):
    ns = argparse.Namespace(temperatures=[args.temperature])
    ref = {s: {**ladder.scores(os.path.join(args.ladder, f"s{s}"), "T4", ns),
               **ladder.scores(os.path.join(args.ladder, f"s{s}"), "T5", ns)} for s in args.seeds}
    t = args.temperature
    lines = [f"Each ablation's T5 row against the reference ({args.ladder}) at T = {t}, seeds "
             f"{', '.join(map(str, args.seeds))}: paired differences in points [95% interval] (per seed). "
             "Step share: the step samples' share of the trained tokens, mean over the RL runs' iterations.", "",
             "| run | rl.py flags | accuracy | − T4 | − T5 | tool-call success − T5 | step share |",
             "|---|---|---|---|---|---|---|"]
    for d in [args.ladder] + args.ablations:
        results = {s: {**ref[s], f"X@{t}": ladder.scores(os.path.join(d, f"s{s}"), "T5", ns)[f"T5@{t}"]}
                   for s in args.seeds}
        acc = ladder.interval(results, args.seeds, t, "acc", "X")
        cell = lambda v: (f"{'**' if v[1] > 0 or v[2] < 0 else ''}{v[0]:+.1f} [{v[1]:+.1f}, {v[2]:+.1f}]"
                          f"{'**' if v[1] > 0 or v[2] < 0 else ''} ({'/'.join(f'{x:+.1f}' for x in v[3])})")
        logs = [json.loads(line) for s in args.seeds for line in open(os.path.join(d, f"s{s}", "t5", "log.jsonl"))]
        shares = [r["step_token_share"] for r in logs if "step_token_share" in r]
        with open(os.path.join(d, "args.json")) as f:
            flags = " ".join(json.load(f)["rl_args"]) or "(reference)"
        lines.append(f"| {os.path.basename(d)} | `{flags}` | {acc[0]:.1f} [{acc[1]:.1f}, {acc[2]:.1f}] | "
                     f"{cell(ladder.interval(results, args.seeds, t, 'acc', 'X', 'T4'))} | "
                     f"{cell(ladder.interval(results, args.seeds, t, 'acc', 'X', 'T5'))} | "
                     f"{cell(ladder.interval(results, args.seeds, t, 'tool', 'X', 'T5'))} | "
                     f"{f'{100 * np.mean(shares):.0f}%' if shares else '-'} |")
    lines += ["", "Bold: the interval excludes 0."]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["premise", "failures", "compare"])
    p.add_argument("--ladder", default="out/ladder", help="the reference ladder's --out")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the ladder")
    p.add_argument("--problems", type=int, default=64, help="premise: training problems per seed")
    p.add_argument("--threads", type=int, default=2, help="premise: CPU threads")
    p.add_argument("--temperature", default="0.6", help="failures, compare: the rows' sampling temperature")
    p.add_argument("--ablations", nargs="*", default=[], help="compare: ladder --out dirs of the ablations")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    text = {"premise": premise, "failures": failures, "compare": compare}[args.command](args)
    print(text)
    with open(os.path.join(args.ladder, f"step_level_{args.command}.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
