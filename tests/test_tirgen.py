"""tirgen.py and data/prepare_toy.py: toy data, the critic's parser, the toy agents, Algorithm 1 on the
real sandbox, each filter rule, balancing, the CLI (report, resume, bad input), URL agents against a local HTTP stub,
and an LLM-agent run with the tiny random model as actor and critic."""
import json
import os
import random
import re
from argparse import Namespace

import pytest

import prepare_toy
import tirgen
from stub_server import OpenAIStub, serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_problems(n, kinds=None):
    recs = prepare_toy.make_toy_problems(200, seed=99, split="t")
    return [r for r in recs if kinds is None or r["kind"] in kinds][:n]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_toy_data_files_are_byte_identical_to_the_generator(tmp_path):
    prepare_toy.write_toy_data(str(tmp_path))
    for name in ("toy_train.jsonl", "toy_test.jsonl", "toy_test1000.jsonl", "toy_cot.jsonl"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(ROOT, "data", name), "rb").read(), name
    test, test1000 = (read_jsonl(os.path.join(ROOT, "data", n)) for n in ("toy_test.jsonl", "toy_test1000.jsonl"))
    assert len(test1000) == 1000 and test1000[:200] == test   # the grown test set keeps the 200 problems


def test_toy_cot_is_the_actors_own_tool_free_reasoning():
    train = {r["id"]: r for r in read_jsonl(os.path.join(ROOT, "data", "toy_train.jsonl"))}
    cot = read_jsonl(os.path.join(ROOT, "data", "toy_cot.jsonl"))
    assert [r["id"] for r in cot] == list(train) and not any("```" in r["response"] for r in cot)
    assert all(r["response"].endswith("}.") and "\\boxed{" in r["response"] for r in cot)
    # head arithmetic only: right about as often as its steps all avoid a slip (--toy-slip 0.5 per step)
    assert 0.3 < sum(r["correct"] for r in cot) / len(cot) < 0.55

# -----------------------------------------------------------------------------
# The critic's reply format


@pytest.mark.parametrize("reply, expected", [
    ("no code", None),
    ("No code.\n```python\nprint(1)\n```", None),
    ("", None),
    ("%%$# ``` garbage", None),
    ("Sum them.\n```python\nprint(sum([1, 2]))", None),                       # unclosed block
    ("Sum them.\n```python\n  \n```", None),                                  # empty block
    ("```\nx = 1\n```\nthen\n```python\nprint(1)\n```", None),               # stray fence before it
    ("Sum them.\n```python\nprint(sum([1, 2]))\n```\n```output\n999\n```", ("Sum them.", "print(sum([1, 2]))")),
    ("REWRITE:\nSum them.\n```python\nprint(1)\n```\nSTEP:\nmore", ("Sum them.", "print(1)")),
    ("```python\nprint(2)\n```", ("", "print(2)")),
    ("A.\n```python\nimport math\nprint(math.pi)\n```\nB.\n```python\nprint(2)\n```",
     ("A.", "import math\nprint(math.pi)")),
])
def test_parse_critic(reply, expected):
    assert tirgen.parse_critic(reply) == expected


def test_critic_prompt_has_one_shot_example_and_only_the_step():
    p = tirgen.CRITIC_PROMPT.replace("{step}", "STEP TEXT")
    assert p.count("STEP:") == 2 and p.endswith("STEP TEXT\nREWRITE:\n")
    example = p.split("REWRITE:\n")[1]
    assert tirgen.parse_critic(example) == ("A box holds 14 rows of 23 apples, and 5 boxes hold five times as many.",
                                            "import math\nprint(math.prod([5, 14, 23]))")

# -----------------------------------------------------------------------------
# The toy agents


def idioms(kind, nums):
    """The toy critic's code idioms for a computation, formatted with its numbers."""
    pat = {"mul": r"\d+(?: \* \d+)+", "add": r"\d+(?: \+ \d+)+", "mod": r"\d+ % \d+",
           "eq": r"\(\d+ - \d+\) / \d+"}[kind]
    tpls = next(t for p, t in tirgen.TOY_CODE if p == pat)
    return {t.format(*nums, nums=", ".join(map(str, nums))) for t in tpls}


