"""Sharded training (model.shard, FSDP2 on gloo): 2 ranks against 1 process for SFT steps and RL updates
with uneven per-rank sample counts (a rank with none included), save -> model.load -> the same logits,
--resume bit for bit on 2 ranks, the per-rank shard sizes against the memory plan, the plan's activation
formula against what autograd keeps, and --plan's exit on a model that fits and on one that does not."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

import model
import rl
import sft
from test_sft import toy_records, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "runs", "recipes", "configs")


def sft_args(tiny, data, out, *extra):
    return ["--data", data, "--model", tiny, "--out", out, "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
            "--eval-n", "0", "--eval-every", "0", *extra]


def rl_args(tiny):
    return rl.parse_args(["--model", tiny, "--data", "unused.jsonl", "--micro-batch", "2", "--updates-per-batch", "1",
                          "--lr", "1e-3", "--kl", "0.1", "--temperature", "0.9"])


def scripted_samples(n, vocab, seed):
    """RL samples without a rollout: random token ids, a prompt part (mask 0), advantages of both signs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, r = rng.randint(3, 6), rng.randint(3, 9)
        out.append(rl.Sample([rng.randrange(vocab) for _ in range(p + r)], [0] * p + [1] * r,
                             rng.uniform(-1.5, 1.5), 1.0))
    return out


# Per rank and iteration: which of the 5 samples of that iteration this rank trains on. Iteration 1: rank 1
# has none; iteration 2: rank 0 runs one micro-batch (of 2), rank 1 two, so rank 0 pads with a dummy pass.
SPLIT = {0: [range(0, 5), range(0, 1)], 1: [range(0, 0), range(1, 5)]}


def rl_updates(tiny, rank, world, dev):
    """Two update() calls (2 iterations) on the scripted samples; returns the full weights and grad norms."""
    args = rl_args(tiny)
    policy, tok = model.load(tiny, device="cpu", dtype=torch.float32)
    policy = model.shard(policy, dev)
    ref = model.shard(model.load(tiny, device="cpu", dtype=torch.float32)[0].requires_grad_(False), dev)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    norms = []
    for it in range(2):
        samples = scripted_samples(5, len(tok), seed=it)
        mine = [samples[i] for i in SPLIT[rank][it]] if world == 2 else samples
        norms.append(rl.update(policy, ref, opt, mine, it, args, dev)["grad_norm"])
    local = dict(params=sum(p.to_local().numel() * 4 for p in policy.parameters()),
                 adam=sum(v.to_local().numel() * 4 for s in opt.state.values() for k, v in s.items() if k != "step"))
    return {k: v.clone() for k, v in model.full_params(policy)}, norms, local


WORKER = """
import os, sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.join({root!r}, "tests"))
import model, sft, test_fsdp
rank, world, dev = model.init_dist()  # one group for every run below (sft.main leaves it open)
tiny, data, out = sys.argv[1:4]
args = lambda name, *extra: test_fsdp.sft_args(tiny, data, os.path.join(out, name), *extra)
m, _ = sft.main(args("a", "--max-steps", "3"))                     # 3 steps straight
full = dict(model.full_params(m))
model.save(m, _tok := model.load(tiny)[1], os.path.join(out, "bf16"), dtype=torch.bfloat16)  # a bf16 export
ids = torch.tensor([[5, 17, 99, 3, 250, 7, 42, 11]])
logits = m(input_ids=ids).logits.detach()                          # the sharded model's logits (a collective)
sft.main(args("b", "--max-steps", "2"))                             # 2 steps, then --resume for the 3rd
resumed, _ = sft.main(args("b", "--resume", "--max-steps", "1"))
weights, norms, local = test_fsdp.rl_updates(tiny, rank, world, dev)
res = dict(sft=full, logits=logits, resumed=dict(model.full_params(resumed)), rl=weights, norms=norms, local=local)
torch.save(res, os.path.join(out, "rank%d.pt" % rank))
"""


