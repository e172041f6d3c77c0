"""
Grading throughput: rewards.grade_many over 10,000 (pred, gold) pairs built from real benchmark answers.

Golds come from the JSONL files in --data-dir (MATH500, MATH test/train, MATH level 3-5, AIME24/25,
AMC23, Minerva, OlympiadBench, GSM8K; see ../shared/data/README.md). Each pair's prediction is, in
equal shares, the gold itself, the gold reformatted (spacing, \\dfrac, \\left( ), decimals for
simple fractions, thousands separators, Python syntax, a "x =" prefix, a unit), or the gold
perturbed (a digit changed, a sign flipped, another answer from the same file). Pairs are unique,
so the grader's memo of repeated pairs does not flatter the number. The last line is
`pairs_per_s: <x>`.

    python bench/grade_bench.py                      # all cores
    python bench/grade_bench.py --workers 1 --n 2000
"""

import argparse
import json
import os
import random
import re
import sys
import time
from fractions import Fraction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rewards import extract_answer, grade_many  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"),
                    help="folder with the benchmark JSONL files")
parser.add_argument("--n", type=int, default=10_000, help="number of (pred, gold) pairs")
parser.add_argument("--workers", type=int, default=None, help="grader processes (default: all cores)")
parser.add_argument("--seed", type=int, default=0, help="random seed for building the pairs")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# Gold answers, by file (the answer field differs per benchmark)

def read_jsonl(name):
    path = os.path.join(args.data_dir, name)
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


golds = {
    "math500": [r["answer"] for r in read_jsonl("math500.jsonl")],
    "math_test": [extract_answer(r["solution"]) for r in read_jsonl("math_test_full.jsonl")],
    "math_train": [r["answer"] for r in read_jsonl("math_train.jsonl")],
    "math_l3to5": [r["answer"] for r in read_jsonl("math_level3to5_train.jsonl")],
    "aime": [r["answer"] for r in read_jsonl("aime24.jsonl") + read_jsonl("aime25.jsonl")],
    "amc23": [r["answer"] for r in read_jsonl("amc23.jsonl")],  # floats, e.g. 27.0
    "minerva": [extract_answer(r["solution"]) for r in read_jsonl("minerva_math.jsonl")],
    "olympiad": [", ".join(a.strip("$") for a in r["final_answer"]) for r in read_jsonl("olympiadbench.jsonl")],
    "gsm8k": [r["answer"].split("####")[-1].strip() for r in read_jsonl("gsm8k_test.jsonl")],
}
golds = {k: [g for g in v if g is not None] for k, v in golds.items() if v}
assert golds, f"no benchmark files in {args.data_dir}"

# -----------------------------------------------------------------------------
# Predictions: equal, reformatted, perturbed

def reformat(g, rng):
    s = str(g)
    if isinstance(g, float):
        return str(int(g)) if g.is_integer() else s
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", s)
    if m and rng.random() < 0.5:
        v = Fraction(int(m[2]), int(m[3])) * (-1 if m[1] else 1)
        return str(float(v)) if v.denominator in (2, 4, 5, 8, 10, 20, 25) else f"{v.numerator}/{v.denominator}"
    if re.fullmatch(r"\d{4,}", s) and rng.random() < 0.5:
        return f"{int(s):,}"
    options = [
        lambda s: re.sub(r"\s+", "", s) if " " in s else re.sub(r"([=+,]|(?<=\w)-)", r" \1 ", s),
        lambda s: s.replace("\\frac", "\\dfrac"),
        lambda s: s.replace("(", "\\left(").replace(")", "\\right)"),
        lambda s: s if "=" in s else "x = " + s,
        lambda s: s + "\\text{ units}" if re.fullmatch(r"[\d.]+", s) else "$" + s + "$",
    ]
    python_like = r"(?:[\w+\-*/^(). ]|\\frac\{|\\sqrt\{|\\pi|\}\{|\})+"  # LaTeX that has a Python spelling
    if re.fullmatch(python_like, s) and not re.search(r"\d\s*\\frac", s):  # (not mixed numbers, 2\frac{1}{2})
        options.append(lambda s: re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", re.sub(r"(?<=[\w)}])\\pi", "*pi", s))
                       .replace("\\pi", "pi").replace("^", "**").replace("\\frac{", "((").replace("}{", ")/(")
                       .replace("}", "))"))
    return rng.choice(options)(s)


def perturb(g, pool, rng):
    s = str(g)
    digits = [i for i, c in enumerate(s) if c.isdigit()]
    r = rng.random()
    if digits and r < 0.5:
        i = rng.choice(digits)
        return s[:i] + str((int(s[i]) + rng.randint(1, 9)) % 10) + s[i + 1:]
    if r < 0.7 and s != "0":
        return s[1:] if s.startswith("-") else "-" + s
    return str(rng.choice(pool))


rng = random.Random(args.seed)
entries = sorted({(source, str(g)): (source, g) for source, v in golds.items() for g in v}.values(), key=str)
rng.shuffle(entries)  # each distinct answer once, in random order, then again if --n needs it
pairs, kinds, seen = [], [], set()
for i in range(100 * args.n):
    if len(pairs) == args.n:
        break
    source, gold = entries[i % len(entries)]
    kind = ("equal", "reformatted", "perturbed")[len(pairs) % 3]
    pred = {"equal": lambda: str(gold), "reformatted": lambda: reformat(gold, rng),
            "perturbed": lambda: perturb(gold, golds[source], rng)}[kind]()
    if (pred, str(gold)) not in seen:
        seen.add((pred, str(gold)))
        pairs.append((pred, gold))
        kinds.append(kind)

# -----------------------------------------------------------------------------
# Grade

grade_many(pairs[:8], workers=args.workers)  # start the grader processes outside the timing
t0 = time.time()
verdicts = grade_many(pairs, workers=args.workers)
dt = time.time() - t0
for kind in ("equal", "reformatted", "perturbed"):
    v = [ok for ok, k in zip(verdicts, kinds) if k == kind]
    print(f"{kind:12s} {len(v):6d} pairs, judged equal: {sum(v) / len(v):.1%}")
print(f"graded {len(pairs)} pairs from {len(golds)} files in {dt:.1f} s with {args.workers or os.cpu_count()} workers")
print(f"pairs_per_s: {len(pairs) / dt:.1f}")
