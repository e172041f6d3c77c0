"""Opt-in: model.py's vLLM path against the reference KV-cached sampler, on a real vLLM engine.
Skipped where vLLM is not installed; on a CPU run it in the vllm-cpu environment
(docs/sampler.md, "A CPU environment for vLLM"):
`VLLM_CPU_KVCACHE_SPACE=2 /work/venv-vllm/bin/python -m pytest -q tests/test_vllm.py`.
1. greedy rollouts give the same tokens as ours;
2. weight sync: after an optimizer step on the policy, `sync_weights` makes the engine's greedy
   rollouts equal the HF sampler's rollouts of the updated policy (and they differ from the old ones);
3. weight sync by log-probabilities on the tied-embedding tiny model: vLLM's prompt logprobs equal
   `model.logprobs` of the policy just synced within 1e-4 (fp32; ~1e-6 seen), before and after a step;
4. many seeded rows, more prompt tokens than one engine step takes, reproduce with the same seed."""
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


def vllm_prompt_logprobs(engine, ids):
    """vLLM's log-probability of each token of `ids` given the ones before it (column 0 is 0, as in
    `model.logprobs`): one prefill, prompt_logprobs=0 (the token's own logprob only)."""
    from vllm import SamplingParams
    out = engine.llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0),
                              use_tqdm=False)[0]
    assert out.prompt_logprobs[0] is None
    return torch.tensor([0.0] + [d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:])])


LOGPROB_TOL = 1e-4  # fp32 on both sides (a CPU engine runs fp32): max |vLLM - HF| per token


def test_weight_sync_logprobs_tied(tiny_dir, engine):
    """Weight sync measured by log-probabilities, on a model with tied embeddings (the sync must reach
    the embedding and the output head through one tensor). Independent of test order: the engine is
    first synced to the checkpoint, then to one optimizer step away from it."""
    m, tok = model.load(tiny_dir)
    assert m.config.tie_word_embeddings and m.get_output_embeddings().weight is m.get_input_embeddings().weight
    ids = model.encode_prompt(tok, PROBLEMS[0]) + tok.encode("```python\nprint((7 - 1) / 3)\n```",
                                                             add_special_tokens=False)
    with torch.no_grad():
        before = model.logprobs(m, torch.tensor([ids]))[0]
    assert engine.wake_and_sync(m.state_dict().items()) == len(m.state_dict())
    got = vllm_prompt_logprobs(engine, ids)
    assert (got - before).abs().max() < LOGPROB_TOL
    # one AdamW step on the sequence's NLL (the tied embedding/head included)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    (-model.logprobs(m, torch.tensor([ids]))[:, 1:].mean()).backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        after = model.logprobs(m, torch.tensor([ids]))[0]
    assert (after - before).abs().max() > 100 * LOGPROB_TOL, ("the update barely moved the logprobs: "
                                                               "the test could not fail")
    engine.sleep()
    assert engine.wake_and_sync(m.state_dict().items()) == len(m.state_dict())
    got = vllm_prompt_logprobs(engine, ids)
    assert (got - after).abs().max() < LOGPROB_TOL
    assert (got - before).abs().max() > 100 * LOGPROB_TOL
    # leave the engine on the checkpoint's weights, as test_vllm_matches_hf_greedy expects of it
    engine.wake_and_sync(model.load(tiny_dir)[0].state_dict().items())


def test_many_seeded_rows_reproduce(tiny_dir, sandbox, engine):
    """144 seeded rows whose prompts together exceed vLLM's default step budget (4,096 tokens): on a CPU
    each prompt is prefilled whole (a split prefill rewinds a seeded generator, which vllm-cpu cannot
    do), and the same seed gives the same samples."""
    tok = model.load(tiny_dir)[1]
    prompts = [model.encode_prompt(tok, p) for p in PROBLEMS]
    assert 48 * sum(map(len, prompts)) > 4096
    runs = [model.rollout(engine, tok, prompts, sandbox, n=48, max_new_tokens=8, temperature=1.0,
                          seed=3) for _ in range(2)]
    assert [r.response_ids for r in runs[0]] == [r.response_ids for r in runs[1]]
    assert len({tuple(r.response_ids) for r in runs[0]}) > 1
