"""model.py: the KV-cached sampler against HF generate, masks, tool calls, finish reasons,
continuation, stop-after-call, and self-correction on a scripted policy."""
import torch
from transformers import LlamaConfig

import model


class ScriptedLM(torch.nn.Module):
    """A test double with the HF causal-LM interface whose next token follows a text script.

    It stores token ids in the KV cache (as 1-d "keys"), so it sees exactly the context the sampler
    keeps: rolled-back or padded columns are hidden by the attention mask as in a real model.
    `policy(prompt, response, attempt)` returns the full response text the model intends to write
    (the response so far is its prefix, except while tool output is being forced); `attempt` counts
    rollbacks seen for that prompt."""

    def __init__(self, tok, policy):
        super().__init__()
        self.tok, self.policy = tok, policy
        self.config = LlamaConfig(num_hidden_layers=1)  # the sampler sizes its KV cache from the config
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.attempt, self.last_len = {}, {}

    @property
    def device(self):
        return self.dummy.device

    def read_context(self, input_ids, attention_mask, past_key_values):
        """Store this step's ids in the cache; return zero logits and each row's visible context
        (text, token count)."""
        kv = input_ids[:, None, :, None].float()
        keys, _ = past_key_values.update(kv, kv, 0)
        ids, live = keys[:, 0, :, 0].long(), attention_mask.bool()
        rows = [(self.tok.decode(ids[b][live[b]].tolist()), int(live[b].sum())) for b in range(ids.size(0))]
        return torch.zeros(input_ids.size(0), 1, len(self.tok)), rows

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0):
        logits, rows = self.read_context(input_ids, attention_mask, past_key_values)
        for b, (text, n) in enumerate(rows):
            prompt, _, response = text.partition("Assistant:\n")
            prompt += "Assistant:\n"
            if n < self.last_len.get(prompt, 0):   # the sampler rolled this row back
                self.attempt[prompt] = self.attempt.get(prompt, 0) + 1
            self.last_len[prompt] = n
            intended = self.policy(prompt, response, self.attempt.get(prompt, 0))
            # while the sampler feeds forced tool output the script is not consulted
            rest = intended[len(response):] if intended.startswith(response) else ""
            nxt = self.tok.encode(rest, add_special_tokens=False)[0] if rest else self.tok.eos_token_id
            logits[b, 0, nxt] = 30.0
        return type("Out", (), {"logits": logits})()


def prompts_for(tok, problems):
    return [model.encode_prompt(tok, p) for p in problems]


def test_greedy_matches_hf_generate(tiny_dir, sandbox):
    m, tok = model.load(tiny_dir)
    problems = ["Solve 3*x + 1 = 7 for x.",
                "A farm sold 1, 2 and 3 eggs on three days. How many eggs did it sell in total?", "hi"]
    prompts = prompts_for(tok, problems)
    ours = model.rollout(m, tok, prompts, sandbox, max_new_tokens=24, temperature=0)
    for p, r in zip(prompts, ours):  # one prompt at a time: no padding on the reference side
        ref = m.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                         max_new_tokens=24, pad_token_id=tok.pad_token_id)[0, len(p):].tolist()
        assert r.response_ids == ref[:len(r.response_ids)]
        assert r.finish in ("length", "eos")


def test_sampled_logprobs_equal_full_forward(tiny_dir, sandbox):
    m, tok = model.load(tiny_dir)
    prompts = prompts_for(tok, ["Solve 3*x + 1 = 7 for x.", "hi there"])
    rs = model.rollout(m, tok, prompts, sandbox, n=2, max_new_tokens=16, temperature=0.7, seed=1)
    for r in rs:
        ids = torch.tensor([r.prompt_ids + r.response_ids])
        lp = model.logprobs(m, ids, temperature=0.7)[0, len(r.prompt_ids):]
        assert torch.allclose(lp, torch.tensor(r.logprobs), atol=1e-4)


def test_first_token_differs_across_samples_and_seed_reproduces(tiny_dir, sandbox):
    m, tok = model.load(tiny_dir)
    prompt = prompts_for(tok, ["hi"])
    a = model.rollout(m, tok, prompt, sandbox, n=16, max_new_tokens=4, temperature=1.0, seed=3)
    assert len({r.response_ids[0] for r in a}) > 1   # each row samples its own first token
    b = model.rollout(m, tok, prompt, sandbox, n=16, max_new_tokens=4, temperature=1.0, seed=3)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]


