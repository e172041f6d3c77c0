"""
Cold-start SFT (paper §2.3, Eq. 3): sft.jsonl + model dir -> model dir.

In:  trajectory JSONL (docs/design.md: the problem fields + "response", the tool-integrated text with the
     environment's ```output blocks), e.g. what `python tirgen.py` writes; a model dir.
Out: a model dir (`save_pretrained`, in --model's dtype, loads in every later stage) + train_state/
     (sharded fp32 weights and AdamW state, step, RNG, data order) for --resume; optionally the held-out
     accuracy of the result (--eval-n).

Eq. 3, L_SFT = -sum_t log pi(y_t | q, I, y_<t), is a token mean over the trained tokens of a batch:
  - Trained: the response text the model writes, and the EOS after it (the model must learn to stop).
  - Masked: the prompt, and every environment-inserted "\\n```output\\n...\\n```\\n" block. The paper is
    silent here (ms-swift, which the release uses, trains on all assistant tokens). We mask them because
    the model never writes them: at rollout time they are forced tokens (model.rollout's mask 0), and
    fitting them would teach the model to guess sandbox output in its head.
  - Token-in/token-out like the sampler: the prompt is model.encode_prompt(), and the response is split
    at its observation blocks with each piece encoded on its own (model text up to the closing fence,
    observation, model text, ...), exactly the ids model.rollout produces for the same trajectory.
Simplifications:
  1. Sharded with FSDP2 (model.shard; one code path, a single CPU process included): each of N ranks
     keeps 1/N of the fp32 weights, gradients and AdamW state and gathers one layer at a time, in bf16
     on GPU. --plan prints the memory per GPU from config.json alone and exits non-zero if it won't fit.
  2. Constant LR after a linear warm-up (paper: constant 2e-6; the release adds warm-up ratio 0.05).
  3. Batches: each epoch shuffles the records into micro-batches of --batch-size; --bucket sorts them
     by length first (no padding waste) and shuffles the batches. Bucketing is off by default because
     of the toy: there length tracks the problem kind, so bucketed batches hold one kind each, and
     they train far worse (300 toy steps: held-out loss 0.300 vs 0.060, 10% vs 60% solved). Records
     longer than --max-len are dropped (counted), not truncated.

Toy default (out/toy_sft.jsonl + out/tiny -> out/sft, 5 epochs = 300 steps, ~3 min on one CPU core):
    python tirgen.py && python sft.py
    python sft.py --eval-only --model out/tiny --eval-n 200        # the untrained model, for comparison
Real model (paper: lr 2e-6 constant, 1 epoch, global batch 256, 4096 tokens for non-reasoning models;
runs/recipes/ has the whole pipeline for each of the paper's four models):
    python sft.py --plan --model Qwen2.5-Math-7B --nproc 8 --gpu-memory 79 --batch-size 2 --grad-checkpointing
    torchrun --nproc_per_node 8 sft.py --data sft.jsonl --model Qwen2.5-Math-7B --out out/sft-7b --lr 2e-6 \\
        --epochs 1 --batch-size 2 --grad-accum 16 --bucket --max-len 4096 --grad-checkpointing --eval-n 0
                                   # global batch = batch-size x grad-accum x 8 ranks = 256
    python sft.py ... --resume     # continue an interrupted run from --out (same number of ranks)
"""
import argparse
import json
import math
import os
import random
import shutil
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

import model

TOY_DATA = "out/toy_sft.jsonl"
STATE = "train_state"  # a directory: sharded weights + AdamW state (model.save_state)
OUT_OPEN, OUT_CLOSE = "\n```output\n", "\n```\n"  # model.observation_text(obs) == OUT_OPEN + obs + OUT_CLOSE