def test_toy_critic_keeps_the_logic_and_writes_library_code(sandbox):
    critic, rng = tirgen.toy_critic(bug=0.0), random.Random(0)
    seen = set()
    for _ in range(30):  # one idiom per step, drawn at random: all of them turn up
        r_logic, code = tirgen.parse_critic(critic("The total is 4821 * 937 = 4517377.\n", rng))
        assert r_logic == "The total is 4821 * 937." and code in idioms("mul", [4821, 937])
        seen.add(code)
    assert seen == idioms("mul", [4821, 937])
    assert critic("So the answer is \\boxed{5}.", rng) == "no code"
    assert critic("The total is 4821 times 937, which is 4517377.\n", rng) == "no code"
    for _ in range(5):  # a forgotten import is a NameError, as in real critics' code
        buggy = tirgen.parse_critic(tirgen.toy_critic(bug=1.0)("The remainder is 100 % 7 = 2.\n", rng))
        assert buggy[0] == "The remainder is 100 % 7." and "NameError" in sandbox.run(buggy[1]).error
    # every idiom of every kind's step is code whose real output is the true value
    actor = tirgen.toy_actor(slip=0.0, words=0.0)
    for rec in toy_problems(40):
        if rec["kind"] != "mulmod":
            step, _ = actor(rec, "", rng)
            r_logic, code = tirgen.parse_critic(critic(step, rng))
            assert "=" not in r_logic
            for code in idioms(rec["kind"], re.findall(r"\d+", step.split("=")[0])):
                res = sandbox.run(code)
                assert res.ok and res.stdout.strip() == rec["answer"], (step, code, res)
                assert not tirgen.trivial(code)


def test_mixing_the_critics_idioms_fails_the_way_real_tir_code_does(sandbox):
    """What a policy that learned the idioms imperfectly writes: each mix-up is a real-world error."""
    for code, error in [("import numpy as np\nprint(numpy.sum([1, 2]))", "NameError"),   # the other import
                        ("import math\nprint(math.prod(3, 4))", "TypeError"),            # the other argument shape
                        ("from sympy import solve\nprint(solve(2*x + 1 - 7, x)[0])", "NameError")]:  # no symbol
        assert error in sandbox.run(code).error


def test_toy_actor_is_sometimes_wrong_in_its_head():
    actor, rng = tirgen.toy_actor(slip=1.0, words=0.0), random.Random(1)
    for rec in toy_problems(30, kinds={"mul", "add", "mod"}):
        step, finished = actor(rec, "", rng)
        head = int(re.search(r"= (\d+)\.\n$", step).group(1))
        assert not finished and head != int(rec["answer"]) and len(str(head)) == len(rec["answer"])

# -----------------------------------------------------------------------------
# Algorithm 1 (tirgen_one) with the real sandbox


def test_toy_trajectory_is_the_design_format(sandbox):
    rec = {"id": "t", "problem": "p", "answer": "4517277", "kind": "mul", "args": [4821, 937]}
    tau, calls, errors, finish = tirgen.tirgen_one(rec, tirgen.toy_actor(1.0, 0.0), tirgen.toy_critic(0.0), sandbox, 8,
                                                   random.Random(0))
    assert tau in {f"The total is 4821 * 937.\n```python\n{code}\n```\n```output\n4517277\n```\n"
                   f"So the answer is \\boxed{{4517277}}."
                   for code in idioms("mul", [4821, 937])}
    assert (calls, errors, finish) == (1, 0, "boxed")


def test_two_call_problem_chains_the_real_output(sandbox):
    rec = {"id": "t", "problem": "p", "answer": str((731 * 58) % 41), "kind": "mulmod", "args": [731, 58, 41]}
    # the actor gets every head computation wrong: only real outputs can make the answer right
    tau, calls, _, finish = tirgen.tirgen_one(rec, tirgen.toy_actor(1.0, 0.0), tirgen.toy_critic(0.0), sandbox, 8,
                                              random.Random(0))
    assert calls == 2 and finish == "boxed"
    assert any(f"The remainder is 42398 % 41.\n```python\n{code}\n```" in tau for code in idioms("mod", [42398, 41]))
    assert tau.endswith(f"\\boxed{{{rec['answer']}}}.")


def test_critic_numbers_are_never_trusted_and_a_failing_block_abandons(sandbox):
    rec = {"id": "t", "problem": "p", "answer": "6"}
    def actor(rec, tau, rng):
        return (("So the answer is \\boxed{" + re.findall(r"\d+", tau)[-1] + "}.", True) if tau
                else ("2 * 3 = 7.\n", False))
    liar = lambda step, rng: "Multiply.\n```python\nprint(2 * 3)\n```\n```output\n7\n```" if "=" in step else "no code"
    tau, calls, errors, finish = tirgen.tirgen_one(rec, actor, liar, sandbox, 8, random.Random(0))
    assert "```output\n6\n```" in tau and "7" not in tau and tau.endswith("\\boxed{6}.") and finish == "boxed"
    broken = lambda step, rng: "Multiply.\n```python\nprint(2 * undefined)\n```"
    tau, calls, errors, finish = tirgen.tirgen_one(rec, actor, broken, sandbox, 8, random.Random(0))
    assert (calls, errors, finish) == (1, 1, "abandoned") and "NameError" in tau and "boxed" not in tau


