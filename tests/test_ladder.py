"""The whole pipeline at tiny sizes (runs/ladder.py --quick): the stages fit together through files."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "runs"))
import ladder  # noqa: E402


@pytest.mark.slow
def test_quick_pipeline_writes_every_row(tmp_path):
    out = tmp_path / "ladder"
    results = ladder.main(["--seeds", "0", "--quick", "--jobs", "1", "--test-n", "6", "--out", str(out),
                           "--tiny", str(tmp_path / "tiny"), "--rl-args", "--iterations 2"])
    rows = [json.loads(line) for line in open(out / "rows.jsonl")]
    assert [(r["row"], r["temperature"]) for r in rows] == [(row, t) for row in ("T1", "T3", "T4", "T5", "T6")
                                                            for t in (0.6, 1.0)]
    for name, report in results[0].items():
        assert report["n"] == 6  # every held-out problem was predicted and scored
        preds = [json.loads(line) for line in open(out / "s0" / f"{name}.jsonl")]
        assert len(preds) == 6 and all("response" in p and "tool_calls" in p for p in preds)
    # each stage wrote a loadable model dir that the next one started from
    for d in ("sft", "t4", "t5"):
        assert os.path.exists(out / "s0" / d / "config.json")
    t5 = [json.loads(line) for line in open(out / "s0" / "t5" / "log.jsonl")]
    assert len(t5) == 2  # --rl-args reached rl.py: its --iterations 2 wins over --quick's 1
    # T1 executes no code (no tools); T6 ran with self-correction, T5 without
    assert all(p["tool_calls"] == 0 for p in (json.loads(line) for line in open(out / "s0" / "T1@0.6.jsonl")))
    for row in ("T1", "T3", "T4", "T5"):
        assert all(p["corrections"] == 0 for p in (json.loads(line) for line in open(out / "s0" / f"{row}@1.0.jsonl")))
    table = open(out / "ladder.md").read()
    assert "T6 + self-correction" in table and "acc T=1.0" in table and (out / "ladder.png").stat().st_size > 1000
    # a rerun reuses what exists: no stage runs again, the table is the same
    assert ladder.main(["--seeds", "0", "--quick", "--test-n", "6", "--out", str(out),
                        "--tiny", str(tmp_path / "tiny")]) == results
