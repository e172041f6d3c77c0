"""
Sampler throughput, every figure measured in this one run.

Without --model: model.rollout's KV-cached sampler vs HF `generate` (with its cache) vs a naive
no-cache loop, greedy, batch 16, on the tiny model and on a ~100M-parameter random Llama (first: one
sampling step, torch.multinomial vs model.sample_token, at the tiny and at SmolLM2's vocabulary). The naive
loop re-runs the whole sequence at each step, so it gets slower as the sequence grows; on the 100M
model it is timed over its first --naive-tokens tokens only, which flatters it. The last line is
`speedup_vs_hf_generate: <x>` for the ~100M model.

With --model DIR (a real instruct model, e.g. SmolLM2-135M-Instruct), GSM8K problems in the chat
template, every engine in the dtype `model.load` picks for the device, two workloads:
  (a) equal work: rows decode greedily with no tools and end tokens ignored, so every engine computes
      exactly the same positions: positions/s of our sampler, HF `generate` and vLLM (where installed);
  (b) the RL shape: 4 prompts x G 16 at T = 1, a 256-token budget, every rollout opened with one line
      of code (the model closes the block, the sandbox runs it, its output is fed back), lengths as they
      come: wall time and rollouts/s of our sampler, of HF `generate` (no tools: it just continues; the
      faster of one call with num_return_sequences and a call per prompt) and of vLLM, with row-steps
      (rows summed over forward calls), positions, forced tokens and tool calls;
then vLLM's weight-sync routes (streamed, through the disk, a new engine), one rl.py iteration per
engine (rollout / tools / update seconds), and with --ablate one setting of our sampler changed at a time
on (b) (and fp32 on (a)). The last two lines are
`equal_work_vs_hf_generate: <x>` and `rl_shape_vs_hf_generate: <y>` (ours over HF generate).

    python bench/sampler_bench.py                 # CPU, both random models
    python bench/sampler_bench.py --device cuda   # where a GPU is lent
    VLLM_CPU_KVCACHE_SPACE=2 <vllm-venv>/bin/python bench/sampler_bench.py --model <model-dir>
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
# --model DIR: a real model, two workloads, ours vs HF generate vs vLLM, then one RL iteration

class Steps:
    """Counts a model's forward calls' rows (row-steps) and positions, whoever calls it."""

    def __init__(self, m):
        self.rows = self.positions = 0
        m.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        self.rows, self.positions = self.rows + x.size(0), self.positions + x.numel()

    def take(self):
        out, self.rows, self.positions = (self.rows, self.positions), 0, 0
        return out


def tool_prefix(tok, problem):
    """A response start with one line of code on the problem's first two numbers: the model closes the
    block, the sandbox runs it (a bare ```python opening was not closed within 64 tokens by SmolLM2)."""
    a, b = (re.findall(r"\d+", problem) + ["2", "3"])[:2]
    return tok.encode(f"Let me compute it with Python.\n```python\nprint({a} * {b})\n", add_special_tokens=False)


def left_padded(tok, seqs, device):
    L = max(map(len, seqs))
    ids = torch.tensor([[tok.pad_token_id] * (L - len(s)) + s for s in seqs], device=device)
    return ids, (torch.arange(L, device=device)[None] >= torch.tensor([L - len(s) for s in seqs],
                                                                      device=device)[:, None]).long()


def equal_work(m, tok, prompts, new_tokens, device, steps):
    """(a) No tools, no end tokens: every row decodes exactly `new_tokens` positions, ours and HF generate.
    Returns {engine: (positions/s, row-steps)}."""
    rows, out = len(prompts), {}
    eos, fence, gen_eos = M.eos_ids, M.FENCE_OPEN, m.generation_config.eos_token_id
    M.eos_ids = lambda model, tok: set()      # no end token ends a row
    M.FENCE_OPEN = "\0no tools\0"             # no code block is ever opened
    m.generation_config.eos_token_id = None
    try:
        M.rollout(m, tok, prompts[:2], NoTools(), max_new_tokens=8, temperature=0)  # warm-up
        steps.take()
        rs, t = timed(lambda: M.rollout(m, tok, prompts, NoTools(), max_new_tokens=new_tokens, temperature=0), device)
        assert all(len(r.response_ids) == new_tokens for r in rs), "a row stopped early"
        out["ours"] = (rows * new_tokens / t, steps.take()[0])
        ids, attn = left_padded(tok, prompts, device)
        _, t = timed(lambda: m.generate(ids, attention_mask=attn, do_sample=False, max_new_tokens=new_tokens,
                                        min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id), device)
        out["hf_generate"] = (rows * new_tokens / t, steps.take()[0])
    finally:
        M.eos_ids, M.FENCE_OPEN, m.generation_config.eos_token_id = eos, fence, gen_eos
    return out


def equal_work_vllm(engine, prompts, new_tokens, device):
    params = [dict(temperature=0, max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True)] * len(prompts)
    engine.generate(prompts[:2], params[:2])  # warm-up
    outs, t = timed(lambda: engine.generate(prompts, params), device)
    assert all(len(o.token_ids) == new_tokens for o in outs), "a row stopped early"
    return len(prompts) * new_tokens / t, None


def rl_rollouts(engine, tok, prompts, prefixes, args, sb, steps, **kw):
    """(b) with model.rollout on `engine` (our sampler or vLLM): G samples per prompt at T = 1."""
    sb.seconds = 0.0
    rs, t = timed(lambda: M.rollout(engine, tok, prompts, sb, n=args.group, prefixes=prefixes,
                                    max_new_tokens=args.rl_tokens,
                                    temperature=1.0, seed=0, **kw), args.device)
    rows, pos = steps.take()
    return dict(wall=t, rps=len(rs) / t, row_steps=rows if rows else None, positions=pos if pos else None,
                tool_s=sb.seconds, forced=sum(r.mask.count(0) - r.prefix_len for r in rs),
                calls=sum(r.tool_calls for r in rs),
                length=sum(len(r.response_ids) - r.prefix_len for r in rs) / len(rs))


def rl_shape_hf(m, tok, prompts, prefixes, args, steps):
    """(b) with HF generate, which runs no tools (each row just continues): the faster of one call with
    num_return_sequences G and a call per prompt."""
    G, T = args.group, args.rl_tokens
    ctx = [p + q for p, q in zip(prompts, prefixes)]
    sample = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=T, pad_token_id=tok.pad_token_id)
    best = None
    for name, groups in [("one call", [ctx]), ("a call per prompt", [[c] for c in ctx])]:
        torch.manual_seed(0)
        t0, lengths = time.perf_counter(), []
        for g in groups:
            ids, attn = left_padded(tok, g, args.device)
            x = m.generate(ids, attention_mask=attn, num_return_sequences=G, **sample)[:, ids.size(1):]
            lengths += (x != tok.pad_token_id).sum(-1).tolist()
        t = time.perf_counter() - t0
        rows, pos = steps.take()
        if best is None or t < best["wall"]:
            best = dict(wall=t, rps=len(lengths) / t, row_steps=rows, positions=pos, tool_s=0.0, forced=0, calls=0,
                        length=sum(lengths) / len(lengths), config=name)
    return best