def test_steps_are_cut_back_to_the_last_newline_and_budgets_end_the_loop(sandbox):
    seen = []
    def actor(rec, tau, rng):
        seen.append(tau)
        return "First line.\nHalf a li", False
    tau, calls, _, finish = tirgen.tirgen_one({}, actor, lambda s, r: "garbage", sandbox, 3, random.Random(0))
    assert tau == "First line.\n" * 3 and seen[1] == "First line.\n" and (calls, finish) == (0, "budget")
    stops = lambda rec, tau, rng: ("I give up.", True)
    assert tirgen.tirgen_one({}, stops, None, sandbox, 3, random.Random(0)) == ("I give up.", 0, 0, "eos")

# -----------------------------------------------------------------------------
# The multi-stage filter: one test per rule, then selection and balancing

GOOD = ("Sum them.\n```python\nimport math\nprint(math.prod([2, 3]))\n```\n```output\n6\n```\n"
        "So the answer is \\boxed{6}.")


def traj(response=GOOD, calls=1, errors=0, **kw):
    return {"id": "a", "answer": "6", "response": response, "correct": True, "tool_calls": calls,
            "tool_errors": errors, "finish": "boxed", "sample": 0, **kw}


def test_rule_not_abandoned():
    assert tirgen.not_abandoned(traj()) and not tirgen.not_abandoned(traj(finish="abandoned"))


@pytest.mark.parametrize("response, calls, ok", [
    (GOOD, 1, True),
    ("I know it. So the answer is \\boxed{6}.", 0, True),
    (GOOD.replace("\\boxed{6}", "\\boxed{}"), 1, False),                              # empty box
    (GOOD.replace("\\boxed{6}", "6"), 1, False),                                      # no box
    (GOOD.replace("\\boxed{6}", "\\boxed{6"), 1, False),                              # unclosed box
    ("Sum.\n```python\nprint(6)\n```\nSo the answer is \\boxed{6}.", 0, False),       # block never executed
    ("Sum.\n```python\nprint(6)\nSo the answer is \\boxed{6}.", 0, False),            # unclosed block
    (GOOD.replace("So the", "```output\n6\n```\nSo the"), 1, False),                  # model-written output block
    ("```python\nprint('\\\\boxed{6}')\n```\n```output\n\\boxed{6}\n```\n", 1, False),  # box only in an output
    ("Sum.\n```python\nprint(1)\n```\n```output\n\n```\nSo \\boxed{6}.", 1, True),      # empty observation
])
def test_rule_format(response, calls, ok):
    assert tirgen.format_ok(traj(response, calls)) is ok


def block(code):
    return f"```python\n{code}\n```\n```output\n1\n```\n"


@pytest.mark.parametrize("codes, errors, ok", [
    ([], 0, False),                                                 # no code at all
    (["import sympy\nprint(sympy.Mod(7, 3))"], 1, False),           # a call failed
    (["print(2 * 3)"], 0, False),                                   # a lone trivial block
    (["from math import prod\nprint(prod([2, 3]))"], 0, True),      # library call
    (["t = 0\nfor i in range(4):\n    t += i\nprint(t)"], 0, True),  # control flow
    (["print(1)", "import math\nprint(math.pi)", "x = 3\nif x:\n    print(x)"], 0, True),  # 1 of 3 trivial
    (["print(1)", "print(2)", "import math\nprint(math.e)"], 0, False),  # 2 of 3 trivial (> 40%)
])
def test_rule_code_quality(codes, errors, ok):
    response = "".join("Step.\n" + block(c) for c in codes) + "So \\boxed{1}."
    assert tirgen.code_quality_ok(traj(response, len(codes), errors)) is ok


def test_rule_correct_answer_repetition_and_pure_cot():
    assert tirgen.correct(traj()) and not tirgen.correct(traj(correct=False))
    assert tirgen.no_repetition(traj())
    assert not tirgen.no_repetition(traj("I think so. " * 200 + GOOD))
    printed = "```python\nprint('0.384615' * 60)\n```\n```output\n" + "0.384615" * 60 + "\n```\nSo \\boxed{1}."
    assert tirgen.no_repetition(traj(printed))  # the environment's output is not the model's repetition
    assert tirgen.cot_unsolved(traj()) and tirgen.cot_unsolved(traj(cot_correct=False))
    assert not tirgen.cot_unsolved(traj(cot_correct=True))


