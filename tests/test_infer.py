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
    cands = [cand("\\boxed{1}", [False]), cand("\\boxed{2}", [True, False]), cand("\\boxed{3}", [True]),
             cand("\\boxed{4}", [])]
    assert infer.best_of_n(cands) == 2  # tied with 3 at 1.0 (no execution, as the release scores it): earliest
    assert infer.pass_rate(cands[1]) == 0.5 and infer.pass_rate(cands[3]) == 1.0


def test_best_of_n_an_answer_beats_no_answer():
    cands = [cand("I ran out of tokens", [True]), cand("\\boxed{3}", [True, False]), cand("\\boxed{", [True])]
    assert infer.best_of_n(cands) == 1
    assert infer.best_of_n([cand("no", [True]), cand("none", [True, False])]) == 0  # none has one: pass rate decides


def test_best_of_n_pass_rate_counts_rolled_back_executions():
    # A's one kept call succeeded after three failed attempts were rolled back: 1 of 4 executions passed.
    a, b = cand("\\boxed{1}", [True]), cand("\\boxed{2}", [True, False])
    a.corrections = 3
    assert infer.pass_rate(a) == 0.25 and infer.best_of_n([a, b]) == 1


def test_best_of_n_candidate_without_code_scores_as_the_release():
    # the release's pass rate of a trajectory without code is 1.0 (nothing failed)
    assert infer.best_of_n([cand("\\boxed{1}", [True, False]), cand("\\boxed{2}", [])]) == 1


def test_best_of_n_tie_break_majority_then_earliest():
    # three tied at pass rate 1.0: two agree on 1/2 (written differently), so the first of those wins
    cands = [cand("\\boxed{7}", [True]), cand("\\boxed{\\frac{1}{2}}", [True]), cand("\\boxed{0.5}", [True]),
             cand("\\boxed{9}", [False])]
    assert infer.best_of_n(cands) == 1
    # no majority: the earliest tied sample
    cands = [cand("\\boxed{7}", [False]), cand("\\boxed{8}", [True]), cand("\\boxed{9}", [True])]
    assert infer.best_of_n(cands) == 1


def test_record_fields():
    r = cand("so \\boxed{12}", [True, False])
    r.corrections, r.generated, r.finish, r.attempts = 2, 40, "eos", ["a", "b"]
    args = SimpleNamespace(model="m", keep_attempts=True, retry_sees_error=False)
    rec = infer.to_record({"id": "x", "problem": "p", "answer": "12", "extra": 1}, r, args, 0)
    assert rec["pred"] == "12" and rec["correct"] is True and rec["extra"] == 1
    assert (rec["tool_calls"], rec["tool_errors"], rec["corrections"], rec["tokens"]) == (2, 1, 2, 40)
    assert rec["attempts"] == ["a", "b"]
    assert infer.to_record({"id": "y", "problem": "p"}, r, args, 0)["correct"] is None


def test_retry_sees_error_records_count_what_the_text_shows(tiny_dir, sandbox):
    """With --retry-sees-error the failed attempt stays in the response (forced context): the record's
    tool_calls and tool_errors count its executed blocks and error outputs."""
    import model
    from test_model import ScriptedLM

    def policy(prompt, response, attempt):  # while output is forced the script is not consulted
        if "ZeroDivisionError" not in response:
            return "Let me compute.\n```python\nprint(1/0)\n```"
        shown = response.find("division by zero\n```\n")
        if shown < 0:
            return response
        done = response.find("```output\n7\n```\n")
        if done < 0:
            return response[:shown] + "division by zero\n```\n```python\nprint(7)\n```"
        return response[:done] + "```output\n7\n```\nSo \\boxed{7}."

    _, tok = model.load(tiny_dir)
    r = model.rollout(ScriptedLM(tok, policy), tok, [model.encode_prompt(tok, "q")], sandbox, max_new_tokens=300,
                      temperature=0, n_corr=4, l_suf=3, retry_sees_error=True)[0]
    assert r.corrections == 1 and r.text.count("```output") == 2 and r.text.endswith("\\boxed{7}.<|endoftext|>")
    rec = infer.to_record({"id": "q", "problem": "q", "answer": "7"}, r, SimpleNamespace(
        model="m", keep_attempts=False, retry_sees_error=True), 0)
    assert (rec["tool_calls"], rec["tool_errors"]) == (r.text.count("```python"), r.text.count("ZeroDivisionError"))
    assert (rec["tool_calls"], rec["tool_errors"], rec["corrections"], rec["correct"]) == (2, 1, 1, True)


def run_infer(*args):
    return subprocess.run([sys.executable, "infer.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_infer_end_to_end_and_resume(tiny_dir, tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} + {i}?",
                                        "answer": str(2 * i)}) + "\n" for i in range(3)))
    out = tmp_path / "pred.jsonl"
    common = ["--model", tiny_dir, "--data", str(data), "--out", str(out), "--max-new-tokens", "8", "--batch", "2",
              "--temperature", "1.0"]
    r = run_infer(*common)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [x["id"] for x in recs] == ["q0", "q1", "q2"]
    assert all(x["tokens"] == 8 and x["correct"] is False and x["model"] == tiny_dir for x in recs)
    assert "accuracy" in r.stdout and "tokens / answer" in r.stdout
    assert len({x["response"] for x in recs}) == 3  # the samples differ, so a wrong seed would show
    # Killed while writing q1: the rerun cuts the torn line, samples q1's chunk again and writes the
    # records of the uninterrupted run.
    out.write_text(lines[0] + "\n" + lines[1][:25])
    r = run_infer(*common)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"warning: {out}: dropped a torn last line (25 bytes" in r.stderr
    assert out.read_text().splitlines() == lines
    r = run_infer(*common)  # resume: nothing left to do, nothing duplicated
    assert r.returncode == 0 and "3 already in" in r.stdout
    assert out.read_text().splitlines() == lines


def test_bad_input_is_one_line(tmp_path, tiny_dir):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "x"}) + "\n{not json\n")
    r = run_infer("--model", tiny_dir, "--data", str(data), "--out", str(tmp_path / "o.jsonl"))
    assert r.returncode != 0 and r.stderr.strip().startswith(f"{data}:2: invalid JSON")
    assert "Traceback" not in r.stderr
    data.write_text(json.dumps({"id": "a"}) + "\n")
    r = run_infer("--model", tiny_dir, "--data", str(data), "--out", str(tmp_path / "o.jsonl"))
    assert r.stderr.strip() == f"{data}:1: missing field 'problem' (or 'question'): a non-empty string"
