"""Code benchmarks: the final solution's extraction, EvalPlus's checking rule on reference solutions
(special oracles, MBPP+ inputs, plain HumanEval's check) and on bad generations, eval.py's code path
end to end (base and plus, verdicts kept in the predictions), --check-data, --benchmarks presets."""
import json

import pytest

import eval as ev
import model
import rewards
from sandbox import Sandbox

DATA = ev.DEFAULT_DATA_DIR
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data not present")


@pytest.fixture(scope="module")
def checker():
    with Sandbox(workers=2, timeout_s=rewards.CHECK_TIMEOUT_S, memory_mb=rewards.CHECK_MEMORY_MB) as sb:
        yield sb


@pytest.fixture(scope="module")
def tasks():
    return {b: {t["id"]: t for t in ev.load_benchmark(b, DATA, tasks=True)} for b in ev.CODE} if DATA else {}

# -----------------------------------------------------------------------------
# The final solution: the last ```python block that defines the entry point


def test_extract_code_takes_the_last_defining_block_without_its_test_calls():
    text = ("Try it.\n```python\ndef f(x):\n    return x\nprint(f(2))\n```\n```output\n2\n```\n"
            "Better:\n```python\nimport math\nK = 2\n@staticmethod\ndef f(x):\n    return K * x\nassert f(1) == 3\n"
            "print(f(3))\nif __name__ == '__main__':\n    f(0)\n```\n```output\n6\n```\n"
            "Check once more:\n```python\nprint(f(4))\n```\n"          # does not define f: not the solution
            "```python\ndef f(x:\n```\n")                              # does not parse: not the solution
    assert rewards.extract_code(text, "f") == "import math\nK = 2\n@staticmethod\ndef f(x):\n    return K * x\n"
    assert rewards.extract_code(text, "g") is None
    assert rewards.extract_code("def f(x): return 1", "f") is None    # outside a block
    assert rewards.extract_code(None, "f") is None

# -----------------------------------------------------------------------------
# EvalPlus's rule on the reference solutions: the cases that need more than "outputs are equal"

REFERENCE_CASES = [
    ("humaneval_plus", "HumanEval/0"),    # plain comparison
    ("humaneval_plus", "HumanEval/2"),    # atol 1e-6
    ("humaneval_plus", "HumanEval/32"),   # find_zero: any root, |poly(x)| <= atol
    ("humaneval_plus", "HumanEval/38"),   # a helper (encode_cyclic) from the prompt
    ("mbpp_plus", "Mbpp/2"),              # tuples from JSON lists; outputs compared as sets
    ("mbpp_plus", "Mbpp/124"),            # a complex number from a string
    ("mbpp_plus", "Mbpp/581"),            # special oracle (pyramid surface)
    ("mbpp_plus", "Mbpp/722"),            # a dict of tuples
    ("mbpp_plus", "Mbpp/737"),            # only "not None" is compared (a regex match object)
    ("mbpp_plus", "Mbpp/793"),            # plus_input is {}: no extra tests
    ("humaneval", "HumanEval/38"),        # plain HumanEval: its check(), which calls encode_cyclic
]


@needs_data
def test_reference_solutions_pass_their_own_tests(checker, tasks):
    jobs = [(tasks[b][i], tasks[b][i]["prompt"] + tasks[b][i]["canonical_solution"]) for b, i in REFERENCE_CASES]
    for (b, i), v in zip(REFERENCE_CASES, rewards.check_code(checker, jobs)):
        assert v == dict(passed_base=True, passed_plus=None if b == "humaneval" else True, error=None), (b, i)


@needs_data
def test_other_right_solutions_pass_and_near_misses_fail(checker, tasks):
    he, mb = tasks["humaneval_plus"], tasks["mbpp_plus"]
    jobs = [
        (he["HumanEval/2"], "def truncate_number(number):\n    return number - int(number)\n"),   # float noise < atol
        (he["HumanEval/5"], "def intersperse(numbers, delimeter):\n    out = []\n    for x in numbers:\n"
                            "        out += [x, delimeter]\n    return out[:-1]\n"),
        (mb["Mbpp/2"], "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n"),
        (he["HumanEval/2"],
         "def truncate_number(number):\n    return round(number % 1.0, 3)\n"),    # off by > atol on plus
        (he["HumanEval/0"],
         "def has_close_elements(numbers, threshold):\n    xs = numbers[:6]\n    return any(abs(xs[i] - "
         "xs[j]) < threshold for i in range(len(xs)) for j in range(i))\n"),  # right on HumanEval's inputs only
    ]
    verdicts = rewards.check_code(checker, jobs)
    assert [(v["passed_base"], v["passed_plus"]) for v in verdicts] == [(True, True)] * 3 + [(True, False)] * 2
    assert verdicts[3]["error"].startswith("plus input") and verdicts[4]["error"].startswith("plus input")

