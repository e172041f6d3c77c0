"""
Sampler throughput, every figure measured in this one run.

Without --model: model.rollout's KV-cached sampler vs HF `generate` (with its cache) vs a naive
no-cache loop, greedy, batch 16, on the tiny model and on a ~100M-parameter random Llama (first: one
sampling step, torch.multinomial vs model.sample_token, at the tiny and at SmolLM2's vocabulary). The naive
loop re-runs the whole sequence at each step, so it gets slower as the sequence grows; on the 100M
model it is timed over its first --naive-tokens tokens only, which flatters it. The last line is
`speedup_vs_hf_generate: <x>` for the ~100M model.

With --model DIR (a real instruct model, e.g. SmolLM2-135M-Instruct), on GSM8K problems with the chat
template, greedy, every rollout started with one line of code in a ```python block (the model closes
it, the sandbox runs it, generation resumes after the output):
  1. tokens/s of our sampler, HF `generate` (which cannot run tools: it just continues) and vLLM
     (skipped where vLLM is not installed), sampled tokens over wall time less the tool seconds;
  2. vLLM's weight-sync routes: streamed `VLLM.sync_weights`, saving the model dir + `reload_weights`
     from it, and saving + starting a new engine (its start time measured at step 1);
  3. one RL iteration per engine (`rl.py --iterations 1` in a subprocess): rollout / tools / update.

    python bench/sampler_bench.py                 # CPU, both random models
    python bench/sampler_bench.py --device cuda   # where a GPU is lent
    VLLM_CPU_KVCACHE_SPACE=2 OMP_NUM_THREADS=2 /work/venv-vllm/bin/python bench/sampler_bench.py --model /work/models/smollm2
"""
import argparse
import os
import re
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
from rl import TimedSandbox  # noqa: E402  (rl.py times its rollouts' tool share with it too)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NoTools:
    """Random models never close a code block; fail loudly if one does."""

    def run_many(self, codes):
        raise AssertionError("unexpected tool call in a benchmark")


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def bench(m, tok, prompts, new_tokens, naive_tokens, device):
    B = len(prompts)
    pad = tok.pad_token_id
    L = max(map(len, prompts))
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts], device=device)
    attn = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)
    eos = m.generation_config.eos_token_id
    m.generation_config.eos_token_id = None  # all three run the full length
    ours = lambda: M.rollout(m, tok, prompts, NoTools(), max_new_tokens=new_tokens, temperature=0)
    hf = lambda: m.generate(ids, attention_mask=attn, do_sample=False, max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, pad_token_id=pad, use_cache=True)

    @torch.no_grad()
    def naive():
        x, a = ids, attn
        for _ in range(naive_tokens):
            logits = m(input_ids=x, attention_mask=a, position_ids=(a.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
            x = torch.cat([x, logits.argmax(-1, keepdim=True)], 1)
            a = torch.cat([a, torch.ones_like(a[:, :1])], 1)
        return x

    ours()  # warm-up (allocator, kernels)
    rs, t_ours = timed(ours, device)
    assert all(len(r.response_ids) == new_tokens for r in rs), "a row stopped early"
    _, t_hf = timed(hf, device)
    _, t_naive = timed(naive, device)
    m.generation_config.eos_token_id = eos
    return B * new_tokens / t_ours, B * new_tokens / t_hf, B * naive_tokens / t_naive


def sampling_speed(device, rows=250, vocabs=(1602, 49152), reps=20):
    """ms per sampling step of `rows` rows, T = 1: torch.multinomial (an exponential per vocabulary entry)
    vs model.sample_token (inverse CDF: one uniform per row)."""
    out = []
    for vocab in vocabs:
        logits = torch.randn(rows, vocab, device=device) * 3
        gen = torch.Generator(device=device).manual_seed(0)
        mult = lambda: torch.multinomial(logits.softmax(-1), 1, generator=gen)
        cdf = lambda: M.sample_token(logits, 1.0, 0, 1.0, gen)  # + the logprobs the sampler records
        mult(), cdf()  # warm-up
        t_mult = timed(lambda: [mult() for _ in range(reps)], device)[1]
        t_cdf = timed(lambda: [cdf() for _ in range(reps)], device)[1]
        out.append((vocab, 1e3 * t_mult / reps, 1e3 * t_cdf / reps))
    return out


# -----------------------------------------------------------------------------
# --model DIR: a real model, tool calls in the rollouts, three engines, weight sync, an RL iteration

def tool_prefix(tok, problem):
    """A response start with one line of code on the problem's first two numbers: the model closes the
    block, the sandbox runs it (a bare ```python opening was not closed within 64 tokens by SmolLM2)."""
    a, b = (re.findall(r"\d+", problem) + ["2", "3"])[:2]
    return tok.encode(f"Let me compute it with Python.\n```python\nprint({a} * {b})\n", add_special_tokens=False)


def rollout_speed(engine, tok, prompts, prefixes, sb, new_tokens):
    """(tokens/s of sampled tokens over wall time less tool time, tool calls, tool seconds)."""
    sb.seconds = 0.0
    t = time.perf_counter()
    rs = M.rollout(engine, tok, prompts, sb, prefixes=prefixes, max_new_tokens=new_tokens, temperature=0)
    wall = time.perf_counter() - t
    return sum(r.generated for r in rs) / (wall - sb.seconds), sum(r.tool_calls for r in rs), sb.seconds


def rl_iteration(args, engine):
    """One rl.py iteration in a subprocess -> its logged (rollout, tools, update) seconds."""
    import json
    import subprocess
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "rl.py", "--model", args.model, "--data", args.data, "--template", "chat", "--engine", engine,
               "--out", os.path.join(d, "rl"), "--group-size", "4", "--batch-problems", "2", "--iterations", "1",
               "--updates-per-batch", "1", "--max-new-tokens", str(args.new_tokens), "--max-refills", "0", "--save-every", "0",
               "--no-dynamic-sampling", "--keep-unboxed", "--keep-failed-episodes"]  # every rollout is trained on
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rec = json.loads(open(os.path.join(d, "rl", "log.jsonl")).readlines()[-1])
    return rec["s_rollout"], rec["s_tool"], rec["s_update"]


def real_model(args):
    import importlib.util
    import rewards
    from sandbox import Sandbox
    m, tok = M.load(args.model, device=args.device)
    problems = [p["problem"] for p in rewards.read_problems(args.data)[:args.batch]]
    prompts = [M.encode_prompt(tok, p, "chat") for p in problems]
    prefixes = [tool_prefix(tok, p) for p in problems]
    has_vllm = importlib.util.find_spec("vllm") is not None
    print(f"{args.model}: {len(prompts)} GSM8K problems, greedy, {args.new_tokens} new tokens, a forced tool call each")
    with Sandbox(workers=2) as raw:
        sb = TimedSandbox(raw)
        rollout_speed(m, tok, prompts[:2], prefixes[:2], sb, 16)  # warm-up (allocator, kernels, sandbox workers)
        rows = [("ours", *rollout_speed(m, tok, prompts, prefixes, sb, args.new_tokens))]
        ids = [p + q for p, q in zip(prompts, prefixes)]
        L = max(map(len, ids))
        x = torch.tensor([[tok.pad_token_id] * (L - len(p)) + p for p in ids], device=args.device)
        attn = (torch.arange(L, device=args.device)[None] >= torch.tensor([L - len(p) for p in ids], device=args.device)[:, None]).long()
        (out, t) = timed(lambda: m.generate(x, attention_mask=attn, do_sample=False, max_new_tokens=args.new_tokens,
                                            pad_token_id=tok.pad_token_id), args.device)
        n_hf = int(((out[:, L:] != tok.pad_token_id).sum()))
        rows.append(("hf_generate", n_hf / t, 0, 0.0))
        if has_vllm:
            t0 = time.perf_counter()
            engine = M.VLLM(args.model, seed=0)
            t_start = time.perf_counter() - t0
            rollout_speed(engine, tok, prompts[:2], prefixes[:2], sb, 16)
            rows.append(("vllm", *rollout_speed(engine, tok, prompts, prefixes, sb, args.new_tokens)))
    print(f"{'engine':<12}{'tokens/s':>10}{'vs ours':>9}{'tool calls':>12}{'tool s':>8}")
    for name, tps, calls, tool_s in rows:
        print(f"{name:<12}{tps:>10.1f}{tps / rows[0][1]:>9.2f}{calls:>12}{tool_s:>8.1f}")
    if has_vllm:
        engine.sync_weights(m.state_dict().items())  # warm-up: the first reload pays one-time costs
        t0 = time.perf_counter()
        n = engine.sync_weights(m.state_dict().items())
        t_stream = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            M.save(m, tok, d)
            t_save = time.perf_counter() - t0
            engine.llm.collective_rpc("reload_weights", kwargs=dict(weights_path=d))
            t_disk = time.perf_counter() - t0
        print(f"vLLM weight sync, seconds: streamed sync_weights ({n} tensors) {t_stream:.2f} | save + reload_weights "
              f"from the dir {t_disk:.2f} | save + new engine {t_save + t_start:.1f} (start {t_start:.1f})")
    print(f"one RL iteration (rl.py, G=4, 2 problems, {args.new_tokens} new tokens), seconds rollout / tools / update:")
    for engine in ["hf"] + ["vllm"] * has_vllm:
        print(f"  --engine {engine:<5} " + " / ".join(f"{x:.1f}" for x in rl_iteration(args, engine)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="a real model dir: tool-integrated rollouts, ours vs HF generate vs vLLM, weight sync, RL split")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "gsm8k_train.jsonl"), help="problems for --model")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--naive-tokens", type=int, default=32, help="tokens the no-cache loop runs on the 100M model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        return real_model(args)
    from transformers import LlamaConfig, LlamaForCausalLM
    with tempfile.TemporaryDirectory() as d:
        tiny_dir = M.build_tiny(os.path.join(d, "tiny"), pretrain_steps=0)
        tiny, tok = M.load(tiny_dir, device=args.device)
    problems = [f"A warehouse has {1000 + 37 * i} crates with {10 + i} bolts in each crate. How many bolts?" for i in range(args.batch)]
    prompts = [tok.encode(q, add_special_tokens=False)[: 12 + i] for i, q in enumerate(problems)]  # ragged: left padding
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2304, num_hidden_layers=14,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    big = LlamaForCausalLM(cfg).to(device=args.device, dtype=dtype).eval()
    rows = []
    for name, m, naive_tokens in [("tiny", tiny, args.new_tokens), ("100M", big, args.naive_tokens)]:
        n_params = sum(x.numel() for x in m.parameters()) / 1e6
        ours, hf, naive = bench(m, tok, prompts, args.new_tokens, naive_tokens, args.device)
        rows.append((name, n_params, ours, hf, naive))
    for vocab, t_mult, t_cdf in sampling_speed(args.device):
        print(f"sampling 250 rows x {vocab} tokens: torch.multinomial {t_mult:.2f} ms, sample_token {t_cdf:.2f} ms "
              f"({t_mult / t_cdf:.1f}x)")
    print(f"device {args.device}, batch {args.batch}, {args.new_tokens} new tokens, greedy; tokens/s")
    print(f"{'model':<6}{'params':>9}{'ours':>10}{'hf_generate':>13}{'no_cache':>10}{'vs_hf':>8}{'vs_no_cache':>13}")
    for name, n_params, ours, hf, naive in rows:
        print(f"{name:<6}{n_params:>8.1f}M{ours:>10.1f}{hf:>13.1f}{naive:>10.1f}{ours / hf:>8.2f}{ours / naive:>13.1f}")
    print(f"speedup_vs_no_cache: {rows[1][2] / rows[1][4]:.2f}")
    print(f"speedup_vs_hf_generate: {rows[1][2] / rows[1][3]:.2f}")


if __name__ == "__main__":
    main()
