"""sft.py: response splitting and masks, token-for-token agreement with the sampler, bad input
rejected before training, loss going down and exact resume (one process; 2 sharded processes
against gradient accumulation in one: tests/test_fsdp.py)."""
import json
import os

import pytest
import torch
from transformers import LlamaConfig

import model
import sft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trajectory(a, b):
    """A docs/design.md-style response: reasoning, a code block, the environment's output, the answer."""
    return (f"We need the product.\n```python\nimport math\nprint(math.prod([{a}, {b}]))\n```"
            + model.observation_text(str(a * b)) + f"So the answer is \\boxed{{{a * b}}}.")


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def toy_records(n):
    return [{"id": f"t{i}", "problem": f"What is {12 + i} times {34 + 3 * i}?", "answer": str((12 + i) * (34 + 3 * i)),
             "response": trajectory(12 + i, 34 + 3 * i)} for i in range(n)]


def test_split_response_masks_only_the_observation():
    pieces = sft.split_response(trajectory(12, 34))
    assert pieces == [("We need the product.\n```python\nimport math\nprint(math.prod([12, 34]))\n```", 1),
                      (model.observation_text("408"), 0), ("So the answer is \\boxed{408}.", 1)]
    two = ("A\n```python\nprint(1)\n```" + model.observation_text("1") + "B\n```python\nprint(2)\n```"
           + model.observation_text("") + "C")
    assert [t for _, t in sft.split_response(two)] == [1, 0, 1, 0, 1]
    assert sft.split_response("no code at all \\boxed{3}") == [("no code at all \\boxed{3}", 1)]


class Replay(torch.nn.Module):
    """Writes a fixed token sequence: the logits at position p put all mass on seq[p + 1]. The
    sampler must force its own observation tokens exactly where the sequence has them."""

    def __init__(self, seq, vocab):
        super().__init__()
        self.seq, self.vocab = seq, vocab
        self.config = LlamaConfig(num_hidden_layers=1)  # the sampler sizes its KV cache from the config
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.dummy.device

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=True, logits_to_keep=0):
        kv = input_ids[:, None, :, None].float()
        past_key_values.update(kv, kv, 0)
        logits = torch.zeros(input_ids.size(0), 1, self.vocab)
        for b, p in enumerate(position_ids[:, -1].tolist()):
            logits[b, 0, self.seq[min(p + 1, len(self.seq) - 1)]] = 30.0
        return type("Out", (), {"logits": logits})()


def test_encoding_is_what_the_sampler_produces(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    response = trajectory(12, 34).replace("So the", "Now check.\n```python\nprint(408 % 7)\n```"
                                          + model.observation_text("2") + "So the")
    ids, mask = sft.encode(tok, "What is 12 times 34?", sft.split_response(response), "raw")
    prompt = model.encode_prompt(tok, "What is 12 times 34?")
    assert ids[:len(prompt)] == prompt and mask[:len(prompt)] == [0] * len(prompt)
    assert ids[-1] == tok.eos_token_id and mask[-1] == 1  # EOS is trained: the model learns to stop
    r = model.rollout(Replay(ids, len(tok)), tok, [prompt], sandbox, max_new_tokens=200, temperature=0.0)[0]
    assert r.finish == "eos" and r.tool_calls == 2 and r.tool_errors == 0
    assert r.response_ids == ids[len(prompt):]  # token for token: no drift between SFT and rollouts
    assert r.mask == mask[len(prompt):]          # the forced observation tokens are the masked ones
    assert (tok.decode([t for t, m in zip(ids, mask) if not m][len(prompt):])
            == model.observation_text("408") + model.observation_text("2"))


BAD = [  # (lines, line number of the error, words of the reason)
    ([{"problem": "p", "answer": "1"}], 1, "'response'"),
    ([{"problem": "p", "response": "ok \\boxed{1}"}, {"problem": "p", "response": "x\n```python\nprint(1)\n"}], 2,
     "unclosed ```python"),
    (["{not json"], 1, ""),
    ([{"problem": "p", "response": "```python\nprint(1)\n```\nSo 1."}], 1, "not followed by an ```output"),
    ([{"problem": "p", "response": "x\n```output\n1\n```\n"}], 1, "follows no ```python"),
    ([{"problem": "p", "response": "```python\nprint(1)\n```\n```output\n1"}], 1, "unclosed ```output"),
    ([{"response": "x"}], 1, "'problem'"),
    (["[1, 2]"], 1, "not a JSON object"),
]


@pytest.mark.parametrize("lines,line,reason", BAD)
def test_bad_input_is_a_file_line_error_before_training(tmp_path, lines, line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    # the model dir does not exist: the data error must come first, before any model is loaded
    with pytest.raises(SystemExit) as e:
        sft.main(["--data", path, "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")])
    assert str(e.value).startswith(f"{path}:{line}: ") and reason in str(e.value)


def test_empty_or_missing_data(tmp_path, monkeypatch):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(SystemExit, match="empty.jsonl: no records"):
        sft.read_records(empty)
    monkeypatch.chdir(tmp_path)  # no out/toy_sft.jsonl here
    with pytest.raises(SystemExit, match=r"out/toy_sft.jsonl not found: run `python tirgen.py` first"):
        sft.main([])


def run_args(tiny_dir, data, out, *extra, epochs=2):
    return ["--data", data, "--model", tiny_dir, "--out", out, "--epochs", str(epochs), "--batch-size", "4",
            "--lr", "1e-3", "--eval-n", "0", "--eval-every", "0", *extra]


def weights(m):
    """Full weights of a (sharded) model, by HF name."""
    return {k: v.clone() for k, v in model.full_params(m)}


def test_loss_goes_down_and_resume_is_exact(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", toy_records(24))
    m, s = sft.main(run_args(tiny_dir, data, str(tmp_path / "a")))
    assert s["steps"] == 12 and s["heldout_loss"] < s["first_heldout_loss"] - 0.5
    full = weights(m)
    reloaded, _ = model.load(str(tmp_path / "a"))
    assert all(torch.equal(v, full[k]) for k, v in weights(reloaded).items())
    # interrupted after 5 steps, then resumed: the same weights as the uninterrupted run
    _, s = sft.main(run_args(tiny_dir, data, str(tmp_path / "b"), "--max-steps", "5"))
    assert s["steps"] == 5 and os.path.exists(tmp_path / "b" / sft.STATE)
    m, s = sft.main(run_args(tiny_dir, data, str(tmp_path / "b"), "--resume"))
    assert s["steps"] == 12
    resumed = weights(m)
    assert all(torch.allclose(v, resumed[k], rtol=0, atol=1e-6) for k, v in full.items())


def test_eval_only_reports_solve_rate(tiny_dir):
    _, s = sft.main(["--eval-only", "--model", tiny_dir, "--eval-n", "2", "--max-new-tokens", "8",
                     "--eval-data", os.path.join(ROOT, "data", "toy_test.jsonl")])
    assert s["eval"]["n"] == 2 and 0.0 <= s["eval"]["accuracy"] <= 1.0