# -----------------------------------------------------------------------------
# Bad generations are contained by the sandbox and scored as failures

HOSTILE = {
    "wrong output": "def has_close_elements(numbers, threshold):\n    return True\n",
    "infinite loop": "def has_close_elements(numbers, threshold):\n    while True:\n        pass\n",
    "sleeps": "import time\ndef has_close_elements(numbers, threshold):\n    time.sleep(1000)\n",
    "exit() on import": "exit()\ndef has_close_elements(numbers, threshold):\n    return False\n",
    "os._exit(0)": "import os\ndef has_close_elements(numbers, threshold):\n    os._exit(0)\n",
    "forged verdict": ("import os\ndef has_close_elements(numbers, threshold):\n    os.write(1, b'{\"base\": true, "
                       "\"plus\": true, \"error\": null}\\n')\n    os._exit(0)\n"),
    "floods stdout": "import os\ndef has_close_elements(numbers, threshold):\n    os.write(1, b'x' * 10 ** 7)\n",
    "prints a lot": "def has_close_elements(numbers, threshold):\n    print('x' * 10 ** 6)\n    return True\n",
    "memory bomb": "def has_close_elements(numbers, threshold):\n    return len(bytearray(10 ** 11)) > 0\n",
    "recursion": "def has_close_elements(numbers, threshold):\n    return has_close_elements(numbers, threshold)\n",
    "catches the time limit": ("def has_close_elements(numbers, threshold):\n    while True:\n        try:\n"
                               "            while True:\n                pass\n        except BaseException:\n"
                               "            pass\n"),
    "numpy array out": "import numpy as np\ndef has_close_elements(numbers, threshold):\n    return np.array([1, 2])\n",
    "no solution": None,
}


@needs_data
def test_bad_generations_are_failures(checker, tasks):
    task = tasks["humaneval_plus"]["HumanEval/0"]
    verdicts = rewards.check_code(checker, [(task, code) for code in HOSTILE.values()])
    for name, v in zip(HOSTILE, verdicts):
        assert (v["passed_base"], v["passed_plus"]) == (False, False) and v["error"], name
    errors = dict(zip(HOSTILE, (v["error"] for v in verdicts)))
    assert errors["infinite loop"] == "base input 0: time limit 1.0 s"
    assert errors["exit() on import"].startswith("solution: SystemExit")
    assert errors["floods stdout"].startswith("OutputLimitError")
    assert errors["no solution"] == "no ```python block defines has_close_elements"
    # the sandbox is still usable after all that
    ref = task["prompt"] + task["canonical_solution"]
    assert rewards.check_code(checker, [(task, ref)])[0]["passed_plus"] is True

# -----------------------------------------------------------------------------
# eval.py: presets, the code path end to end, --check-data


def test_benchmark_names_combine_presets_and_names():
    assert ev.benchmark_names("paper,gsm8k") == ev.PAPER + ["gsm8k"]
    assert ev.benchmark_names("math500,paper") == ev.PAPER
    assert ev.benchmark_names("code,humaneval") == ["humaneval_plus", "mbpp_plus", "humaneval"]
    assert ev.benchmark_names(None) == []
    with pytest.raises(SystemExit, match="unknown benchmark 'gsm9k'"):
        ev.benchmark_names("paper,gsm9k")
    with pytest.raises(SystemExit, match="livecodebench: no offline copy"):
        ev.benchmark_names("code,livecodebench")


def test_code_task_file_errors(tmp_path):
    (tmp_path / "mbpp_plus.jsonl").write_text("")
    with pytest.raises(SystemExit, match=r"mbpp_plus.jsonl: no code tasks"):
        ev.load_benchmark("mbpp_plus", str(tmp_path))
    (tmp_path / "humaneval.jsonl").write_text(json.dumps(dict(task_id="HumanEval/0", prompt="p", entry_point="f",
                                                              canonical_solution="c")) + "\n")
    with pytest.raises(SystemExit, match=r"humaneval.jsonl:1: missing field 'test'"):
        ev.load_benchmark("humaneval", str(tmp_path))