# -----------------------------------------------------------------------------
# CLI arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data and model
    p.add_argument("--data", default=TOY_DATA, help="trajectory JSONL (problem fields + response)")
    p.add_argument("--model", default=model.TINY_DIR, help="model dir to start from (out/tiny is built if missing)")
    p.add_argument("--out", default="out/sft", help="output model dir; also holds the checkpoint")
    p.add_argument("--template", default="raw", choices=["raw", "chat", "thinking"],
                   help="prompt convention (model.build_prompt)")
    p.add_argument("--max-len", type=int, default=4096, help="drop records longer than this many tokens (paper: 4096)")
    p.add_argument("--heldout", type=float, default=0.05, help="fraction of the records kept out for the held-out loss")
    # Optimization
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate, constant after warm-up (paper: 2e-6)")
    p.add_argument("--warmup", type=float, default=0.05, help="linear warm-up, as a fraction of all steps")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training records (paper: 1)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch per process")
    p.add_argument("--bucket", action="store_true", help="length-bucketed batches (no padding waste; for real data, "
                   "whose lengths vary 10x; off for the toy, see the docstring)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: off)")
    # Runtime
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the data order and the init RNG")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the tiny model's matrices are too "
                   "small to split: 1 thread is several times faster than 2 on a busy 2-core machine)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward (saves memory)")
    p.add_argument("--cpu-offload", action="store_true",
                   help="keep the weight shards and AdamW state in host memory (GPU)")
    p.add_argument("--eval-every", type=int, default=100,
                   help="held-out loss every this many steps (0: only at the end)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint every this many steps (and at the end)")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop (with a checkpoint) after this many steps; 0: run all")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    # Evaluation: tool-integrated rollouts of the final model on held-out problems
    p.add_argument("--eval-n", type=int, default=200, help="problems of --eval-data to solve at the end (0: skip)")
    p.add_argument("--eval-data", default="data/toy_test.jsonl", help="held-out problems JSONL (problem, answer)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate --model, no training")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of the evaluation (0: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="response budget of the evaluation, tokens")
    p.add_argument("--max-tool-calls", type=int, default=5, help="tool-call budget of the evaluation")
    # Memory plan: reads --model's config.json only, prints GiB per GPU, exits 0 if it fits, 1 if not
    p.add_argument("--plan", action="store_true", help="print the memory plan for --nproc GPUs and exit")
    p.add_argument("--nproc", type=int, default=8, help="GPUs the plan shards over")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU for the plan (an 80 GB H100 has 79.6)")
    return p.parse_args(argv)

# -----------------------------------------------------------------------------
# Data: read and check every record before training, encode like the sampler, plan the batches


def split_response(resp):
    """[(text, trained)]: the model's pieces (trained) and the environment's observation blocks
    (masked), in order. A ```python block must be closed and followed by its ```output block."""
    pieces, pos = [], 0
    while True:
        code, out = resp.find("```python", pos), resp.find("```output", pos)
        if out != -1 and (code == -1 or out < code):
            raise ValueError(f"```output block at char {out} follows no ```python block (the model never writes one)")
        if code == -1:
            break
        nl = resp.find("\n", code)  # like rewards.CODE_BLOCK: the fence line, then the code, then ```
        close = resp.find("```", nl + 1) if nl != -1 else -1
        if close == -1:
            raise ValueError(f"unclosed ```python block at char {code}")
        close += 3
        if not resp.startswith(OUT_OPEN, close):
            raise ValueError(f"```python block at char {code} is not followed by an ```output block")
        end = resp.find(OUT_CLOSE, close + len(OUT_OPEN))
        if end == -1:
            raise ValueError(f"unclosed ```output block at char {close}")
        end += len(OUT_CLOSE)
        pieces += [(resp[pos:close], 1), (resp[close:end], 0)]
        pos = end
    return pieces + [(resp[pos:], 1)]


def read_records(path):
    """[(problem, pieces)] of a trajectory JSONL; a bad record is a `file:line: reason` exit."""
    if not os.path.exists(path):
        hint = ": run `python tirgen.py` first" if path == TOY_DATA else ""
        raise SystemExit(f"{path} not found{hint}")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                if not isinstance(r, dict):
                    raise ValueError("not a JSON object")
                for key in ("problem", "response"):
                    if not isinstance(r.get(key), str):
                        raise ValueError(f"no {key!r} string")
                records.append((r["problem"], split_response(r["response"])))
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                raise SystemExit(f"{path}:{n}: {e}")
    if not records:
        raise SystemExit(f"{path}: no records")
    return records


def encode(tok, problem, pieces, template):
    """(ids, mask): the token ids the sampler sees and 1 where the token is trained (Eq. 3)."""
    ids = model.encode_prompt(tok, problem, template)
    mask = [0] * len(ids)
    for text, trained in pieces:  # each piece on its own, as model.rollout produces them
        piece = tok.encode(text, add_special_tokens=False)
        ids += piece
        mask += [trained] * len(piece)
    return ids + [tok.eos_token_id], mask + [1]


