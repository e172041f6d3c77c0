"""
data/prepare_toy.py: the toy world's data files, written byte for byte the same on every run.

In:  nothing (every file has its own seed).
Out: data/toy_train.jsonl (2,000 problems), data/toy_test.jsonl (200), data/toy_test1000.jsonl (toy_test
     grown to 1,000 with the same seed, so its first 200 are toy_test's), data/toy_cot.jsonl (the toy
     actor's own tool-free solutions of toy_train: the toy base model's chain-of-thought corpus).

    python data/prepare_toy.py

The toy task: arithmetic word problems a tiny model cannot do in its head but can solve by writing code.
Each record carries `kind` and `args` so that tirgen.py's rule-based toy agents can read it.
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tirgen.py, rewards.py
from rewards import extract_answer, is_equiv  # noqa: E402
from tirgen import TOY_SLIP, TOY_WORDED, tirgen_one, toy_actor  # noqa: E402

DATA_DIR = os.path.dirname(os.path.abspath(__file__))

TOY_TEMPLATES = {
    "mul": "A warehouse has {0} crates with {1} bolts in each crate. How many bolts are there in total?",
    "add": "A farm sold {0}, {1} and {2} eggs on three days. How many eggs did it sell in total?",
    "mod": "{0} marbles are packed into bags of {1}. How many marbles are left over?",
    "eq": "Solve {0}*x + {1} = {2} for x.",
    "mulmod": "A shop has {0} boxes with {1} pens in each box. The pens are shared equally among {2} classes. "
              "How many pens are left over?",
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


# The toy world's files: (file, split, problems, seed). toy_test1000 is toy_test grown to 1,000 problems
# (the same seed, so its first 200 are toy_test's) for the ladder, where 200 give +-3.5 points of noise.
TOY_FILES = [("toy_train.jsonl", "train", 2000, 1234), ("toy_test.jsonl", "test", 200, 5678),
             ("toy_test1000.jsonl", "test", 1000, 5678)]


def toy_cot(problems):
    """The toy actor's own tool-free trajectories (Algorithm 1 without a critic): the toy base model's
    chain-of-thought corpus (data/toy_cot.jsonl, T1 of the ladder), head-arithmetic slips included."""
    actor = toy_actor(TOY_SLIP, TOY_WORDED)
    for rec in problems:
        tau = tirgen_one(rec, actor, None, None, 8, random.Random(f"cot/{rec['id']}"))[0]
        pred = extract_answer(tau)
        yield {"id": rec["id"], "problem": rec["problem"], "answer": rec["answer"], "response": tau,
               "correct": pred is not None and is_equiv(pred, rec["answer"])}


def write_toy_data(out_dir=DATA_DIR):
    """data/toy_{train,test,test1000,cot}.jsonl, byte for byte the same on every run."""
    os.makedirs(out_dir, exist_ok=True)
    files = {name: make_toy_problems(n, seed, split) for name, split, n, seed in TOY_FILES}
    files["toy_cot.jsonl"] = list(toy_cot(files["toy_train.jsonl"]))
    for name, records in files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    write_toy_data()
    print(f"wrote {', '.join(name for name, *_ in TOY_FILES)} and toy_cot.jsonl in {DATA_DIR}")