def test_sample_token_follows_the_distribution_and_masks():
    """Inverse-CDF sampling draws each token with its softmax(logits / T) probability (a chi-square
    bound over 20,000 draws) and never a token that top-k or top-p masked."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -30.0, 0.5])
    R, T = 20000, 0.8
    ids, lps = model.sample_token(logits.repeat(R, 1), T, 0, 1.0, gen)
    p = (logits / T).softmax(-1)
    counts = torch.bincount(ids, minlength=len(logits)).double()
    chi2 = (((counts - R * p) ** 2) / (R * p).clamp(min=1e-9))[p > 1e-6].sum()
    assert chi2 < 25.7  # 99.99th percentile of chi-square with 4 degrees of freedom (5 live tokens)
    assert torch.allclose(lps, p.log()[ids].float(), atol=1e-5)
    top2, _ = model.sample_token(logits.repeat(R, 1), 1.0, 2, 1.0, gen)
    assert set(top2.tolist()) == {0, 1}
    nucleus, _ = model.sample_token(logits.repeat(R, 1), 1.0, 0, 0.5, gen)  # token 0 alone has 0.55
    assert set(nucleus.tolist()) == {0}


def code_policy(codes, answer="\\boxed{42}"):
    """Writes one code block per entry of `codes` (an attempt index picks the code), then answers."""
    def policy(prompt, response, attempt):
        code = codes[min(attempt, len(codes) - 1)]
        text = "Let me compute.\n```python\n" + code + "\n```"
        if response.startswith(text) and "```output" in response:
            if "\n```\n" not in response[response.index("```output"):]:
                return text  # tool output still being forced
            obs_end = response.index("\n```\n", response.index("```output")) + len("\n```\n")
            return response[:obs_end] + "So " + answer + "."
        return text
    return policy


def test_tool_output_is_forced_with_mask_zero(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    m = ScriptedLM(tok, code_policy(["print(6*7)"]))
    r = model.rollout(m, tok, prompts_for(tok, ["q1"]), sandbox, max_new_tokens=200, temperature=0)[0]
    assert r.finish == "eos" and r.tool_calls == 1 and r.calls[0].ok
    obs_ids = tok.encode(model.observation_text("42"), add_special_tokens=False)
    end = r.calls[0].end
    assert r.response_ids[end:end + len(obs_ids)] == obs_ids
    assert r.mask[end:end + len(obs_ids)] == [0] * len(obs_ids)
    assert all(r.mask[:end]) and all(r.mask[end + len(obs_ids):])
    assert r.text.endswith("So \\boxed{42}.<|endoftext|>")
    assert "print(6*7)" == r.calls[0].code.strip()
    assert tok.decode(r.response_ids[r.calls[0].start:r.calls[0].end]).startswith("```python")


def test_failing_code_gets_error_observation(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    m = ScriptedLM(tok, code_policy(["print(1/0)"]))
    r = model.rollout(m, tok, prompts_for(tok, ["q2"]), sandbox, max_new_tokens=200, temperature=0)[0]
    assert r.tool_calls == 1 and r.tool_errors == 1
    assert "```output\nZeroDivisionError: division by zero\n```" in r.text


def test_finish_reasons_length_and_tool_budget(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    m = ScriptedLM(tok, code_policy(["print(1)"]))
    r = model.rollout(m, tok, prompts_for(tok, ["q3"]), sandbox, max_new_tokens=5, temperature=0)[0]
    assert r.finish == "length" and len(r.response_ids) == 5
    r = model.rollout(m, tok, prompts_for(tok, ["q4"]), sandbox, max_new_tokens=200, temperature=0, max_tool_calls=0)[0]
    assert r.finish == "tool_budget" and r.tool_calls == 0


def test_stop_after_call_and_prefix_continuation(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    m = ScriptedLM(tok, code_policy(["print(5)"]))
    prefix = tok.encode("Let me ", add_special_tokens=False)
    r = model.rollout(m, tok, prompts_for(tok, ["q5"]), sandbox, max_new_tokens=200, temperature=0,
                      prefixes=[prefix], stop_after_call=True)[0]
    assert r.finish == "stop_after_call" and r.tool_calls == 1 and r.calls[0].ok
    assert r.response_ids[:len(prefix)] == prefix and r.mask[:len(prefix)] == [0] * len(prefix)
    assert r.prefix_len == len(prefix) and all(r.mask[len(prefix):])
    assert r.text.endswith("```") and "```output" not in r.text


def test_self_correction_rolls_back_and_retries(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    # Row A fails once then succeeds; row B fails every time; row C never fails: rows are independent.
    policies = {"qa": ["print(1/0)", "print(7)"], "qb": ["print(undefined)"], "qc": ["print(3)"]}
    m = ScriptedLM(tok, lambda p, r, k: code_policy(next(v for q, v in policies.items() if q in p))(p, r, k))
    rs = model.rollout(m, tok, prompts_for(tok, list(policies)), sandbox, max_new_tokens=300, temperature=0,
                       n_corr=4, l_suf=3, max_tool_calls=10)
    a, b, c = rs
    assert a.corrections == 1 and a.tool_calls == 1 and a.calls[0].ok and "print(1/0)" not in a.text
    # rollback point: the block plus the last l_suf=3 tokens of the reasoning before it
    reasoning = tok.encode("Let me compute.\n", add_special_tokens=False)
    assert a.attempts == [tok.decode(reasoning[-3:]) + "```python\nprint(1/0)\n```"]
    assert a.text.startswith("Let me compute.\n```python\nprint(7)")
    assert b.corrections == 4 and b.tool_calls == 1 and b.tool_errors == 1   # after N_corr, keep the failure
    assert "NameError" in b.text and b.text.endswith("\\boxed{42}.<|endoftext|>")
    assert c.corrections == 0 and c.tool_calls == 1 and c.calls[0].ok
    # every attempt counts against the budget: with 2 calls allowed, one retry then the failure stays
    m2 = ScriptedLM(tok, code_policy(["print(undefined)"]))
    r = model.rollout(m2, tok, prompts_for(tok, ["qd"]), sandbox, max_new_tokens=300, temperature=0,
                      n_corr=4, l_suf=3, max_tool_calls=2)[0]
    assert r.corrections == 1 and r.tool_errors == 1


def test_self_correction_at_the_very_start(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    def policy(prompt, response, attempt):
        code = ["print(1/0)", "print(2)"][min(attempt, 1)]
        text = "```python\n" + code + "\n```"
        tail = response[response.find("```output"):]
        if "```output" in response and "\n```\n" in tail:
            return response[:response.index("\n```\n", response.index("```output")) + 5] + "\\boxed{2}"
        return text
    m = ScriptedLM(tok, policy)
    r = model.rollout(m, tok, prompts_for(tok, ["qe"]), sandbox, max_new_tokens=100, temperature=0, n_corr=2,
                      l_suf=50)[0]
    assert r.corrections == 1 and r.text.startswith("```python\nprint(2)") and r.calls[0].ok


def test_prefix_ending_inside_a_code_block(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    m = ScriptedLM(tok, code_policy(["print(6*7)"]))
    prefix = tok.encode("Let me compute.\n```python\nprint(6", add_special_tokens=False)
    r = model.rollout(m, tok, prompts_for(tok, ["q6"]), sandbox, max_new_tokens=200, temperature=0,
                      prefixes=[prefix])[0]
    assert r.tool_calls == 1 and r.calls[0].ok and r.calls[0].code.strip() == "print(6*7)"
    assert tok.decode(r.response_ids[r.calls[0].start:]).startswith("```python")


def test_chunked_logprobs_equal_whole_logits(tiny_dir):
    """model.logprobs slices the output head (checkpointed chunks of positions): the same log-probs and
    gradients as log-softmax over the whole fp32 logits, to fp32 summation order (atol 1e-5), with left
    padding and a temperature."""
    import torch.nn.functional as F
    m, tok = model.load(tiny_dir)
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (3, 40))
    attn = torch.ones_like(ids)
    attn[0, :5] = 0
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = m(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float() / 0.7
    whole = F.pad(torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0], (1, 0))
    g_whole = torch.autograd.grad(whole.sum(), list(m.parameters()))
    for chunk in (7, 64):   # several slices, and one
        lp = model.logprobs(m, ids, attn, 0.7, chunk=chunk)
        g = torch.autograd.grad(lp.sum(), list(m.parameters()))
        assert torch.allclose(lp, whole, rtol=0, atol=1e-5)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-5) for a, b in zip(g, g_whole))
    assert m(input_ids=ids).logits.shape == (3, 40, len(tok))   # the head is restored after the call


def test_generated_counts_a_replayed_token_once(tiny_dir, sandbox):
    """A rollback whose cut falls inside sampled text replays the last kept token (fed again, not
    sampled again): `generated` counts the tokens the sampler drew, every step's `progress` report summed."""
    _, tok = model.load(tiny_dir)
    m = ScriptedLM(tok, code_policy(["print(1/0)", "print(7)"]))
    drawn = []
    r = model.rollout(m, tok, prompts_for(tok, ["qg"]), sandbox, max_new_tokens=200, temperature=0, n_corr=1, l_suf=2,
                      progress=lambda f, t: drawn.append(t))[0]
    assert r.corrections == 1 and r.calls[0].ok
    assert r.generated == sum(drawn) > sum(r.mask)


