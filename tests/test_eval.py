"""eval.py: metric functions against hand-computed values, every benchmark loader on the real files,
predictions scoring end to end, resume, and one run on the tiny model."""
import json

import pytest

import eval as ev
import model

DATA = ev.DEFAULT_DATA_DIR
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data not present")

# -----------------------------------------------------------------------------
# Metrics


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 0, 1, 0.0), (4, 1, 1, 0.25), (4, 3, 1, 0.75),   # pass@1 = c / n
    (4, 1, 2, 0.5),                                     # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (4, 2, 2, 5 / 6),                                   # 1 - C(2,2)/C(4,2) = 1 - 1/6
    (5, 2, 3, 0.9),                                     # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (10, 3, 4, 1 - 35 / 210),                           # 1 - C(7,4)/C(10,4)
    (4, 1, 4, 1.0), (4, 0, 4, 0.0), (3, 2, 2, 1.0),     # n - c < k: some draw of k holds a correct one
])
def test_pass_at_k_is_chen_estimator(n, c, k, expected):
    assert ev.pass_at_k(n, c, k) == pytest.approx(expected)


def test_majority_groups_equivalent_answers():
    from rewards import is_equiv
    # Without grouping every answer is alone and the tie goes to 4.67; 14/3 written two ways wins.
    preds = ["4.67", "14/3", "5", "\\dfrac{14}{3}"]
    assert ev.majority_index(preds, is_equiv) == 1
    # Wrong answers written differently (41 and 82/2) outvote the lone right one.
    preds = ["42", "41", "\\frac{82}{2}", "43"]
    assert ev.majority_index(preds, is_equiv) == 1
    assert ev.majority_index(["3", None, None, "3"], is_equiv) == 0     # no answer is no vote
    assert ev.majority_index(["2", "3"], is_equiv) == 0                 # a tie goes to the first seen
    assert ev.majority_index([None, None], is_equiv) is None


def test_chi2_matches_paper_key_insight():
    # Paper App. D.1, Table 4: answer true 3950 / 139, answer false 1549 / 318 (code true / false).
    chi2, p = ev.chi2_2x2(3950, 139, 1549, 318)
    assert chi2 == pytest.approx(336.3, abs=0.05)
    assert p == pytest.approx(4.09e-75, rel=0.01)
    assert ev.chi2_2x2(5, 0, 3, 0) == (None, None)  # no answer with failed code: undefined


def test_key_insight_definition():
    samples = ([(True, 1, 0)] * 3950 + [(True, 2, 1)] * 139 + [(False, 3, 0)] * 1549 + [(False, 1, 1)] * 318
               + [(True, 0, 0)] * 5 + [(False, 0, 0)] * 2)
    t = ev.key_insight(samples)
    assert (t["correct_code_ok"], t["correct_code_failed"], t["incorrect_code_ok"], t["incorrect_code_failed"]) == \
        (3950, 139, 1549, 318)
    assert (t["no_code_correct"], t["no_code_incorrect"]) == (5, 2)  # no call: neither succeeded nor failed
    assert t["acc_code_ok"] == pytest.approx(71.8, abs=0.05)
    assert t["acc_code_failed"] == pytest.approx(30.4, abs=0.05)
    assert t["chi2"] == pytest.approx(336.29, abs=0.01)

# -----------------------------------------------------------------------------
# Benchmark loaders