def test_one_sample_per_problem_and_one_call_downsampling():
    two_calls = "Step.\n" + block("import math\nprint(math.e)") + GOOD
    recs = [traj(two_calls if i % 2 else GOOD, 1 + i % 2, id=f"p{i:03d}",
                 sample=j) for i in range(400) for j in range(3)]
    recs[0]["correct"] = False
    kept, rows, before = tirgen.multi_stage_filter(recs, tirgen.RULES, keep_one_call=0.5, seed=0)
    assert [n for _, n in rows] == [1200, 1200, 1200, 1200, 1199, 1199, 400, len(kept)]
    assert len({r["id"] for r in before}) == 400 and {r["sample"] for r in before} == {0, 1, 2}
    ones = sum(r["tool_calls"] == 1 for r in kept)
    assert sum(r["tool_calls"] == 2 for r in kept) == 200 and 70 < ones < 130
    again, _, _ = tirgen.multi_stage_filter(list(reversed(recs)), tirgen.RULES, keep_one_call=0.5, seed=0)
    assert again == kept  # seeded and independent of the order the threads wrote the records in


def test_pure_cot_pass_marks_problems_the_actor_solves_alone(sandbox):
    args = Namespace(max_steps=8, seed=0, drop_cot_solved=True)
    rec = toy_problems(1, kinds={"mul"})[0]
    right = tirgen.run_problem(rec, [0], tirgen.toy_actor(0.0, 0.0), tirgen.toy_critic(0.0), sandbox, args, "toy")
    wrong = tirgen.run_problem(rec, [0], tirgen.toy_actor(1.0, 0.0), tirgen.toy_critic(0.0), sandbox, args, "toy")
    assert right[0]["cot_correct"] is True and wrong[0]["cot_correct"] is False
    assert right[0]["correct"] and wrong[0]["correct"]  # with the critic both are right

# -----------------------------------------------------------------------------
# The CLI: default-like toy run, report, resume, bad input


def test_cli_toy_run_report_and_resume(tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", toy_problems(24))
    traj_path, sft = str(tmp_path / "traj.jsonl"), str(tmp_path / "sft.jsonl")
    argv = ["--data", data, "--trajectories", traj_path, "--out", sft, "--attempts", "2", "--toy-bug", "0.2",
            "--sandbox-workers", "2"]
    tirgen.main(argv)
    out = capsys.readouterr().out
    rows = read_jsonl(traj_path)
    assert len(rows) == 48 and sorted((r["id"], r["sample"]) for r in rows) == sorted(
        (p["id"], j) for p in toy_problems(24) for j in range(2))
    assert ({"response", "pred", "correct", "tool_calls", "tool_errors", "model", "sample", "kind", "args"}
            <= set(rows[0]))
    for name in ["abandoned", "format", "code quality", "correct final answer", "repetition", "one sample per problem",
                 "down-sample 1-call", "calls per sample", "length"]:
        assert name in out
    kept = read_jsonl(sft)
    assert 0 < len(kept) <= 24 and len({r["id"] for r in kept}) == len(kept)
    assert all(r["correct"] and r["tool_errors"] == 0 and tirgen.format_ok(r) for r in kept)
    # an interrupted run: drop the last records, the rerun adds exactly those back
    write_jsonl(traj_path, [json.dumps(r) for r in rows[:30]])
    tirgen.main(argv)
    assert "ran 18 in" in capsys.readouterr().out
    assert sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(traj_path)[:30]) == sorted(
        json.dumps(r, sort_keys=True) for r in rows[:30])
    assert sorted((r["id"], r["sample"]) for r in read_jsonl(traj_path)) == sorted((r["id"], r["sample"]) for r in rows)
    tirgen.main(argv)
    assert "ran 0 in" in capsys.readouterr().out and read_jsonl(sft) == kept


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "problem": "p", "answer": "1", "kind": "mul", "args": [1, 2]}', '{"id": "b", "problem"'],
     ":2: invalid JSON"),
    (['{"id": "a", "problem": "p"}'], ":1: missing field 'answer'"),
    (['["a"]'], ":1: not a JSON object"),
    (['{"id": "a", "problem": "p", "answer": "1"}'], ":1: the toy actor needs a toy problem"),
    (['{"id": "a", "problem": "p", "answer": "1", "kind": "mul", "args": [1, 2]}', ""] * 2, ":3: duplicate id 'a'"),
    ([""], ": no problems"),
])
def test_bad_input_names_the_line(tmp_path, lines, message):
    data = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(SystemExit) as e:
        tirgen.main(["--data", data, "--trajectories", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "s.jsonl")])
    assert str(e.value).startswith(data + message)

