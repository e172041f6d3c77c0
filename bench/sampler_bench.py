"""
Sampler throughput: model.rollout's KV-cached sampler vs HF `generate` (with its cache) vs a naive
no-cache loop, greedy, batch 16, on the tiny model and on a ~100M-parameter random Llama.

    python bench/sampler_bench.py                 # CPU, both models
    python bench/sampler_bench.py --device cuda   # where a GPU is lent

Every figure is measured in this one run. The naive loop re-runs the whole sequence at each step,
so it gets slower as the sequence grows; on the 100M model it is timed over its first
--naive-tokens tokens only, which flatters it (its tokens/s over 256 tokens would be lower). The
last line is `speedup_vs_hf_generate: <x>` for the ~100M model.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402


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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--naive-tokens", type=int, default=32, help="tokens the no-cache loop runs on the 100M model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
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
    print(f"device {args.device}, batch {args.batch}, {args.new_tokens} new tokens, greedy; tokens/s")
    print(f"{'model':<6}{'params':>9}{'ours':>10}{'hf_generate':>13}{'no_cache':>10}{'vs_hf':>8}{'vs_no_cache':>13}")
    for name, n_params, ours, hf, naive in rows:
        print(f"{name:<6}{n_params:>8.1f}M{ours:>10.1f}{hf:>13.1f}{naive:>10.1f}{ours / hf:>8.2f}{ours / naive:>13.1f}")
    print(f"speedup_vs_no_cache: {rows[1][2] / rows[1][4]:.2f}")
    print(f"speedup_vs_hf_generate: {rows[1][2] / rows[1][3]:.2f}")


if __name__ == "__main__":
    main()
