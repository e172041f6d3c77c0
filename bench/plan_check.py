"""
The memory plan (model.memory_plan) against a measured peak, on a GPU: two sharded training steps of a
randomly initialised model with a real model's shapes (a config.json, e.g. from runs/recipes/configs),
then torch.cuda.max_memory_allocated against the plan's update phase without its assumed reserve (CUDA
context, NCCL buffers, allocator slack: max_memory_allocated does not see them). One process, or torchrun.

    python bench/plan_check.py                          # Qwen2.5-Math-1.5B's shape, 2 x 4096 tokens, checkpointed
    python bench/plan_check.py --micro-batch 1 --no-grad-checkpointing
    torchrun --nproc_per_node 8 bench/plan_check.py --config runs/recipes/configs/Qwen2.5-Math-7B
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="runs/recipes/configs/Qwen2.5-Math-1.5B", help="a dir with a config.json")
    p.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    p.add_argument("--micro-batch", type=int, default=2, help="sequences per forward pass")
    p.add_argument("--no-grad-checkpointing", dest="ckpt", action="store_false")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("plan_check needs a GPU")
    from transformers import AutoConfig, AutoModelForCausalLM
    rank, world, dev = model.init_dist()
    cfg = AutoConfig.from_pretrained(args.config)
    torch.manual_seed(0)
    m = model.shard(AutoModelForCausalLM.from_config(cfg, dtype=torch.float32), dev, grad_ckpt=args.ckpt)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-6)
    for step in range(2):  # the second step runs with AdamW's state allocated, as every later one does
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq), device=dev)
        (-model.logprobs(m, ids).mean()).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated()
    plan = model.memory_plan(args.config, world, args.seq, args.micro_batch, grad_ckpt=args.ckpt)
    planned = plan["update"] - model.RESERVE
    if rank == 0:
        print(f"{plan['summary']}; {world} GPU(s), {args.micro_batch} x {args.seq} tokens, checkpointing {args.ckpt}")
        for item, b, _ in plan["rows"][:-1]:
            print(f"  plan  {item:<36} {b / model.GiB:6.2f} GiB")
        print(f"  plan without the reserve {planned / model.GiB:.2f} GiB, measured peak {peak / model.GiB:.2f} GiB, "
              f"measured / plan = {peak / planned:.3f}")


if __name__ == "__main__":
    main()
