"""
Host memory of per-token logprobs at a large vocabulary: model.logprobs (the output head taken
`--chunk` positions at a time, each slice recomputed in backward) against the unchunked reference
it replaced, which makes the fp32 logits of the whole batch:

    logits = model(...).logits[:, :-1].float(); lp = log_softmax(logits / T, -1).gather(-1, ids[:, 1:, None])[..., 0]

A randomly initialised Qwen2-style model is built in memory (2 layers, hidden 256, Qwen's 152064-token
vocabulary, untied head, fp32, CPU). Each variant runs one forward + backward of -(lp.sum()) in a fresh
subprocess, so one peak cannot hide the other: peak = ru_maxrss after the backward minus the RSS just
before the forward. The two must agree: max |difference| of the logprobs and of every parameter's
gradient are printed. Also printed: the analytic 12 bytes x vocab x tokens of the whole logits with
their gradient (model.memory_plan's figure), and as the LAST line
`peak_ratio_unchunked_vs_chunked: X`.

    python bench/logprob_memory.py                   # about a minute on 2 cores, ~8 GiB of RAM
    python bench/logprob_memory.py --seq 8192 --chunk 256
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402

# fp32 throughout, so the two differ only in summation order (the head's gradient is accumulated slice
# by slice): observed 0 on the logprobs and ~2e-8 of the largest gradient entry, far under these bounds.
# The gradient's bound is relative: summed over every token, its entries reach ~1e2.
LP_TOL, GRAD_REL_TOL = 1e-4, 1e-6


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(args):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=args.seq, tie_word_embeddings=False)
    torch.manual_seed(0)  # both subprocesses build the same weights and ids
    m = Qwen2ForCausalLM(cfg)
    m.train()
    return m, torch.randint(0, args.vocab, (args.batch, args.seq))


def reference(m, ids, temperature):
    """The unchunked way, (B, T - 1): all fp32 logits at once."""
    attn = torch.ones_like(ids)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = m(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]


def worker(args):
    """One variant in this (fresh) process; writes its peak, time, logprobs and gradients to --out."""
    m, ids = build(args)
    rss0, hwm0 = rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    t0 = time.perf_counter()
    if args.worker == "unchunked":
        lp = reference(m, ids, args.temperature)
    else:  # column 0 (no preceding token) is a pad: drop it to line up with the reference
        lp = model.logprobs(m, ids, temperature=args.temperature, chunk=args.chunk)[:, 1:]
    (-(lp.sum())).backward()
    seconds = time.perf_counter() - t0
    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # A high-water mark set before the forward (building the model) would be read as the forward's own.
    assert hwm > hwm0, "the forward + backward never passed the pre-forward peak: its peak is unmeasured"
    torch.save(dict(peak=hwm - rss0, seconds=seconds, lp=lp.detach(),
                    grads={n: p.grad for n, p in m.named_parameters()}), args.out)


def run(args, variant, out):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--out", out,
           "--vocab", str(args.vocab), "--seq", str(args.seq), "--batch", str(args.batch),
           "--hidden", str(args.hidden), "--layers", str(args.layers), "--chunk", str(args.chunk),
           "--temperature", str(args.temperature)]
    subprocess.run(cmd, check=True)
    return torch.load(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=152064, help="vocabulary (Qwen2.5's by default)")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=1, help="sequences per forward pass")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--chunk", type=int, default=model.LOGPROB_CHUNK, help="positions per slice in model.logprobs")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--worker", choices=["unchunked", "chunked"], help=argparse.SUPPRESS)  # set by run()
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory() as tmp:
        res = {v: run(args, v, os.path.join(tmp, v + ".pt")) for v in ("unchunked", "chunked")}
    tokens = args.batch * args.seq
    print(f"Qwen2-style model: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, untied head, fp32, CPU; "
          f"{args.batch} x {args.seq} tokens, chunk {args.chunk}, {torch.get_num_threads()} threads")
    print(f"  {'variant':<10} {'peak GiB':>9} {'fwd+bwd s':>10}")
    for v, r in res.items():
        print(f"  {v:<10} {r['peak'] / model.GiB:9.2f} {r['seconds']:10.1f}")
    a, b = res["unchunked"], res["chunked"]
    lp_diff = (a["lp"] - b["lp"]).abs().max().item()
    grad_diff = max((a["grads"][n] - b["grads"][n]).abs().max().item() for n in a["grads"])
    grad_max = max(g.abs().max().item() for g in a["grads"].values())
    print(f"same logprobs: max |diff| {lp_diff:.2e} (tolerance {LP_TOL:.0e}); same gradients: max |diff| "
          f"{grad_diff:.2e} over {len(a['grads'])} parameters, largest |grad| {grad_max:.2e} "
          f"(tolerance {GRAD_REL_TOL:.0e} x largest)")
    assert lp_diff <= LP_TOL and grad_diff <= GRAD_REL_TOL * grad_max, "chunked logprobs differ from the reference"
    print(f"analytic 12 B x vocab x tokens (whole logits + gradient): {12 * args.vocab * tokens / model.GiB:.2f} GiB; "
          f"measured unchunked - chunked: {(a['peak'] - b['peak']) / model.GiB:.2f} GiB "
          f"({(a['peak'] - b['peak']) / (args.vocab * tokens):.1f} B x vocab x tokens)")
    print(f"peak_ratio_unchunked_vs_chunked: {a['peak'] / b['peak']:.2f}")


if __name__ == "__main__":
    main()