def make_plan(lengths, batch_size, epochs, seed, bucket):
    """Every micro-batch of the run, in order: per epoch, shuffle the examples and cut them into
    batches of `batch_size`; with `bucket`, sort the shuffled examples by length first (stable, so
    equal lengths stay shuffled) and shuffle the batches, so a batch pads only to near-equal lengths."""
    rng = random.Random(seed)
    plan = []
    for _ in range(epochs):
        order = rng.sample(range(len(lengths)), len(lengths))
        if bucket:
            order.sort(key=lengths.__getitem__)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        plan += batches
    return plan


def collate(examples, pad, device):
    """Right-padded (B, T) ids, attention mask and loss mask."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.tensor([ids + [pad] * (T - len(ids)) for ids, _ in examples], device=device)
    attn = torch.tensor([[1] * len(ids) + [0] * (T - len(ids)) for ids, _ in examples], device=device)
    mask = torch.tensor([m + [0] * (T - len(m)) for _, m in examples], device=device)
    return ids, attn, mask

# -----------------------------------------------------------------------------
# Evaluation: held-out loss, and tool-integrated rollouts on held-out problems


def batch_nll(m, ids, attn, mask, bf16=False):
    """(sum of -log pi over trained tokens, their number) for one (B, T) batch."""
    lp = model.logprobs(m, ids, attn, bf16=bf16)  # (B, T), column t: log pi(ids[t] | ids[<t])
    return -(lp * mask).sum(), mask.sum().item()


@torch.no_grad()
def heldout_loss(m, examples, args, pad, device, rank, world):
    m.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    nll = n = 0.0
    for b in model.lockstep(batches[rank::world]):  # ranks hold unequal shares: every forward is a collective
        if b is None:
            model.dummy_pass(m, device, backward=False)
            continue
        s, c = batch_nll(m, *collate([examples[i] for i in b], pad, device), args.bf16)
        nll, n = nll + s.item(), n + c
    m.train()
    nll, n = model.allsum([nll, n])
    return nll / max(n, 1)


def solve_rate(m, tok, args):
    """Rolls `m` out with tools on the first --eval-n problems of --eval-data: accuracy (rewards.is_equiv
    on rewards.extract_answer) and tool calls per problem and their success rate."""
    import rewards
    from sandbox import Sandbox
    problems = rewards.read_problems(args.eval_data)[:args.eval_n]
    prompts = [model.encode_prompt(tok, p["problem"], args.template) for p in problems]
    m.eval()
    with Sandbox(workers=2, timeout_s=10.0) as sb:
        rs = model.rollout(m, tok, prompts, sb, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           seed=args.seed, max_tool_calls=args.max_tool_calls)
    correct = rewards.grade_many([(rewards.extract_answer(r.text), p["answer"]) for r, p in zip(rs, problems)])
    calls = sum(r.tool_calls for r in rs)
    return dict(n=len(rs), accuracy=sum(correct) / len(rs), calls=calls / len(rs),
                call_ok=1 - sum(r.tool_errors for r in rs) / calls if calls else None)


def eval_line(e):
    ok = "none ran" if e["call_ok"] is None else f"{e['call_ok']:.1%} of them succeeded"
    return f"{e['accuracy']:.1%} of {e['n']} solved; {e['calls']:.2f} tool calls per problem, {ok}"


# -----------------------------------------------------------------------------
# Checkpoint: the model dir + train_state/, swapped in whole so a crash mid-save keeps the last one


def save_checkpoint(m, tok, opt, step, plan, heldout_ids, world, args):
    """A collective: every rank writes its shards of the weights and AdamW state (model.save_state), the
    model dir is gathered in --model's dtype, and rank 0 writes it and swaps the new folder in."""
    out = args.out
    tmp, old = out + ".tmp", out + ".old"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    model.save(m, tok, tmp, dtype=model.saved_dtype(args.model))
    rng = dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    model.save_state(m, opt, os.path.join(tmp, STATE),
                     dict(step=step, plan=plan, heldout=heldout_ids, world=world, rng=rng))
    if dist.get_rank():
        return
    if os.path.isdir(out):
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)

# -----------------------------------------------------------------------------
# Init, then the training loop