@pytest.fixture(scope="module")
def two_ranks(tiny_dir, tmp_path_factory):
    """One torchrun launch, 2 gloo processes: the SFT runs and RL updates; returns (out dir, data, results per rank)."""
    d = tmp_path_factory.mktemp("fsdp")
    data = write_jsonl(d / "sft.jsonl", toy_records(24))
    (d / "worker.py").write_text(WORKER.format(root=ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(d / "worker.py"),
           tiny_dir, data, str(d)]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return str(d), data, [torch.load(d / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture
def one_process():
    """A 1-rank group in this process, as `python sft.py` / `python rl.py` make one."""
    rank, world, dev = model.init_dist()
    yield dev
    dist.destroy_process_group()


def close(a, b, atol=1e-5):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def test_sft_two_ranks_match_one_process(two_ranks, tiny_dir, tmp_path):
    out, data, (r0, r1) = two_ranks
    m, s = sft.main(sft_args(tiny_dir, data, str(tmp_path / "one"), "--max-steps", "3", "--grad-accum", "2"))
    one = dict(model.full_params(m))
    assert s["steps"] == 3 and close(r0["sft"], one) and close(r1["sft"], one)
    start = dict(model.full_params(model.load(tiny_dir)[0]))
    assert not close(one, start, atol=1e-4)   # the 3 steps moved the weights


def test_sft_saved_dir_loads_with_the_same_logits(two_ranks):
    out, _, (r0, _) = two_ranks
    m, tok = model.load(os.path.join(out, "a"))   # the dir rank 0 wrote from the gathered shards
    assert close(dict(model.full_params(m)), r0["sft"], atol=0)
    logits = m(input_ids=torch.tensor([[5, 17, 99, 3, 250, 7, 42, 11]])).logits
    assert torch.allclose(logits, r0["logits"], rtol=0, atol=1e-5)
    assert os.path.exists(os.path.join(out, "a", sft.STATE))


def test_sft_resume_on_two_ranks_is_bit_for_bit(two_ranks):
    _, _, (r0, r1) = two_ranks
    for r in (r0, r1):
        assert r["resumed"].keys() == r["sft"].keys()
        assert all(torch.equal(r["resumed"][k], r["sft"][k]) for k in r["sft"])


def test_rl_updates_uneven_ranks_match_one_process(two_ranks, tiny_dir, one_process):
    _, _, (r0, r1) = two_ranks
    weights, norms, _ = rl_updates(tiny_dir, 0, 1, one_process)
    start = dict(model.full_params(model.load(tiny_dir)[0]))
    assert not close(weights, start, atol=1e-4)                      # two real updates
    assert close(r0["rl"], weights) and close(r1["rl"], weights)     # rank 1 had no sample, then 4 of 5
    assert r0["norms"] == pytest.approx(norms, rel=1e-5) and r1["norms"] == r0["norms"]


def test_shards_are_the_planned_size(two_ranks, tiny_dir):
    """Each rank's fp32 parameter shard and AdamW state against the plan's 4P/N and 8P/N (FSDP pads dim 0)."""
    _, _, ranks = two_ranks
    rows = {item: b for item, b, _ in model.memory_plan(tiny_dir, 2, seq=64, micro_batch=1)["rows"]}
    for r in ranks:
        assert r["local"]["params"] == pytest.approx(rows["parameters, fp32 shard"], rel=0.01)
        assert r["local"]["adam"] == pytest.approx(rows["AdamW moments, fp32 shards"], rel=0.01)


def kept_by_one_layer(m, T, vocab):
    """Bytes autograd keeps for backward from decoder layer 1's forward (storages first seen there,
    weights excluded), in a bf16 forward of T tokens."""
    weights, seen, inside = {p.untyped_storage().data_ptr() for p in m.parameters()}, {}, [False]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen[ptr] = t.untyped_storage().nbytes() if inside[0] else 0
        return t
    layer = model.decoder_layers(m)[1]
    hooks = [layer.register_forward_pre_hook(lambda *a: inside.__setitem__(0, True)),
             layer.register_forward_hook(lambda *a: inside.__setitem__(0, False))]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.logprobs(m, torch.randint(0, vocab, (1, T)))
    for h in hooks:
        h.remove()
    return sum(seen.values())


@pytest.mark.parametrize("name", ["Qwen2.5-Math-1.5B", "Qwen3-1.7B"])
def test_plan_activations_match_what_autograd_keeps(name, tmp_path):
    """The plan's activation bytes per decoder layer against a real-shaped layer (2 layers, small vocab)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    T = 64
    cfg = dict(json.load(open(os.path.join(CONFIGS, name, "config.json"))), num_hidden_layers=2, vocab_size=512)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    act = [{item.split(",")[0]: b for item, b, _ in model.memory_plan(str(tmp_path), 1, seq=T, micro_batch=1,
                                                                        grad_ckpt=ckpt)["rows"]}["activations"]
           for ckpt in (False, True)]
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tmp_path)), dtype=torch.bfloat16).train()
    assert kept_by_one_layer(m, T, 512) == pytest.approx(act[0] / 2, rel=0.02)         # T x per-layer bytes
    (getattr(m, "activation_checkpointing_enable", None) or m.gradient_checkpointing_enable)({"use_reentrant": False})
    assert kept_by_one_layer(m, T, 512) == (act[1] - act[0] / 2) / 2 == T * 2 * cfg["hidden_size"]  # its input only


def test_plan_fits_and_does_not_fit(capsys):
    seven_b = os.path.join(CONFIGS, "Qwen2.5-Math-7B")
    with pytest.raises(SystemExit) as e:   # docs/scale.md's THOR-7B RL configuration on 8 x 80 GB
        rl.main(["--plan", "--model", seven_b, "--nproc", "8", "--gpu-memory", "79", "--engine", "vllm",
                 "--max-new-tokens", "3584", "--micro-batch", "2", "--grad-checkpointing"])
    assert e.value.code is None   # exit status 0
    out = capsys.readouterr().out
    assert "7.62B parameters" in out and "KV cache" in out and out.rstrip().endswith("fits")
    with pytest.raises(SystemExit) as e:   # the same 7B on one 24 GB GPU without checkpointing
        sft.main(["--plan", "--model", seven_b, "--nproc", "1", "--gpu-memory", "24", "--batch-size", "2"])
    reason = e.value.code
    assert isinstance(reason, str) and "\n" not in reason   # exit status 1, a one-line reason
    assert reason.startswith("does not fit: the update phase needs") and "--gpu-memory 24" in reason
    with pytest.raises(SystemExit, match="config.json not found"):
        sft.main(["--plan", "--model", os.path.join(CONFIGS, "no-such-model")])


def test_sharded_checkpoint_resumes_on_another_number_of_ranks(two_ranks, tiny_dir, one_process):
    """The state 2 ranks wrote as shards (torch.distributed.checkpoint), loaded by 1 process: the same
    weights bit for bit, and AdamW's state after the 3 steps."""
    out, _, (r0, _) = two_ranks
    m, _ = model.load_sharded(tiny_dir, one_process)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    meta = model.load_state(m, opt, os.path.join(out, "a", sft.STATE))
    assert meta["step"] == 3 and meta["world"] == 2
    loaded = dict(model.full_params(m))
    assert loaded.keys() == r0["sft"].keys() and all(torch.equal(loaded[k], r0["sft"][k]) for k in loaded)
    steps = {float(s["step"]) for s in opt.state.values()}
    assert steps == {3.0} and all(s["exp_avg_sq"].to_local().abs().sum() > 0 for s in opt.state.values())


def test_bf16_export_loads_in_transformers_with_the_same_greedy_tokens(two_ranks, tiny_dir):
    """model.save(dtype=bf16) from 2 ranks' shards: a model dir that transformers loads as bf16, equal to the
    trained weights rounded to bf16, tied embeddings kept, and the same greedy tokens as those weights."""
    from transformers import AutoModelForCausalLM
    out, _, (r0, _) = two_ranks
    exported = AutoModelForCausalLM.from_pretrained(os.path.join(out, "bf16"), dtype="auto")  # config.json's dtype
    assert exported.dtype == torch.bfloat16 and exported.config.tie_word_embeddings
    assert exported.lm_head.weight.data_ptr() == exported.model.embed_tokens.weight.data_ptr()
    params = dict(exported.named_parameters())
    assert params.keys() == r0["sft"].keys() and all(torch.equal(params[k], r0["sft"][k].bfloat16()) for k in params)
    ref = model.load(tiny_dir)[0]
    model.copy_params(ref, r0["sft"].items())
    ref = ref.bfloat16()
    ids = torch.tensor([[5, 17, 99, 3, 250, 7, 42, 11]])
    greedy = lambda m: m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert torch.equal(greedy(exported), greedy(ref))


def test_thinking_8b_update_phase_fits_45_gib(capsys):
    """runs/recipes/thinking_8b.sh's RL flags on 8 x 79 GiB: with chunked logprobs the update phase stays
    under 45 GiB (the whole fp32 logits alone took 28.7 GiB)."""
    with pytest.raises(SystemExit) as e:
        rl.main(["--plan", "--model", os.path.join(CONFIGS, "Qwen3-8B"), "--nproc", "8", "--gpu-memory", "79",
                 "--group-size", "16", "--max-new-tokens", "16384", "--micro-batch", "1", "--grad-checkpointing",
                 "--engine", "vllm", "--vllm-gpu-memory", "0.6", "--template", "thinking"])
    assert e.value.code is None
    out = capsys.readouterr().out
    update = float(next(line for line in out.splitlines() if "update phase" in line).split()[2])
    assert update <= 45 and "fp32 reduce-scatter buffers" in out and "whole: 28.7 GiB" in out


FAILING = """
import atexit, os, sys, time
sys.path.insert(0, {root!r})
import model, torch, torch.distributed as dist

def main():
    rank, world, dev = model.init_dist()
    if rank == 1:
        atexit.register(time.sleep, 600)   # a teardown that blocks, as vLLM's or NCCL's can on a dead peer
        raise RuntimeError("rank 1 fails mid-run")
    dist.barrier()                          # rank 0 waits in a collective for rank 1

model.exit_on_error(main)
"""


def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    """model.exit_on_error: the failing rank leaves at once (no teardown), so torchrun stops the job in
    seconds instead of waiting for a collective or a blocked teardown (600 s here)."""
    (tmp_path / "failing.py").write_text(FAILING.format(root=ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "failing.py")]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "rank 1 fails mid-run" in p.stderr
