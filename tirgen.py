"""
TIRGen (paper §2.2): problems.jsonl -> trajectories.jsonl -> sft.jsonl.

This file also builds the toy task, the embedded default every script runs on (data construction
lives here): `python tirgen.py --make-toy-data` rewrites data/toy_train.jsonl and data/toy_test.jsonl
byte-identically from their seeds.
"""
import argparse
import json
import os
import random

# -----------------------------------------------------------------------------
# The toy task: arithmetic word problems a tiny model cannot do in its head but can solve by
# writing code. Each record carries `kind` and `args` so the rule-based toy agents can read it.

TOY_TEMPLATES = {
    "mul": "A warehouse has {0} crates with {1} bolts in each crate. How many bolts are there in total?",
    "add": "A farm sold {0}, {1} and {2} eggs on three days. How many eggs did it sell in total?",
    "mod": "{0} marbles are packed into bags of {1}. How many marbles are left over?",
    "eq": "Solve {0}*x + {1} = {2} for x.",
    "mulmod": "A shop has {0} boxes with {1} pens in each box. The pens are shared equally among {2} classes. How many pens are left over?",
}


def toy_answer(kind, args):
    a = args
    if kind == "mul":
        return a[0] * a[1]
    if kind == "add":
        return sum(a)
    if kind == "mod":
        return a[0] % a[1]
    if kind == "eq":
        return (a[2] - a[1]) // a[0]
    if kind == "mulmod":
        return (a[0] * a[1]) % a[2]
    raise ValueError(f"unknown toy kind {kind!r}")


def make_toy_problems(n, seed, split, digits=4, two_call=0.25):
    """n seeded toy problems. `digits` sets the size of the operands (difficulty), `two_call` the
    share of problems that need two chained tool calls (product, then remainder of the output)."""
    rng = random.Random(seed)
    num = lambda d: rng.randint(10 ** (d - 1), 10 ** d - 1)
    records = []
    for i in range(n):
        if rng.random() < two_call:
            kind, args = "mulmod", [num(digits - 1), num(2), rng.randint(7, 97)]
        else:
            kind = rng.choice(["mul", "add", "mod", "eq"])
            if kind == "mul":
                args = [num(digits), num(max(2, digits - 1))]
            elif kind == "add":
                args = [num(digits) for _ in range(3)]
            elif kind == "mod":
                args = [num(digits + 1), rng.randint(13, 997)]
            else:  # a*x + b = c with an integer solution x
                a, x, b = rng.randint(3, 99), num(digits - 1), num(digits)
                args = [a, b, a * x + b]
        records.append({"id": f"toy-{split}-{i:05d}", "problem": TOY_TEMPLATES[kind].format(*args),
                        "answer": str(toy_answer(kind, args)), "kind": kind, "args": args})
    return records


def write_toy_data(out_dir="data", n_train=2000, n_test=200):
    os.makedirs(out_dir, exist_ok=True)
    for split, n, seed in [("train", n_train, 1234), ("test", n_test, 5678)]:
        with open(os.path.join(out_dir, f"toy_{split}.jsonl"), "w") as f:
            for r in make_toy_problems(n, seed, split):
                f.write(json.dumps(r) + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--make-toy-data", action="store_true", help="rewrite data/toy_{train,test}.jsonl and exit")
    args = p.parse_args()
    if args.make_toy_data:
        write_toy_data()


if __name__ == "__main__":
    main()