def split_data(args, tok, records, state):
    """Encoded train and held-out examples, the held-out indices and the run's micro-batch plan
    (both from the checkpoint on --resume, so the data order carries on where it stopped)."""
    encoded = [encode(tok, problem, pieces, args.template) for problem, pieces in records]
    examples = [e for e in encoded if len(e[0]) <= args.max_len]
    if not examples:
        raise SystemExit(f"{args.data}: every record is longer than --max-len {args.max_len}")
    if len(examples) < len(encoded):
        model.print0(f"{len(encoded) - len(examples)} records longer than --max-len {args.max_len} dropped")
    n_held = max(1, int(args.heldout * len(examples))) if args.heldout > 0 and len(examples) > 1 else 0
    heldout_ids = state["heldout"] if state else sorted(random.Random(args.seed).sample(range(len(examples)), n_held))
    held = set(heldout_ids)
    train = [e for i, e in enumerate(examples) if i not in held]
    plan = state["plan"] if state else make_plan([len(ids) for ids, _ in train], args.batch_size, args.epochs,
                                                 args.seed, args.bucket)
    if state and max(i for b in plan for i in b) >= len(train):
        raise SystemExit(f"--resume: the checkpoint in {args.out} was made with other data")
    return train, [examples[i] for i in heldout_ids], heldout_ids, plan


def report(summary, args):
    rows = [("steps", f"{summary['steps']} of {summary['total_steps']}"
             + (" (--resume continues)" if summary["steps"] < summary["total_steps"] else "")),
            ("tokens this run", f"{summary['tokens']:,} ({summary['trained_tokens']:,} trained)"),
            ("train loss (last 10 steps)", f"{summary['train_loss']:.4f}"),
            ("held-out loss", f"{summary['first_heldout_loss']:.4f} -> {summary['heldout_loss']:.4f}"),
            ("seconds", f"{summary['seconds']:.0f}"), ("model dir", args.out)]
    if "eval" in summary:
        rows.append((f"held-out solve rate ({args.eval_data})", eval_line(summary["eval"])))
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{w}}  {v}" for k, v in rows))


def eval_only(args, device, rank, owns_group):
    """--eval-only: the held-out solve rate of --model, no training."""
    m, tok = model.load(args.model, device=device)
    summary = {}
    if rank == 0:
        summary["eval"] = solve_rate(m, tok, args)
        print(f"{args.model}: {eval_line(summary['eval'])}")
    if owns_group:
        dist.destroy_process_group()
    return m, summary


def resume_state(args, world):
    """--resume: the checkpoint's meta (step, batch plan, held-out ids, RNG), else None."""
    if not args.resume:
        return None
    if not os.path.exists(os.path.join(args.out, STATE, "meta.pt")):
        raise SystemExit(f"--resume: no checkpoint in {args.out}")
    state = torch.load(os.path.join(args.out, STATE, "meta.pt"), weights_only=False)
    if state["world"] != world:  # the micro-batch plan is cut per rank
        raise SystemExit(f"--resume: the checkpoint in {args.out} was made with {state['world']} processes, "
                         f"not {world}")
    return state


def restore(m, opt, state, args, device):
    """The step to continue from: 0, or the checkpoint's, with its weights, AdamW state and RNG."""
    if not state:
        return 0
    model.load_state(m, opt, os.path.join(args.out, STATE))
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    model.print0(f"resumed from {args.out} at step {state['step']}")
    return state["step"]


