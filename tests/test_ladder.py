"""runs/ladder.py: the paired two-level bootstrap on synthetic answers, and the whole pipeline at tiny
sizes (--quick): the stages fit together through files."""
import json
import os
import random
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "runs"))
import ladder  # noqa: E402


def synthetic(rates, n=400):
    """results[seed]["<row>@0.6"] = (report, answers): per seed, each row's answers correct at the given rate
    (paired: problem i of row B is right whenever it is for row A and B's rate is higher)."""
    out = {}
    for s, by_row in enumerate(rates):
        u = [random.Random(f"{s}/{i}").random() for i in range(n)]
        out[s] = {f"{row}@0.6": (None,
                                 [dict(id=f"{i:04d}", correct=u[i] < rate, tool_calls=1, tool_errors=int(u[i] < 0.1))
                                        for i in range(n)]) for row, rate in by_row.items()}
    return out


def test_paired_interval_covers_the_difference_and_the_seed_spread():
    res = synthetic([dict(A=0.5, B=0.55)] * 3)           # B solves 5% more problems in every seed
    v, lo, hi, per_seed = ladder.interval(res, [0, 1, 2], 0.6, "acc", "B", "A")
    assert v == pytest.approx(per_seed.mean()) and 0 < lo < v < hi and 4 < v < 6
    assert hi - lo < 4   # paired: only the ~5% of problems that differ vary, not the binomial noise of each row
    v, lo, hi, _ = ladder.interval(res, [0, 1, 2], 0.6, "acc", "A", "A")
    assert v == lo == hi == 0
    # the same mean effect, but one seed goes the other way: the interval must reach below 0
    res = synthetic([dict(A=0.5, B=0.6), dict(A=0.5, B=0.6), dict(A=0.55, B=0.5)])
    v, lo, hi, per_seed = ladder.interval(res, [0, 1, 2], 0.6, "acc", "B", "A")
    assert v > 3 and lo < 0 < hi and min(per_seed) < -3
    v, lo, hi, _ = ladder.interval(res, [0, 1, 2], 0.6, "tool", "A")   # pooled over calls: 10% failed
    assert lo < v < hi and v == pytest.approx(90, abs=2)


@pytest.mark.slow
def test_quick_pipeline_writes_every_row(tmp_path):
    out = tmp_path / "ladder"
    results = ladder.main(["--seeds", "0", "--quick", "--jobs", "1", "--test-n", "6", "--out", str(out),
                           "--tiny", str(tmp_path / "tiny"), "--rl-args", "--iterations 2",
                           "--temperatures", "0.6,1.0"])
    rows = [json.loads(line) for line in open(out / "rows.jsonl")]
    assert [(r["row"], r["temperature"]) for r in rows] == [(row, t) for row in ("T1", "T2", "T3", "T4", "T5", "T6")
                                                            for t in (0.6, 1.0)]
    for name, (report, preds) in results[0].items():
        assert report["n"] == 6 and len(preds) == 6  # every held-out problem was predicted and scored
        assert all("response" in p and "tool_calls" in p for p in preds)
    # each stage wrote a loadable model dir that the next one started from
    for d in ("cot", "t2", "s0/sft", "s0/t4", "s0/t5"):
        assert os.path.exists(out / d / "config.json")
    for d in ("t2", "s0/t5"):
        assert len(open(out / d / "log.jsonl").readlines()) == 2  # --rl-args won over --quick's 1 iteration
    # T1 and T2 execute no code (no tools); T6 ran with self-correction, T1-T5 without
    for row in ("T1", "T2"):
        assert all(p["tool_calls"] == 0 for p in results[0][f"{row}@0.6"][1])
    for row in ("T1", "T2", "T3", "T4", "T5"):
        assert all(p["corrections"] == 0 for p in results[0][f"{row}@1.0"][1])
    table = open(out / "ladder.md").read()
    assert ("T6 + self-correction" in table and "T5 − T4, step-level RL" in table
            and (out / "ladder.png").stat().st_size > 1000)
    stages = [json.loads(line)["stage"] for line in open(out / "s0" / "times.jsonl")]
    assert "t5.log" in stages and "T6@1.0.infer.log" in stages
    # a rerun reuses what exists: no stage runs again, the table is the same
    assert ladder.main(["--seeds", "0", "--quick", "--test-n", "6", "--out", str(out),
                        "--tiny", str(tmp_path / "tiny"), "--temperatures", "0.6,1.0"]) == results
    assert len(open(out / "s0" / "times.jsonl").readlines()) == len(stages)


@pytest.mark.parametrize("one", [False, True])
def test_cold_start_per_seed_or_shared(tmp_path, monkeypatch, one):
    """The stage commands, recorded instead of run: by default every seed trains its own cold start and
    its RL and T3 row start from it; --one-cold-start trains one, which every seed starts from."""
    cmds = []
    monkeypatch.setattr(ladder, "run", lambda cmd, log, threads=1: cmds.append(cmd))
    args = ladder.parse_args(["--out", str(tmp_path)] + ["--one-cold-start"] * one)
    jobs = ladder.pipeline(args, "train.jsonl", "cot.jsonl", "test.jsonl")
    ladder.schedule(jobs, 2)
    flag = lambda cmd, name: cmd[cmd.index(name) + 1]
    cold = [c for c in cmds if c[0] == "sft.py" and flag(c, "--data").endswith("toy_sft.jsonl")]
    own = {s: str(tmp_path / "sft") if one else str(tmp_path / f"s{s}" / "sft") for s in (0, 1, 2)}
    assert sorted(flag(c, "--out") for c in cold) == sorted(set(own.values()))
    assert all(flag(c, "--model") == str(tmp_path / "cot") for c in cold)
    for s in (0, 1, 2):
        rl = [c for c in cmds if c[0] == "rl.py" and flag(c, "--seed") == str(s) and "--no-tools" not in c]
        t3 = [c for c in cmds if c[0] == "infer.py" and flag(c, "--out").endswith(f"s{s}/T3@0.6.jsonl")]
        assert len(rl) == 2 and len(t3) == 1
        assert {flag(c, "--model") for c in rl + t3} == {own[s]}
    for d in set(own.values()):  # each cold start ran before every command that loads it
        trained = next(i for i, c in enumerate(cmds) if c in cold and flag(c, "--out") == d)
        assert trained < min(i for i, c in enumerate(cmds) if "--model" in c and flag(c, "--model") == d)