@needs_data
@pytest.mark.parametrize("name, size, first_id, first_answer", [
    ("math500", 500, "test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("aime24", 30, "60", "204"),
    ("aime25", 30, "90", "70"),
    ("amc23", 40, "0", "27"),              # a float 27.0 in the file
    ("minerva", 272, "0", "1.6"),          # last \boxed{} of the solution
    ("olympiadbench", 675, "1606", "2"),   # final_answer ["2"]
    ("gsm8k", 1319, "gsm8k_test-1", "18"),      # after "#### "
    ("toy", 200, "toy-test-00000", "5583391"),
])
def test_loaders_on_real_files(name, size, first_id, first_answer):
    ps = ev.load_benchmark(name, DATA)
    assert len(ps) == size and len({p["id"] for p in ps}) == size
    assert (ps[0]["id"], ps[0]["answer"]) == (first_id, first_answer)
    assert all(set(p) == {"id", "problem", "answer"} and p["problem"].strip() and p["answer"].strip()
               and isinstance(p["answer"], str) for p in ps)
    assert "$" not in "".join(p["answer"] for p in ps if name == "olympiadbench")
    assert all("," not in p["answer"] for p in ps if name == "gsm8k")  # 2,125 -> 2125


def test_loader_errors_name_file_and_line(tmp_path):
    path = tmp_path / "math500.jsonl"
    path.write_text(json.dumps({"unique_id": "a", "problem": "p", "answer": "1"}) + "\n"
                    + json.dumps({"unique_id": "b", "problem": "p"}) + "\n")
    with pytest.raises(SystemExit, match=r"math500.jsonl:2: missing field 'answer'"):
        ev.load_benchmark("math500", str(tmp_path))
    (tmp_path / "minerva_math.jsonl").write_text('{"idx": 0, "problem": "p", "solution": "no box"}\n')
    with pytest.raises(SystemExit, match=r"minerva_math.jsonl:1: no answer field and no \\boxed\{\} in 'solution'"):
        ev.load_benchmark("minerva", str(tmp_path))
    (tmp_path / "aime24.jsonl").write_text('{"id": 1, "problem": "p", "answer": "2"}\n{"id": 2,\n')
    with pytest.raises(SystemExit, match=r"aime24.jsonl:2: invalid JSON"):
        ev.load_benchmark("aime24", str(tmp_path))
    with pytest.raises(SystemExit, match=r"aime25.jsonl: no such file"):
        ev.load_benchmark("aime25", str(tmp_path))

# -----------------------------------------------------------------------------
# Scoring a predictions file end to end (math500's real gold answers)

# Five MATH500 problems (gold 14/3, 9, Evelyn, 42, 27), four samples each: (answer written, tool_calls,
# tool_errors); None means the response has no boxed answer.
SAMPLES = [
    [("4.67", 1, 0), ("14/3", 1, 0), ("5", 1, 0), ("\\dfrac{14}{3}", 1, 0)],      # c=2, maj right (grouped)
    [("9", 1, 0), ("3", 1, 0), ("9", 1, 0), (None, 0, 0)],                        # c=2, maj right
    [("Evelyn", 1, 0)] * 4,                                                       # c=4, maj right
    [("41", 2, 1), ("\\frac{82}{2}", 1, 1), ("43", 1, 1), ("42", 1, 1)],          # c=1, maj wrong (41 = 82/2)
    [("26", 1, 1)] * 4,                                                           # c=0
]


def write_predictions(path):
    golds = ev.load_benchmark("math500", DATA)[2:7]
    with open(path, "w") as f:
        for p, samples in zip(golds, SAMPLES):
            for s, (ans, calls, errors) in enumerate(samples):
                rec = dict(p, benchmark="math500", sample=s, tool_calls=calls, tool_errors=errors, tokens=100 + s,
                           correct=True)  # a stored verdict is never trusted: everything is re-graded
                if p["answer"] == "\\text{Evelyn}":
                    rec["pred"] = ans  # records may carry only the extracted answer
                else:
                    rec["response"] = "I give up." if ans is None else f"So the answer is $\\boxed{{{ans}}}$."
                f.write(json.dumps(rec) + "\n")


@needs_data
def test_predictions_scoring_end_to_end(tmp_path, capsys):
    pred = tmp_path / "preds.jsonl"
    write_predictions(pred)
    report = ev.main(["--predictions", str(pred), "--benchmarks", "math500", "--out", str(tmp_path / "r")])
    m = report["benchmarks"]["math500"]
    assert (m["n"], m["k"], m["samples"], m["problems_in_benchmark"]) == (5, 4, 20, 500)
    assert m["avg@k"] == pytest.approx(100 * (2 / 4 + 2 / 4 + 4 / 4 + 1 / 4 + 0) / 5)    # 45.0
    assert m["pass@k"] == pytest.approx(80.0)
    assert m["maj@k"] == pytest.approx(60.0)
    assert m["tokens"] == pytest.approx(101.5)
    assert m["tool_calls"] == pytest.approx(20 / 20)
    assert m["code_ratio"] == pytest.approx(95.0)
    assert m["tool_success"] == pytest.approx(100 * (20 - 8) / 20)
    t = m["key_insight"]
    assert (t["correct_code_ok"], t["correct_code_failed"], t["incorrect_code_ok"], t["incorrect_code_failed"],
            t["no_code_correct"], t["no_code_incorrect"]) == (8, 1, 3, 7, 0, 1)
    assert t["chi2"] == pytest.approx(19 * (8 * 7 - 1 * 3) ** 2 / (9 * 10 * 11 * 8))
    assert t["acc_code_ok"] == pytest.approx(800 / 11) and t["acc_code_failed"] == pytest.approx(12.5)
    assert report["average"]["avg@k"] == pytest.approx(45.0) and report["settings"] is None
    assert json.load(open(tmp_path / "r" / "report.json"))["command"].startswith("python eval.py")
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("MATH500"))
    assert row.split()[1:6] == ["5", "4", "45.0", "80.0", "60.0"]
    assert "Table 1 layout, Avg@k: MATH500 45.0 | Avg 45.0" in out
    assert "covers 5 of 500 problems" in out
    # k=2 from the same four samples: Avg@2 and maj@2 over the first two, the unbiased pass@2 from all four.
    m = ev.main(["--predictions", str(pred), "--k", "2", "--out", str(tmp_path / "r2")])["benchmarks"]["math500"]
    assert m["avg@k"] == pytest.approx(100 * (1 / 2 + 1 / 2 + 1 + 0 + 0) / 5)   # 40.0, not 45.0 over all four
    assert m["pass@k"] == pytest.approx(100 * (5 / 6 + 5 / 6 + 1 + 0.5 + 0) / 5)
    assert m["maj@k"] == pytest.approx(40.0)  # 4.67 vs 14/3: the first wins; 9 vs 3: 9; 41 vs 82/2: wrong
    assert (m["samples"], m["tokens"], m["tool_calls"]) == (10, 100.5, 1.1)  # first two: 11 calls


