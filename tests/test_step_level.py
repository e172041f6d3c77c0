"""runs/step_level.py: the toy's true step values, the causes of wrong answers whose calls ran, the
two-level bootstrap, and the premise on the tiny random model end to end (the plumbing: a random model's
numbers mean nothing)."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "runs"))
import step_level  # noqa: E402

MUL = {"id": "m", "kind": "mul", "args": [9040, 727], "answer": "6572080"}
MULMOD = {"id": "mm", "kind": "mulmod", "args": [120, 35, 17], "answer": str(120 * 35 % 17)}


def answer(code, out, boxed):
    return {"response": f"The total is x.\n```python\n{code}\n```\n```output\n{out}\n```\nSo the answer is "
                        f"\\boxed{{{boxed}}}.", "correct": False}


def test_true_values_chain_the_true_results():
    assert step_level.true_values(MUL) == [6572080]
    assert step_level.true_values(MULMOD) == [4200, 4200 % 17]  # the second step uses the true product


def test_causes_of_a_wrong_answer_whose_call_ran():
    cause = step_level.cause
    assert cause(answer("import math\nprint(math.prod([9040, 727]))", "6572080", "657208"), MUL) \
        == "the right output copied into \\boxed{} wrongly"
    assert cause(answer("import math\nprint(math.prod([9046, 727]))", "6576442", "6576442"), MUL) \
        == "operands in the code are not the problem's"
    assert cause(answer("print(9040 + 727)", "9767", "9767"), MUL) \
        == "the problem's operands combined wrongly (swapped, or the wrong idiom)"
    assert cause({"response": "The total is 5.", "correct": False}, MUL) == "no \\boxed{} answer"
    # a list index ([0]) is not an operand
    eq = {"id": "e", "kind": "eq", "args": [7, 120, 7 * 31 + 120], "answer": "31"}
    code = "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(7*x + 120 - 337, x)[0])"
    assert cause(answer(code, "31", "3"), eq) == "the right output copied into \\boxed{} wrongly"


def test_bootstrap_interval_covers_the_pooled_mean_and_shrinks_with_data():
    mean = step_level.mean
    small = [[0, 1, 1], [1, 0, 1]]
    big = [[0, 1, 1] * 50, [1, 0, 1] * 50]
    lo_s, hi_s = step_level.bootstrap(small, mean)
    lo_b, hi_b = step_level.bootstrap(big, mean)
    assert lo_s <= 2 / 3 <= hi_s and lo_b <= 2 / 3 <= hi_b and hi_b - lo_b < hi_s - lo_s


def test_premise_on_the_tiny_model_writes_records_and_a_table(tiny_dir, tmp_path, monkeypatch):
    # a ladder dir whose seed-0 T4 is the tiny random model: the measurement runs end to end
    os.makedirs(tmp_path / "s0")
    os.symlink(tiny_dir, tmp_path / "s0" / "t4")
    monkeypatch.setitem(step_level.TOY_RL, "group_size", 2)
    monkeypatch.setitem(step_level.TOY_RL, "max_new_tokens", 24)
    args = type("A", (), dict(ladder=str(tmp_path), seeds=[0], problems=3, threads=1))()
    text = step_level.premise(args)
    recs = [json.loads(line) for line in open(tmp_path / "premise.jsonl")]
    assert all(r["seed"] == 0 and r["ran"] <= r["code"] for r in recs)
    assert "within a prefix" in text