# -----------------------------------------------------------------------------
# URL agents: an OpenAI-compatible /v1/completions stub on 127.0.0.1, played by the toy agents


class Stub(OpenAIStub):
    model_id, problems, requests = "stub-7b", {}, []

    def do_POST(self):
        assert self.path == "/v1/completions"
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Stub.requests.append(req)
        rng, prompt = random.Random(req["seed"]), req["prompt"]
        if prompt.endswith("REWRITE:\n"):  # the critic: replies, then predicts an output it must not
            step = prompt.rsplit("STEP:\n", 1)[1].removesuffix("\nREWRITE:\n")
            text, finish = tirgen.toy_critic(0.0)(step, rng) + "\n```output\n123\n```", "stop"
        else:  # the actor: a toy step, running on past L_step into a half line the loop must cut
            head, tau = prompt.split("Assistant:\n", 1)
            rec = Stub.problems[head.rsplit("\n", 1)[0].split("\n")[-1]]
            text, done = tirgen.toy_actor(1.0, 0.0)(rec, tau, rng)
            text, finish = (text, "stop") if done else (text + "Then I", "length")
        self.reply({"choices": [{"text": text, "finish_reason": finish, "index": 0}]})


def test_url_actor_and_critic_through_the_same_loop(tmp_path, capsys):
    problems = toy_problems(6)
    Stub.problems = {p["problem"]: p for p in problems}
    traj_path = str(tmp_path / "traj.jsonl")
    with serve(Stub) as url:
        tirgen.main(["--data", write_jsonl(tmp_path / "p.jsonl", problems), "--actor", url, "--critic", url,
                     "--trajectories", traj_path, "--out", str(tmp_path / "sft.jsonl"), "--L-step", "40",
                     "--keep-one-call", "1", "--sandbox-workers", "1"])
    rows = read_jsonl(traj_path)
    assert len(rows) == 6 and all(r["correct"] and r["finish"] == "boxed" for r in rows)
    assert all("Then I" not in r["response"] and "123" not in r["response"] for r in rows)
    assert all(tirgen.format_ok(r) and r["model"] == f"actor={url} critic={url}" for r in rows)
    critic_reqs = [q for q in Stub.requests if q["prompt"].endswith("REWRITE:\n")]
    actor_reqs = [q for q in Stub.requests if q not in critic_reqs]
    assert critic_reqs and all(p["problem"] not in q["prompt"] for q in critic_reqs for p in problems)
    assert all(q["stop"] == ["```output"] and q["model"] == "stub-7b" for q in critic_reqs)
    assert all(q["max_tokens"] == 40 and tirgen.ACTOR_INSTRUCTION + "\n" in q["prompt"] for q in actor_reqs)
    assert "6 SFT samples" in capsys.readouterr().out

# -----------------------------------------------------------------------------
# LLM agents through model.py: the tiny random model as actor and critic writes garbage


@pytest.mark.slow
def test_llm_agent_tirgen_on_the_tiny_model(tiny_dir, tmp_path, capsys):
    problems = toy_problems(3)
    traj_path, sft = str(tmp_path / "traj.jsonl"), str(tmp_path / "sft.jsonl")
    tirgen.main(["--data", write_jsonl(tmp_path / "p.jsonl", problems), "--actor", tiny_dir, "--critic", tiny_dir,
                 "--trajectories", traj_path, "--out", sft, "--L-step", "16", "--critic-max-tokens", "24",
                 "--max-steps", "2", "--temperature", "1.0", "--sandbox-workers", "1"])
    out = capsys.readouterr().out
    rows = read_jsonl(traj_path)
    assert len(rows) == 3 and all(r["model"] == f"actor={tiny_dir} critic={tiny_dir}" for r in rows)
    assert all(r["finish"] in ("boxed", "eos", "budget", "abandoned") for r in rows)
    reasons = [next(name for name, keep in tirgen.RULES if not keep(r)) for r in rows]  # each is rejected, and why
    assert len(reasons) == 3 and read_jsonl(sft) == [] and "0 SFT samples" in out
    removed = {name: int(line.split()[-2]) for name, _ in tirgen.RULES for line in out.splitlines() if name in line}
    assert sum(removed.values()) == 3 and removed["format"] == reasons.count("format")
