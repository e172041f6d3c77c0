"""eval.py --judge: an OpenAI-compatible chat endpoint played by a stub HTTP server on 127.0.0.1.
The rule-based grade stays the table's accuracy; the judge's Avg@k and the agreement are reported
beside it; judgements are cached in the predictions file; retries, the timeout, the reply parsing."""
import json
import time

import pytest

import eval as ev
from stub_server import OpenAIStub, serve


class Judge(OpenAIStub):
    """Says YES when the answer to grade is in `accept`; fails the first `fail` requests with HTTP 500;
    sleeps 2 s before answering about an answer in `slow`."""
    model_id, accept, fail, slow, requests = "judge-32b", set(), 0, set(), []

    def do_POST(self):
        assert self.path == "/v1/chat/completions"
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.requests.append(req)
        pred = req["messages"][0]["content"].split("Final answer to grade: ")[1].split("\n")[0]
        if pred in Judge.slow:
            time.sleep(2.0)
            return
        if Judge.fail:
            Judge.fail -= 1
            return self.reply({"error": "overloaded"}, 500)
        verdict = "YES" if pred in Judge.accept else "NO"
        self.reply({"choices": [{"index": 0,
                                 "message": {"role": "assistant", "content": f"<think>YES or NO?</think>{verdict}"},
                                 "finish_reason": "stop"}]})


@pytest.fixture
def judge_url():
    Judge.accept, Judge.fail, Judge.slow, Judge.requests = set(), 0, set(), []
    with serve(Judge) as url:
        yield url


def write_predictions(path):
    """Two toy problems (gold 12 and 7), two samples each: right, equivalent in a form the rules miss
    (the judge accepts it), wrong, and no answer."""
    rows = [("a", "12", "\\boxed{12}", 0), ("a", "12", "\\boxed{twelve}", 1),
            ("b", "7", "\\boxed{8}", 0), ("b", "7", "I give up.", 1)]
    path.write_text("".join(json.dumps(dict(benchmark="toy", id=i, problem=f"problem {i}", answer=gold, response=resp,
                                            sample=s, tool_calls=0, tool_errors=0)) + "\n"
                            for i, gold, resp, s in rows))


def test_judge_reported_beside_the_rules_and_cached(judge_url, tmp_path, capsys):
    pred = tmp_path / "preds.jsonl"
    write_predictions(pred)
    Judge.accept, Judge.fail = {"12", "twelve"}, 1  # the first request fails once and is retried
    argv = ["--predictions", str(pred), "--judge", judge_url, "--k", "2", "--out", str(tmp_path / "r")]
    m = ev.main(argv)["benchmarks"]["toy"]
    assert (m["avg@k"], m["judge@k"]) == (25.0, 50.0)   # rules: 12 only; judge: 12 and twelve
    assert (m["judge_agree"], m["judge_only"], m["rules_only"], m["judge_unclear"]) == (100 * 2 / 3, 1, 0, 0)
    assert len(Judge.requests) == 4  # three answers (no answer: not asked), one retried
    req = Judge.requests[-1]
    assert req["model"] == "judge-32b" and req["temperature"] == 0 and len(req["messages"]) == 1
    assert ("Problem:\nproblem" in req["messages"][0]["content"]
            and "Reference answer: " in req["messages"][0]["content"])
    header, row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("benchmark", "toy"))]
    assert header.split()[-2:] == ["judge", "agree%"] and row.split()[-2:] == ["50.0", "66.7"]
    recs = [json.loads(line) for line in pred.read_text().splitlines()]
    assert [r.get("judge", {}).get("verdict") for r in recs] == [True, True, False, None]
    assert recs[1]["judge"] == dict(model="judge-32b", prompt=ev.JUDGE_ID, pred="twelve", verdict=True)
    assert "correct" not in recs[0]  # the file gains the judgements only

    ev.main(argv)  # a rerun asks nothing
    assert len(Judge.requests) == 4
    recs[2]["response"] = "\\boxed{7}"  # a changed answer is asked about again
    pred.write_text("".join(json.dumps(r) + "\n" for r in recs))
    m = ev.main(argv)["benchmarks"]["toy"]
    assert len(Judge.requests) == 5 and (m["avg@k"], m["judge@k"], m["rules_only"]) == (50.0, 50.0, 1)


def test_judge_that_stops_answering_keeps_what_it_said(judge_url, tmp_path, monkeypatch):
    pred = tmp_path / "preds.jsonl"
    write_predictions(pred)
    monkeypatch.setattr(ev, "JUDGE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(ev, "JUDGE_WORKERS", 1)  # asked in file order: 12, twelve, then 8 times out
    Judge.accept, Judge.slow = {"12"}, {"8"}
    with pytest.raises(SystemExit, match=rf"--judge {judge_url}/chat/completions: .*timed out.* \(3 tries\)"):
        ev.main(["--predictions", str(pred), "--judge", judge_url, "--out", str(tmp_path / "r")])
    assert len(Judge.requests) == 2 + 3
    assert [json.loads(line).get("judge", {}).get("verdict") for line in pred.read_text().splitlines()] == \
        [True, False, None, None]
    Judge.slow = set()
    ev.main(["--predictions", str(pred), "--judge", judge_url, "--out", str(tmp_path / "r")])
    assert len(Judge.requests) == 2 + 3 + 1  # only the answer not yet judged


@pytest.mark.parametrize("reply, verdict", [
    ("YES", True), ("no", False), ("Yes.", True), ("The answers match: YES", True),
    ("<think>Is it YES? Hmm.</think>\nNO", False), ("I cannot tell", None), ("", None), (None, None),
    ("YESTERDAY", None),
])
def test_judge_reply_parsing(reply, verdict):
    assert ev.judge_verdict(reply) is verdict


def test_judge_is_not_asked_about_code_or_unanswered_samples(judge_url, tmp_path):
    pred = tmp_path / "preds.jsonl"
    pred.write_text(json.dumps(dict(benchmark="toy", id="a", answer="1", response="no answer here", sample=0)) + "\n")
    m = ev.main(["--predictions", str(pred), "--judge", judge_url, "--out", str(tmp_path / "r")])["benchmarks"]["toy"]
    assert Judge.requests == [] and "judge@k" not in m
