"""model.py's vLLM row bookkeeping without vLLM: a fake engine with `VLLM.generate`'s contract.

A chat model often ends its turn with an end token that is not `tok.eos_token_id` (SmolLM2 and
Qwen end on <|im_end|>, listed in generation_config.json). The HF sampler stops on every id in
`model.eos_ids`; the vLLM path must too, and must never leave an end token inside a response."""
from types import SimpleNamespace

from transformers import GenerationConfig

import model


class FakeVLLM(model.VLLM):
    """vLLM's `generate` contract, greedy on a scripted response text: a request stops right after a
    stop token (vLLM adds the generation config's end tokens to the request's `stop_token_ids`; the
    token stays in `token_ids`, finish_reason "stop", stop_reason the id, None for the tokenizer's
    eos), after the token that completes a stop string (stop_reason the string), or at max_tokens."""

    def __init__(self, tok, script, end_tokens):
        self.tok, self.script, self.requests = tok, script, []
        self.generation_config = GenerationConfig(eos_token_id=end_tokens)

    def generate(self, prompts, params):
        outs = []
        for ids, p in zip(prompts, params):
            self.requests.append(p)
            response = self.tok.decode(ids).partition("Assistant:\n")[2]
            assert self.script.startswith(response), "the engine was given a response it did not write"
            stops = set(p.get("stop_token_ids", ())) | set(self.generation_config.eos_token_id)
            out, finish, reason = [], "length", None
            for t in self.tok.encode(self.script[len(response):], add_special_tokens=False)[:p["max_tokens"]]:
                out.append(t)
                if t in stops:
                    finish, reason = "stop", None if t == self.tok.eos_token_id else t
                    break
                if any(s in self.tok.decode(out) for s in p["stop"]):
                    finish, reason = "stop", next(s for s in p["stop"] if s in self.tok.decode(out))
                    break
            outs.append(SimpleNamespace(token_ids=out, logprobs=[{t: SimpleNamespace(logprob=-0.5)} for t in out],
                                        finish_reason=finish, stop_reason=reason))
        return outs


def test_vllm_rows_stop_on_a_generation_config_end_token(tiny_dir, sandbox):
    tok = model.load(tiny_dir)[1]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end != tok.eos_token_id
    script = ("Let me compute.\n```python\nprint(6*7)\n```" + model.observation_text("42")
              + "So \\boxed{42}.<|im_end|>\nand then more<|endoftext|>")
    engine = FakeVLLM(tok, script, [tok.eos_token_id, im_end])
    prompt = model.encode_prompt(tok, "What is 6 * 7?")
    r = model.rollout(engine, tok, [prompt], sandbox, max_new_tokens=200, temperature=0)[0]
    assert r.tool_calls == 1 and r.calls[0].ok
    assert r.finish == "eos" and r.response_ids[-1] == im_end
    assert not {tok.eos_token_id, im_end} & set(r.response_ids[:-1]), "an end token inside the response"
    assert r.text.endswith("So \\boxed{42}.<|im_end|>")
    assert all(im_end in p["stop_token_ids"] and tok.eos_token_id in p["stop_token_ids"] for p in engine.requests)
    ours = model.rollout(engine, tok, [prompt], sandbox, max_new_tokens=5, temperature=0)[0]
    assert ours.finish == "length" and len(ours.response_ids) == 5


CALL = "Let me compute.\n```python\nprint(6*7)\n```"


def test_vllm_rows_budget_stops_inside_tool_output(tiny_dir, sandbox):
    """The budget counts tool output: a row that reaches it while its observation is pushed stops there."""
    tok = model.load(tiny_dir)[1]
    engine = FakeVLLM(tok, CALL + model.observation_text("42") + "So \\boxed{42}.<|endoftext|>", [tok.eos_token_id])
    prompt = model.encode_prompt(tok, "What is 6 * 7?")
    whole = model.rollout(engine, tok, [prompt], sandbox, max_new_tokens=200, temperature=0)[0]
    budget = whole.calls[0].end + 3
    r = model.rollout(engine, tok, [prompt], sandbox, max_new_tokens=budget, temperature=0)[0]
    assert r.finish == "length" and r.response_ids == whole.response_ids[:budget]


def test_vllm_rows_an_opening_fence_costs_no_round(tiny_dir, sandbox):
    """One request runs to the closing fence (the opening ```python does not stop it), one more to the end."""
    tok = model.load(tiny_dir)[1]
    engine = FakeVLLM(tok, CALL + model.observation_text("42") + "So \\boxed{42}.<|endoftext|>", [tok.eos_token_id])
    r = model.rollout(engine, tok, [model.encode_prompt(tok, "What is 6 * 7?")], sandbox, max_new_tokens=200,
                      temperature=0)[0]
    assert r.tool_calls == 1 and r.calls[0].ok and r.finish == "eos"
    assert len(engine.requests) == 2 and engine.requests[1]["stop"] == ["```\n"]


def test_vllm_rows_seeds_are_distinct_across_rows_and_rounds(tiny_dir, sandbox):
    tok = model.load(tiny_dir)[1]
    # a fence without a language stops a request (and runs nothing): three rounds per row
    engine = FakeVLLM(tok, "```\nx\n```\nSo \\boxed{1}.<|endoftext|>", [tok.eos_token_id])
    rs = model.rollout(engine, tok, [model.encode_prompt(tok, "hi")], sandbox, n=1100, max_new_tokens=100, seed=7)
    assert all(r.finish == "eos" for r in rs)
    seeds = [p["seed"] for p in engine.requests]
    assert len(seeds) == 3 * 1100 and len(set(seeds)) == len(seeds)