class Widths(torch.nn.Module):
    """Records the (rows, positions) of every forward call a model makes."""

    def __init__(self, m):
        super().__init__()
        self.seen = []
        m.register_forward_pre_hook(lambda mod, a, kw: self.seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)


def test_rows_wait_in_a_queue_and_observations_go_in_one_forward(tiny_dir, sandbox, monkeypatch):
    """At most max_rows rows decode at once (the rest enter as rows finish), and tool output is fed in
    one forward: the rollouts are those of one wide batch fed token by token, rollbacks included."""
    _, tok = model.load(tiny_dir)
    codes = {"qa": ["print(1/0)", "print(7)"], "qbb": ["print(2)"], "qccc": ["print(undefined)"], "qd": ["print(4)"],
             "qeeeee": ["print(5)"]}
    def run(**kw):
        m = ScriptedLM(tok, lambda p, r, k: code_policy(next(v for q, v in codes.items() if q + "\n" in p))(p, r, k))
        w = Widths(m)
        rs = model.rollout(m, tok, prompts_for(tok, list(codes)), sandbox, n=2, max_new_tokens=300, temperature=0,
                           n_corr=2, l_suf=3, max_tool_calls=3, **kw)
        return [(r.text, r.mask, r.corrections, r.generated) for r in rs], w.seen
    monkeypatch.setattr(model, "OBS_CHUNK", 1)
    ref, seen_ref = run()
    assert max(rows for rows, _ in seen_ref) == 10 and all(k == 1 for _, k in seen_ref[1:])
    monkeypatch.setattr(model, "OBS_CHUNK", 32)
    got, seen = run(max_rows=3)
    assert got == ref
    assert max(rows for rows, _ in seen) <= 3
    assert max(k for _, k in seen[1:] if k < 20) > 1   # some decoding step fed several forced tokens
    monkeypatch.setattr(model, "REGROUP", 0.0)     # regroup at every finished row: the same rollouts
    assert run(max_rows=4)[0] == ref


