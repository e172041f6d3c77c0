"""tirgen.py: inputs that stop the run with one line instead of a traceback or a silent no-op: a
missing --data file, and --drop-cot-solved on trajectories written without the pure-CoT pass."""
import json

import pytest

import prepare_toy
import tirgen


def test_missing_data_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"/nope.jsonl: no such file$"):
        tirgen.main(["--data", str(tmp_path / "nope.jsonl"), "--trajectories", str(tmp_path / "t.jsonl"),
                     "--out", str(tmp_path / "s.jsonl")])


def test_drop_cot_solved_refuses_trajectories_without_the_cot_pass(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in prepare_toy.make_toy_problems(4, seed=99, split="t")))
    argv = ["--data", str(data), "--trajectories", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "s.jsonl"),
            "--sandbox-workers", "1", "--keep-one-call", "1"]
    tirgen.main(argv)  # written without the flag: no cot_correct
    kept = capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"t.jsonl: 4 trajectories \(e.g. id '.*'\) were written without the "
                                         r"pure-CoT pass that --drop-cot-solved needs"):
        tirgen.main(argv + ["--drop-cot-solved"])
    argv[3] = str(tmp_path / "t2.jsonl")  # a fresh file with the flag runs the pass and the stage
    tirgen.main(argv + ["--drop-cot-solved"])
    assert "pure CoT already solves it" in capsys.readouterr().out and "SFT samples" in kept
    assert all("cot_correct" in json.loads(line) for line in open(tmp_path / "t2.jsonl"))
