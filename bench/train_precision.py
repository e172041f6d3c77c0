"""
The trainer's forward + backward on a CPU, fp32 against bf16 autocast (model.cpu_bf16_training: what
rl.py and sft.py use for a bf16 model dir on a CPU with bf16 kernels). Both run model.logprobs on the same
fp32 weights and random token ids, -(logprobs.mean()).backward(), alternating, after one warm-up each.
Printed: seconds per pass of each, the largest logprob difference, the cosine between the two gradients
(flattened over all parameters), and as the LAST line `bf16_autocast_speedup: X` (fp32 s / bf16 s).

    python bench/train_precision.py                          # SmolLM2-135M-Instruct (runs/real.py converts it)
    python bench/train_precision.py --model DIR --batch 8 --seq 200 --threads 2
"""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.path.join(ROOT, "out", "smollm2"), help="model dir (default: SmolLM2)")
    p.add_argument("--batch", type=int, default=8, help="sequences per pass")
    p.add_argument("--seq", type=int, default=200, help="tokens per sequence (RL on the toy: ~60 prompt + ~100)")
    p.add_argument("--reps", type=int, default=3, help="timed passes of each")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    if not model.cpu_has_bf16():
        print("this CPU has no bf16 kernels (avx512_bf16 / amx_bf16): cpu_bf16_training is off here")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net, tok = model.load(args.model, device="cpu", dtype=torch.float32)  # the trainer's fp32 weights
    ids = torch.randint(0, len(tok), (args.batch, args.seq))

    def run(bf16):
        t0 = time.perf_counter()
        lp = model.logprobs(net, ids, bf16=bf16)
        (-lp.mean()).backward()
        grad = torch.cat([q.grad.flatten() for q in net.parameters()])
        net.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, lp.detach(), grad

    secs, last = {False: [], True: []}, {}
    for bf16 in (False, True):
        run(bf16)  # warm-up (oneDNN picks its kernels on the first call)
    for _ in range(args.reps):
        for bf16 in (False, True):
            s, *last[bf16] = run(bf16)
            secs[bf16].append(s)
    fp32, bf16 = (sum(secs[k]) / len(secs[k]) for k in (False, True))
    (lp32, g32), (lp16, g16) = last[False], last[True]
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    print(f"{args.model}: {args.batch} x {args.seq} tokens, {args.threads} threads, {args.reps} passes each")
    print(f"fp32           {fp32:.2f} s per forward + backward")
    print(f"bf16 autocast  {bf16:.2f} s per forward + backward")
    print(f"max |logprob difference| {(lp32 - lp16).abs().max().item():.3f}; gradient cosine {cos:.4f}")
    print(f"bf16_autocast_speedup: {fp32 / bf16:.2f}")


if __name__ == "__main__":
    main()