def test_queued_rows_and_chunks_keep_the_numbers(tiny_dir, sandbox, monkeypatch):
    """On a real network: rows regrouped out of a queue (right-aligned in a cache of another width) sample
    what one batch samples, and their log-probs agree to fp32 summation order."""
    m, tok = model.load(tiny_dir)
    prompts = prompts_for(tok, ["What is 2+3?", "hi", "A warehouse has 12 crates with 7 bolts each. How many bolts?"])
    monkeypatch.setattr(model, "REGROUP", 0.0)
    budgets = [8, 20, 13]   # rows finish at different steps: kept rows and new ones share a cache
    got = model.rollout(m, tok, prompts, sandbox, n=3, max_new_tokens=budgets, temperature=0.8, seed=5, max_rows=4)
    for b in got:
        full = model.logprobs(m, torch.tensor([b.prompt_ids + b.response_ids]), temperature=0.8)[0, len(b.prompt_ids):]
        assert torch.allclose(torch.tensor(b.logprobs), full, atol=1e-4)
    greedy = [model.rollout(m, tok, prompts, sandbox, n=2, max_new_tokens=budgets, temperature=0,
                            max_rows=w) for w in (6, 4)]
    assert [r.response_ids for r in greedy[0]] == [r.response_ids for r in greedy[1]]


def test_cpu_bf16_training_rule_and_autocast(tiny_dir, tmp_path):
    """The trainer computes in bf16 on a CPU only for a bf16 model dir on a CPU with bf16 kernels (never
    for the tiny model's fp32 dir, never on a GPU, where FSDP2 does it); under it model.logprobs' matmuls
    run in bf16 (the values move) while the weights and their gradients stay fp32 and point the same way."""
    m, tok = model.load(tiny_dir, dtype=torch.float32)
    assert not model.cpu_bf16_training(tiny_dir, "cpu")
    bf16_dir = str(tmp_path / "bf16")
    model.save(m, tok, bf16_dir, dtype=torch.bfloat16)
    assert model.cpu_bf16_training(bf16_dir, "cpu") == model.cpu_has_bf16()
    assert not model.cpu_bf16_training(bf16_dir, "cuda")
    torch.manual_seed(0)
    ids = torch.randint(0, len(tok), (2, 30))
    params = list(m.parameters())
    lp32 = model.logprobs(m, ids)
    g32 = torch.autograd.grad(lp32.sum(), params)
    lp16 = model.logprobs(m, ids, bf16=True)
    g16 = torch.autograd.grad(lp16.sum(), params)
    assert lp16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g16)
    assert not torch.equal(lp16, lp32) and torch.allclose(lp16, lp32, atol=0.1)
    flat = lambda gs: torch.cat([g.flatten() for g in gs])
    assert torch.nn.functional.cosine_similarity(flat(g16), flat(g32), dim=0) > 0.99