def weight_sync(engine, m, tok):
    """vLLM's weight-sync routes: streamed `VLLM.sync_weights`, saving the model dir + `reload_weights`
    from it, saving + starting a new engine. -> (tensors, streamed s, save + reload s, save + new engine s, start s)"""
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
    return n, t_stream, t_disk, t_save + engine.start_s, engine.start_s


def rl_iteration(args, engine):
    """One rl.py iteration in a subprocess -> its logged (rollout, tools, update) seconds."""
    import json
    import subprocess
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "rl.py", "--model", args.model, "--data", args.data, "--template", "chat",
               "--engine", engine, "--out", os.path.join(d, "rl"), "--group-size", "4", "--batch-problems", "2",
               "--iterations", "1", "--updates-per-batch", "1", "--max-new-tokens", "128", "--max-refills", "0",
               # every rollout is trained on
               "--save-every", "0", "--no-dynamic-sampling", "--keep-unboxed", "--keep-failed-episodes"]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rec = json.loads(open(os.path.join(d, "rl", "log.jsonl")).readlines()[-1])
    return rec["s_rollout"], rec["s_tool"], rec["s_update"]


def measured(label, x):
    """Each measurement as it is taken, so a failure later in the run loses none of them."""
    print(f"[{label}] {x}", flush=True)