def test_predictions_file_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"benchmark": "toy", "id": "a", "answer": "1", "pred": "1"}\n{"benchmark": "toy", "id": "b"}\n')
    with pytest.raises(SystemExit, match=r"p.jsonl:2: missing field answer, response or pred"):
        ev.load_predictions(str(path))
    path.write_text('{"benchmark": "mbpp_plus", "id": "Mbpp/2", "answer": "1", "pred": "1"}\n')
    with pytest.raises(SystemExit, match=r"p.jsonl:1: missing field response or solution"):  # a code record
        ev.load_predictions(str(path))
    path.write_text('{"benchmark": "toy", "id": "a", "answer": "1", "pred": "1"}\n')
    with pytest.raises(SystemExit, match=r"no predictions for benchmark aime24"):
        ev.load_predictions(str(path), ["aime24"])
    path.write_text('{"id": "a", "answer": "1", "pred": "1"}\n{"id": "a", "answer": "1", "pred": "2"}\n')
    _, preds = ev.load_predictions(str(path), ["toy"])  # no benchmark field: the one named; samples in file order
    assert [r["pred"] for r in preds["toy"]["a"]] == ["1", "2"]


@pytest.mark.parametrize("argv, message", [
    (["--predictions", "{tmp}/empty.jsonl"], r"empty.jsonl: no predictions \(an empty file\)$"),
    (["--predictions", "{tmp}/empty.jsonl", "--benchmarks", "toy"], r"empty.jsonl: no predictions \(an empty file\)$"),
    (["--benchmarks", "math500", "--data-dir", "{tmp}"], r"math500.jsonl: no problems$"),
    (["--benchmarks", "paper,gsm9k"], r"^unknown benchmark 'gsm9k'"),
])
def test_empty_files_and_bad_names_are_one_line_errors(tmp_path, argv, message):
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "math500.jsonl").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "o"), "--model", "none"]
    with pytest.raises(SystemExit, match=message):
        ev.main(argv)