def train(m, tok, opt, step, data, args, device, rank, world):
    """The SFT loop from `step`: Eq. 3 on this rank's micro-batches, warm-up then a constant lr, held-out
    loss every --eval-every, checkpoints. data = (train, heldout, heldout_ids, plan). Returns the summary."""
    train_set, heldout, heldout_ids, plan = data
    # Rank r takes micro-batches r, r + world, ...; an optimizer step takes --grad-accum of them per rank.
    # Every rank gets as many as the others, so their forward/backward collectives pair up.
    mine = plan[rank:len(plan) // world * world:world]
    total_steps = math.ceil(len(mine) / args.grad_accum)
    warmup_steps = max(1, round(args.warmup * total_steps))
    model.print0(f"{len(train_set)} train / {len(heldout)} held-out records from {args.data}; {total_steps} steps "
                 f"of {args.batch_size}x{args.grad_accum}x{world} sequences; "
                 f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f}M parameters")
    pad = tok.pad_token_id
    first_heldout = heldout_loss(m, heldout, args, pad, device, rank, world) if heldout else float("nan")
    last_heldout, train_losses, tokens, trained_tokens = first_heldout, [], 0, 0
    stop = min(total_steps, step + args.max_steps) if args.max_steps else total_steps
    t0 = time.time()
    bar = tqdm(total=total_steps, initial=step, disable=rank != 0, desc="sft", dynamic_ncols=True)
    while step < stop:
        micro = [[train_set[i] for i in b] for b in mine[step * args.grad_accum:(step + 1) * args.grad_accum]]
        # Eq. 3 as a token mean over the whole global batch: every micro-batch's summed NLL is divided
        # by the number of trained tokens on all ranks; x world undoes FSDP's averaging of gradients.
        n_global, = model.allsum([sum(sum(mk) for mb in micro for _, mk in mb)])
        nll_sum = 0.0
        for mb in micro:
            ids, attn, mask = collate(mb, pad, device)  # (B, T) each
            nll, _ = batch_nll(m, ids, attn, mask, args.bf16)
            (nll * world / n_global).backward()  # the sharded gradients accumulate over the micro-batches
            nll_sum += nll.item()
            tokens += int(attn.sum())
        lr = args.lr * min(1.0, (step + 1) / warmup_steps)  # linear warm-up, then constant (§2.3)
        for group in opt.param_groups:
            group["lr"] = lr
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(m.parameters(), args.clip)  # the norm over all shards
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        train_losses.append(model.allsum([nll_sum])[0] / n_global)
        trained_tokens += int(n_global)
        if heldout and (step == stop or (args.eval_every and step % args.eval_every == 0)):
            last_heldout = heldout_loss(m, heldout, args, pad, device, rank, world)
            if rank == 0:
                tqdm.write(f"step {step}: train loss {train_losses[-1]:.4f}, held-out loss {last_heldout:.4f}")
        if step == stop or step % args.save_every == 0:
            save_checkpoint(m, tok, opt, step, plan, heldout_ids, world, args)
        bar.update(1)
        bar.set_postfix(loss=f"{train_losses[-1]:.3f}", lr=f"{lr:.1e}")
    bar.close()
    return dict(steps=step, total_steps=total_steps, seconds=time.time() - t0, tokens=int(model.allsum([tokens])[0]),
                trained_tokens=trained_tokens, train_loss=sum(train_losses[-10:]) / max(len(train_losses[-10:]), 1),
                heldout_loss=last_heldout, first_heldout_loss=first_heldout)


def main(argv=None):
    args = parse_args(argv)
    if args.plan:  # config.json only: no data, no weights, no process group
        raise SystemExit(model.print_plan(args.model, args.nproc, args.gpu_memory, seq=args.max_len,
                                          micro_batch=args.batch_size, grad_ckpt=args.grad_checkpointing,
                                          cpu_offload=args.cpu_offload))
    records = None if args.eval_only else read_records(args.data)  # every record is checked before training
    owns_group = not dist.is_initialized()
    rank, world, device = model.init_dist()  # torchrun: one process per GPU (or gloo processes on CPU)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.model == model.TINY_DIR and rank == 0:
        model.ensure_tiny()
    dist.barrier()
    if args.eval_only:
        return eval_only(args, device, rank, owns_group)
    state = resume_state(args, world)
    # fp32 weights, read once by rank 0 and broadcast into every rank's shards (on the GPU where there is one)
    m, tok = model.load_sharded(args.model, device, args.grad_checkpointing, args.cpu_offload)
    args.bf16 = model.cpu_bf16_training(args.model, device)  # a real model's matmuls in bf16 on a CPU
    data = split_data(args, tok, records, state)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step = restore(m, opt, state, args, device)
    summary = train(m, tok, opt, step, data, args, device, rank, world)
    # the held-out solve rate of the saved model dir (what the next stage loads; rank 0)
    if rank == 0:
        if args.eval_n > 0:
            summary["eval"] = solve_rate(model.load(args.out, device=device)[0], tok, args)
        report(summary, args)
    if owns_group:
        dist.destroy_process_group()
    return m, summary


if __name__ == "__main__":
    model.exit_on_error(main)