def real_model(args):
    import importlib.util
    import rewards
    from sandbox import Sandbox
    m, tok = M.load(args.model, device=args.device)
    steps = Steps(m)
    dtype = str(next(m.parameters()).dtype).removeprefix("torch.")
    problems = [p["problem"] for p in rewards.read_problems(args.data)]
    prompts = [M.encode_prompt(tok, p, "chat") for p in problems[:max(args.equal_rows, args.prompts)]]
    pre = [tool_prefix(tok, p) for p in problems[:args.prompts]]
    print(f"{args.model}, {dtype}, {args.device}, torch threads {torch.get_num_threads()}; "
          "GSM8K problems, chat template")
    with Sandbox(workers=2) as raw:
        sb = TimedSandbox(raw)
        a = equal_work(m, tok, prompts[:args.equal_rows], args.equal_tokens, args.device, steps)
        measured("(a)", a)
        M.rollout(m, tok, prompts[:2], sb, prefixes=pre[:2], max_new_tokens=16)  # warm-up of the sandbox workers
        steps.take()
        b = {"ours": rl_rollouts(m, tok, prompts[:args.prompts], pre, args, sb, steps),
             "hf_generate": rl_shape_hf(m, tok, prompts[:args.prompts], pre, args, steps)}
        measured("(b)", b)
        if args.ablate:  # one setting of our sampler changed at a time
            m32 = M.load(args.model, device=args.device, dtype=torch.float32)[0]
            steps32 = Steps(m32)
            a32 = equal_work(m32, tok, prompts[:args.equal_rows], args.equal_tokens, args.device, steps32)
            abl = {"fp32": rl_rollouts(m32, tok, prompts[:args.prompts], pre, args, sb, steps32)}
            for name, attr, value in [("tool output in one forward (OBS_CHUNK 32)", "OBS_CHUNK",
                                       32), ("regroup at every finished row", "REGROUP", 0.0)]:
                old, _ = getattr(M, attr), setattr(M, attr, value)
                abl[name] = rl_rollouts(m, tok, prompts[:args.prompts], pre, args, sb, steps)
                setattr(M, attr, old)
            rows = args.prompts * args.group // 4
            abl[f"{rows} rows at a time, the rest queued"] = rl_rollouts(m, tok, prompts[:args.prompts], pre,
                                                                         args, sb, steps, max_rows=rows)
            measured("ablations", dict(a32=a32, **abl))
        if importlib.util.find_spec("vllm"):  # last: the engine binds this process's threads when it starts
            t0 = time.perf_counter()
            engine = M.VLLM(args.model, seed=0)
            engine.start_s = time.perf_counter() - t0
            a["vllm"] = equal_work_vllm(engine, prompts[:args.equal_rows], args.equal_tokens, args.device)
            rl_rollouts(engine, tok, prompts[:2], pre[:2], args, sb, steps)  # warm-up
            b["vllm"] = rl_rollouts(engine, tok, prompts[:args.prompts], pre, args, sb, steps)
            measured("vllm", (a["vllm"], b["vllm"]))
            sync = weight_sync(engine, m, tok)
    print(f"(a) equal work: {args.equal_rows} rows, greedy, no tools, end tokens ignored, every row "
          f"{args.equal_tokens} new positions on every engine")
    print(f"  {'engine':<12}{'positions/s':>12}{'vs HF':>7}{'row-steps':>11}")
    for name, (pps, rows) in a.items():
        print(f"  {name:<12}{pps:>12.1f}{pps / a['hf_generate'][0]:>7.2f}{rows if rows is not None else '-':>11}")
    print(f"(b) RL shape: {args.prompts} prompts x G {args.group}, T = 1, {args.rl_tokens}-token budget, every rollout "
          f"opens with a line of code (tool output fed back; HF generate just continues), lengths as they come")
    print(f"  {'engine':<12}{'wall s':>8}{'rollouts/s':>12}{'vs HF':>7}{'row-steps':>11}{'positions':>11}"
          f"{'forced':>8}{'calls':>7}{'tool s':>8}{'mean len':>10}")
    for name, r in b.items():
        print(f"  {name:<12}{r['wall']:>8.1f}{r['rps']:>12.3f}{r['rps'] / b['hf_generate']['rps']:>7.2f}"
              f"{r['row_steps'] or '-':>11}{r['positions'] or '-':>11}{r['forced']:>8}{r['calls']:>7}"
              f"{r['tool_s']:>8.1f}{r['length']:>10.1f}" + (f"  (HF: {r['config']})" if "config" in r else ""))
    if args.ablate:
        print(f"(a) in fp32: ours {a32['ours'][0]:.1f}, HF generate {a32['hf_generate'][0]:.1f} positions/s "
              f"({a32['ours'][0] / a32['hf_generate'][0]:.2f}x); {dtype} / fp32: ours "
              f"{a['ours'][0] / a32['ours'][0]:.2f}x, "
              f"HF generate {a['hf_generate'][0] / a32['hf_generate'][0]:.2f}x")
        print(f"(b) our sampler with one setting changed (the defaults: {b['ours']['rps']:.3f} rollouts/s)")
        print(f"  {'changed':<42}{'wall s':>8}{'rollouts/s':>12}{'default / this':>16}{'row-steps':>11}"
              f"{'positions':>11}{'mean len':>10}")
        for name, r in abl.items():
            print(f"  {name:<42}{r['wall']:>8.1f}{r['rps']:>12.3f}{b['ours']['rps'] / r['rps']:>16.2f}"
                  f"{r['row_steps']:>11}{r['positions']:>11}{r['length']:>10.1f}")
    if importlib.util.find_spec("vllm"):
        print("vLLM weight sync, seconds: streamed sync_weights ({} tensors) {:.2f} | save + reload_weights from the "
              "dir {:.2f} | save + a new engine {:.1f} (its start {:.1f})".format(*sync))
    print("one RL iteration (rl.py, G = 4, 2 problems, 128 new tokens), seconds rollout / tools / update:")
    for name in ["hf"] + ["vllm"] * bool(importlib.util.find_spec("vllm")):
        print(f"  --engine {name:<5} " + " / ".join(f"{x:.1f}" for x in rl_iteration(args, name)))
    print(f"equal_work_vs_hf_generate: {a['ours'][0] / a['hf_generate'][0]:.2f}")
    print(f"rl_shape_vs_hf_generate: {b['ours']['rps'] / b['hf_generate']['rps']:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model",
                   help="a real model dir: tool-integrated rollouts, ours vs HF generate vs vLLM, weight sync, "
                   "RL split")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "gsm8k_train.jsonl"),
                   help="problems for --model")
    p.add_argument("--batch", type=int, default=16, help="rows of the no-model run")
    p.add_argument("--new-tokens", type=int, default=256, help="new tokens of the no-model run")
    p.add_argument("--equal-rows", type=int, default=16, help="--model (a): rows")
    p.add_argument("--equal-tokens", type=int, default=128, help="--model (a): new positions per row")
    p.add_argument("--prompts", type=int, default=4, help="--model (b): prompts")
    p.add_argument("--group", type=int, default=16, help="--model (b): G, samples per prompt")
    p.add_argument("--rl-tokens", type=int, default=256, help="--model (b): response budget")
    p.add_argument("--ablate", action="store_true", help="--model: also one setting of our sampler changed at a time "
                   "(fp32 instead of bf16, tool output in one forward, regroup at every finished row, "
                   "a quarter of the rows at a time)")
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
    problems = [f"A warehouse has {1000 + 37 * i} crates with {10 + i} bolts in each crate. "
                "How many bolts?" for i in range(args.batch)]
    # ragged: left padding
    prompts = [tok.encode(q, add_special_tokens=False)[: 12 + i] for i, q in enumerate(problems)]
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