# -----------------------------------------------------------------------------
# Runs on the tiny model: generation, the predictions records, resume


def test_tiny_model_run_and_resume(tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    argv = ["--model", tiny_dir, "--k", "2", "--limit", "3", "--max-new-tokens", "24", "--batch-size", "2",
            "--temperature", "1.0", "--out", str(out)]
    report = ev.main(argv)
    m = report["benchmarks"]["toy"]
    assert (m["n"], m["k"], m["samples"]) == (3, 2, 6)
    assert report["settings"]["max_new_tokens"] == {"toy": 24} and report["settings"]["k"] == 2
    assert "toy" in capsys.readouterr().out
    lines = (out / "predictions.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [(r["id"], r["sample"]) for r in recs] == [(f"toy-test-0000{i}", s) for i in range(3) for s in range(2)]
    for r in recs:
        assert {"id", "problem", "answer", "benchmark", "response", "pred", "correct", "tool_calls", "tool_errors",
                "corrections", "tokens", "finish", "model", "sample"} <= set(r)
        assert 0 < r["tokens"] <= 24 and r["correct"] is False
    assert len({r["response"] for r in recs}) == 6  # the samples differ, so a wrong seed would show

    # Killed while writing the fifth record: four whole lines and a torn one. The rerun cuts the torn
    # line with a warning, samples the unfinished chunk (problem 2) again and writes exactly the records
    # of the uninterrupted run.
    (out / "predictions.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    calls = []
    real = model.rollout
    monkeypatch.setattr(model, "rollout", lambda m_, tok, prompts, *a, **kw: calls.append(len(prompts)) or
                        real(m_, tok, prompts, *a, **kw))
    ev.main(argv)
    assert calls == [1]
    assert "dropped a torn last line (30 bytes" in capsys.readouterr().err
    again = (out / "predictions.jsonl").read_text().splitlines()
    assert again[:4] == lines[:4] and sorted(again) == sorted(lines)
    ev.main(argv)  # complete: nothing to sample
    assert calls == [1]
    with pytest.raises(SystemExit, match="not 'other'"):  # another model's file is not extended
        ev.written_samples(str(out / "predictions.jsonl"), "other")


def test_generation_passes_paper_defaults_and_records_tool_use(tiny_dir, tmp_path, monkeypatch):
    seen = []

    def fake_rollout(m, tok, prompts, sandbox, **kw):  # every answer is toy-test-00000's, with one call
        seen.append((tok.decode(prompts[0]), kw))
        call = model.ToolCall(0, 1, "print(9577 * 583)", None, ok=True)
        return [model.Rollout(prompt_ids=p, text="```output\n5583391\n```\n\\boxed{5583391}", calls=[call],
                              corrections=1, generated=40, finish="eos") for p in prompts for _ in range(kw["n"])]

    monkeypatch.setattr(model, "rollout", fake_rollout)
    report = ev.main(["--model", tiny_dir, "--limit", "2", "--self-correction", "4", "--l-suf", "100",
                      "--out", str(tmp_path)])
    prompt, kw = seen[0]
    assert prompt.startswith("A conversation between User and Assistant") and "9577 crates" in prompt  # raw template
    assert {key: kw[key] for key in ("n", "temperature", "top_p", "top_k", "max_tool_calls", "n_corr", "l_suf",
                                     "max_new_tokens")} == \
        dict(n=4, temperature=0.6, top_p=1.0, top_k=0, max_tool_calls=10, n_corr=4, l_suf=100, max_new_tokens=256)
    m = report["benchmarks"]["toy"]
    assert (m["avg@k"], m["pass@k"], m["maj@k"]) == (50.0, 50.0, 50.0)
    assert (m["tokens"], m["tool_calls"], m["tool_success"], m["code_ratio"], m["corrections"]) == (40, 1, 100, 100, 1)
    assert m["key_insight"]["correct_code_ok"] == 4 and m["key_insight"]["incorrect_code_ok"] == 4
    rec = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])
    assert (rec["pred"], rec["correct"], rec["tool_calls"], rec["tool_errors"], rec["corrections"]) == \
        ("5583391", True, 1, 0, 1)