@needs_data
def test_code_prompt_goes_through_the_template():
    p = ev.load_benchmark("mbpp_plus", DATA)[0]
    assert p["problem"].startswith('```python\n"""\nWrite a function to find the shared elements')
    assert "`similar_elements`" in p["problem"] and p["entry_point"] == "similar_elements"
    assert ev.load_benchmark("humaneval_plus", DATA)[0]["problem"].startswith("```python\nfrom typing import List\n")


@needs_data
def test_code_benchmarks_end_to_end(tiny_dir, tmp_path, monkeypatch, capsys, tasks):
    """A scripted policy: sample 0 writes the reference solution, sample 1 a wrong one (right on base only for
    MBPP+'s first task), so base and plus differ; the verdicts are stored and not computed twice."""
    wrong = {"HumanEval/0": "def has_close_elements(numbers, threshold):\n    return True\n",
             "HumanEval/1": "def separate_paren_groups(s):\n    return []\n",
             "Mbpp/2": "def similar_elements(a, b):\n    return tuple(set(a[:4]) & set(b))\n",
             "Mbpp/3": "def is_not_prime(n):\n    return 1\n"}

    def fake_rollout(m, tok, prompts, sandbox, **kw):
        out = []
        for p in prompts:
            text = tok.decode(p)
            b, i = next((b, i) for b in ("humaneval_plus", "mbpp_plus") for i in wrong
                        if i in tasks[b] and f"`{tasks[b][i]['entry_point']}`" in text)
            ref = tasks[b][i]["prompt"] + tasks[b][i]["canonical_solution"]
            for s in range(kw["n"]):
                code = ref if s == 0 else wrong[i]
                call = model.ToolCall(0, 1, code, None, ok=False)  # the final block prints nothing
                out.append(model.Rollout(prompt_ids=p, text=f"```python\n{code}\nprint(1)\n```\n```output\n1\n```\n",
                                         calls=[call], generated=50, finish="eos"))
        return out

    monkeypatch.setattr(model, "rollout", fake_rollout)
    checked = []
    real_check = rewards.check_code
    monkeypatch.setattr(ev, "check_code", lambda sb, jobs: checked.append(len(jobs)) or real_check(sb, jobs))
    argv = ["--model", tiny_dir, "--benchmarks", "code", "--limit", "2", "--k", "2", "--out", str(tmp_path)]
    report = ev.main(argv)
    he, mb = report["benchmarks"]["humaneval_plus"], report["benchmarks"]["mbpp_plus"]
    assert (he["avg@k"], he["base_avg@k"], he["pass@k"], he["maj@k"]) == (50.0, 50.0, 100.0, None)
    assert (mb["avg@k"], mb["base_avg@k"]) == (50.0, 75.0)  # Mbpp/2's wrong solution passes the base tests only
    assert (he["tool_calls"], he["tool_success"]) == (1.0, 0.0)
    out = capsys.readouterr().out
    assert "Fig. 5 layout, pass@1 (Avg@k): HumanEval+ 50.0 | MBPP+ 50.0 | LiveCodeBench - (no offline copy" in out
    assert [line.split()[:5] for line in out.splitlines() if line.startswith("  base")] == \
        [["base", "2", "2", "50.0", "100.0"], ["base", "2", "2", "75.0", "100.0"]]
    recs = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and all(r["solution"] == rewards.extract_code(r["response"], r["entry_point"]) for r in recs)
    by = {(r["id"], r["sample"]): r for r in recs}
    assert (by["Mbpp/2", 1]["passed_base"], by["Mbpp/2", 1]["passed_plus"], by["Mbpp/2", 1]["correct"]) == \
        (True, False, False)
    assert by["Mbpp/2", 1]["check_error"].startswith("plus input")
    assert checked == [8]
    ev.main(argv)  # a rerun finds every verdict in the file
    ev.main(["--predictions", str(tmp_path / "predictions.jsonl"), "--out", str(tmp_path / "again")])
    assert checked == [8]
    # a solution edited in the file is checked again
    by["HumanEval/0", 1]["response"] = by["HumanEval/0", 0]["response"]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = ev.main(["--predictions", str(tmp_path / "predictions.jsonl"), "--out", str(tmp_path / "again")])
    assert checked == [8, 1] and report["benchmarks"]["humaneval_plus"]["avg@k"] == 75.0


@needs_data
def test_check_data_on_a_few_tasks(capsys):
    ev.main(["--check-data", "--benchmarks", "code,humaneval", "--limit", "2"])
    out = capsys.readouterr().out
    for name in ("HumanEval+", "MBPP+", "HumanEval"):
        assert f"{name}: 2 of 2 reference solutions pass their tests" in out
