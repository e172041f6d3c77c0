"""infer.py: best-of-N selection, records, resume and bad input."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import infer
from model import Rollout, ToolCall
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cand(text, oks):
    r = Rollout(prompt_ids=[])
    r.text = text
    r.calls = [ToolCall(0, 0, "", None, ok) for ok in oks]
    return r


def test_best_of_n_prefers_highest_pass_rate():
    cands = [cand("\\boxed{1}", [False]), cand("\\boxed{2}", [True, False]), cand("\\boxed{3}", [True]), cand("\\boxed{4}", [])]
    assert infer.best_of_n(cands) == 2
    assert infer.pass_rate(cands[1]) == 0.5 and infer.pass_rate(cands[3]) == 0.0


def test_best_of_n_tie_break_majority_then_earliest():
    # three tied at pass rate 1.0: two agree on 1/2 (written differently), so the first of those wins
    cands = [cand("\\boxed{7}", [True]), cand("\\boxed{\\frac{1}{2}}", [True]), cand("\\boxed{0.5}", [True]), cand("\\boxed{9}", [False])]
    assert infer.best_of_n(cands) == 1
    # no majority: the earliest tied sample
    cands = [cand("\\boxed{7}", [False]), cand("\\boxed{8}", [True]), cand("\\boxed{9}", [True])]
    assert infer.best_of_n(cands) == 1


def test_record_fields():
    r = cand("so \\boxed{12}", [True, False])
    r.corrections, r.generated, r.finish, r.attempts = 2, 40, "eos", ["a", "b"]
    args = SimpleNamespace(model="m", keep_attempts=True)
    rec = infer.to_record({"id": "x", "problem": "p", "answer": "12", "extra": 1}, r, args, 0)
    assert rec["pred"] == "12" and rec["correct"] is True and rec["extra"] == 1
    assert (rec["tool_calls"], rec["tool_errors"], rec["corrections"], rec["tokens"]) == (2, 1, 2, 40)
    assert rec["attempts"] == ["a", "b"]
    assert infer.to_record({"id": "y", "problem": "p"}, r, args, 0)["correct"] is None


def run_infer(*args):
    return subprocess.run([sys.executable, "infer.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_infer_end_to_end_and_resume(tiny_dir, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(3)))
    out = tmp_path / "pred.jsonl"
    common = ["--model", tiny_dir, "--data", str(data), "--out", str(out), "--max-new-tokens", "8", "--batch", "2"]
    r = run_infer(*common)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["id"] for x in recs] == ["q0", "q1", "q2"]
    assert all(x["tokens"] == 8 and x["correct"] is False and x["model"] == tiny_dir for x in recs)
    assert "accuracy" in r.stdout and "tokens / answer" in r.stdout
    r = run_infer(*common)  # resume: nothing left to do, nothing duplicated
    assert r.returncode == 0 and "3 already in" in r.stdout
    assert len(out.read_text().splitlines()) == 3


def test_bad_input_is_one_line(tmp_path, tiny_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "x"}) + "\n{not json\n")
    r = run_infer("--model", tiny_dir, "--data", str(data), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode != 0 and r.stderr.strip().startswith(f"{data}:2: invalid JSON")
    assert "Traceback" not in r.stderr
    data.write_text(json.dumps({"id": "a"}) + "\n")
    r = run_infer("--model", tiny_dir, "--data", str(data), "--out", str(tmp_path / "o.jsonl"))
    assert r.stderr.strip() == f"{data}:1: missing field 'problem' (or 'question'): a non-empty string"
