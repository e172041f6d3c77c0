"""rl.py: advantages, the clipped objective and NLL term by hand, step-level prefixes, loss masks, and
end-to-end runs on a small warmed-up model (3 iterations; resume bit for bit; 2-process DDP == 1)."""
import contextlib
import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import model
import rl
from test_model import ScriptedLM, prompts_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# -----------------------------------------------------------------------------
# Advantages, loss, NLL


def test_group_advantages_normal_zero_std_and_singleton():
    a = rl.group_advantages([1.0, 0.0, 0.0, 1.0])
    z = 0.5 / (math.sqrt(1 / 3) + 1e-6)  # mean 0.5, unbiased std sqrt(1/3)
    assert a == pytest.approx([z, -z, -z, z])
    assert rl.group_advantages([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]   # zero std: no signal
    assert rl.group_advantages([0.0, 0.0]) == [0.0, 0.0]
    assert rl.group_advantages([1.0]) == [0.0]                       # singleton: its own baseline
    assert rl.group_advantages([]) == []


def test_clip_objective_matches_hand_computation():
    # four tokens of one sample pair: ratios 1.5, 0.5 with A = +1, and 1.5, 0.5 with A = -1
    old = torch.zeros(2, 2)
    lp = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]])).requires_grad_()
    adv, mask = torch.tensor([1.0, -1.0]), torch.ones(2, 2)
    loss, clipped, _ = rl.pg_loss(lp, old=old, adv=adv, mask=mask, n_tok=4, n_pos=2, eps_low=0.2, eps_high=0.28,
                                  nll_alpha=0.0)
    # min(rho A, clip(rho, 0.8, 1.28) A): +1: min(1.5, 1.28) = 1.28, min(0.5, 0.8) = 0.5;
    #                                     -1: min(-1.5, -1.28) = -1.5, min(-0.5, -0.8) = -0.8
    assert loss.item() == pytest.approx(-(1.28 + 0.5 - 1.5 - 0.8) / 4)
    assert clipped == pytest.approx(2 / 4)
    loss.backward()
    # clipped tokens get no gradient; the others get -A * rho / n_tok (d rho / d lp = rho)
    assert lp.grad.flatten().tolist() == pytest.approx([0.0, -0.5 / 4, 1.5 / 4, 0.0])


def test_nll_term_only_on_positive_advantage_samples():
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.5, 0.5, 0.5]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])       # the third token of sample 0 is forced
    adv = torch.tensor([2.0, -1.0])
    loss, _, _ = rl.pg_loss(lp, old=lp.detach(), adv=adv, mask=mask, n_tok=5, n_pos=2, nll_alpha=0.5)
    pg = -(2.0 * 2 - 1.0 * 3) / 5                                  # ratio 1: -(sum of A over trained tokens) / n_tok
    nll = -(math.log(0.5) + math.log(0.25)) / 2                    # Eq. 5: sample 0's two trained tokens only
    assert loss.item() == pytest.approx(pg + 0.5 * nll)
    loss.backward()
    assert lp.grad[0, :2].tolist() == pytest.approx([-2.0 / 5 - 0.5 / 2] * 2)
    assert lp.grad[0, 2].item() == 0.0                              # forced: neither term
    assert lp.grad[1].tolist() == pytest.approx([1.0 / 5] * 3)     # negative advantage: no NLL


def test_per_sample_weight_and_alpha_of_the_step_ablations():
    # two positive-advantage samples, ratio 1: sample 1 is a step sample with weight w and alpha a_s
    lp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])).requires_grad_()
    mask, adv = torch.ones(2, 2), torch.tensor([1.0, 2.0])
    w, a, a_s = 0.5, 0.3, 0.1
    loss, _, _ = rl.pg_loss(lp, old=lp.detach(), adv=adv, mask=mask, n_tok=4, n_pos=4,
                            nll_alpha=torch.tensor([a, w * a_s]), weight=torch.tensor([1.0, w]))
    loss.backward()
    assert lp.grad[0].tolist() == pytest.approx([-1.0 / 4 - a / 4] * 2)           # the episode sample as before
    assert lp.grad[1].tolist() == pytest.approx([-w * 2.0 / 4 - w * a_s / 4] * 2)  # the step sample, scaled
    # weight 1 and one alpha for every sample: the same loss as the scalar path
    ones, _, _ = rl.pg_loss(lp, old=lp.detach(), adv=adv, mask=mask, n_tok=4, n_pos=4,
                            nll_alpha=torch.tensor([a, a]), weight=torch.ones(2))
    scalar, _, _ = rl.pg_loss(lp, old=lp.detach(), adv=adv, mask=mask, n_tok=4, n_pos=4, nll_alpha=a)
    assert ones.item() == pytest.approx(scalar.item())


def test_kl_term_is_zero_at_the_reference_and_grows_away_from_it():
    lp = torch.log(torch.tensor([[0.5, 0.5]]))
    mask, adv = torch.ones(1, 2), torch.zeros(1)
    same, _, _ = rl.pg_loss(lp, old=lp, adv=adv, mask=mask, n_tok=2, n_pos=0, nll_alpha=0.0, ref=lp, kl=0.1)
    far, _, _ = rl.pg_loss(lp, old=lp, adv=adv, mask=mask, n_tok=2, n_pos=0, nll_alpha=0.0, ref=lp - 1.0,
                            kl=0.1)
    assert same.item() == pytest.approx(0.0) and far.item() == pytest.approx(0.1 * (math.exp(-1) + 1 - 1))

# -----------------------------------------------------------------------------
# Step-level prefix (Eq. 6)


def test_prefix_cut_cases():
    assert rl.prefix_cut([1] * 40, start=30, l_suf=10) == 20           # L_suf tokens before the block
    assert rl.prefix_cut([1] * 40, start=30, l_suf=100) == 0           # never before the response start
    assert rl.prefix_cut([1] * 40, start=0, l_suf=100) == 0            # a failing block at the very start
    mask = [1] * 40 + [0] * 10 + [1] * 20                              # tool output o_{t-1} at [40, 50)
    assert rl.prefix_cut(mask, start=55, l_suf=100) == 50              # never into the previous output
    assert rl.prefix_cut(mask, start=65, l_suf=10) == 55
    assert rl.prefix_cut([0] * 5 + [1] * 20, start=10, l_suf=100) == 5  # nor into a given prefix


def two_calls_policy(prompt, response, attempt):
    """Writes a good block, reads its output, then a failing block, reads the error, then answers."""
    first = "Let me compute.\n```python\nprint(6*7)\n```"
    outs = response.split("```output\n")[1:]
    if not outs:
        return first
    if "\n```\n" not in outs[-1]:
        return response                    # tool output still being forced
    head = response[:response.rindex("\n```\n") + 5]
    return head + ("Now divide it by zero.\n```python\nprint(1/0)\n```" if len(outs) == 1 else "\\boxed{42}")


def test_step_prefix_from_a_real_rollout(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    lm = ScriptedLM(tok, two_calls_policy)
    r = model.rollout(lm, tok, prompts_for(tok, ["q"]), sandbox, max_new_tokens=300, temperature=0)[0]
    assert [c.ok for c in r.calls] == [True, False]
    bad = r.calls[1]
    assert tok.decode(r.response_ids[bad.start:bad.end]).lstrip(".\n ").startswith("```python\nprint(1/0)")
    # L_suf = 4: the prefix keeps the first step and its output and most of "Now divide it by zero."
    cut = rl.prefix_cut(r.mask, bad.start, l_suf=4)
    assert cut == bad.start - 4
    text = tok.decode(r.response_ids[:cut])
    assert text.startswith("Let me compute.\n```python\nprint(6*7)\n```\n```output\n42\n```\nNow") and "1/0" not in text
    # a large L_suf stops at the end of the previous tool output, not inside it
    cut = rl.prefix_cut(r.mask, bad.start, l_suf=1000)
    assert tok.decode(r.response_ids[:cut]).endswith("```output\n42\n```\n")
    # the regenerations continue that prefix, stop after one executed block, and train only on new tokens
    regen = model.rollout(lm, tok, [r.prompt_ids], sandbox, n=2, prefixes=[r.response_ids[:cut]], stop_after_call=True,
                          max_new_tokens=100, temperature=0)
    for g in regen:
        s = rl.to_sample(g, 1.0, rl.rewards.step_reward(g.calls[0].result))
        assert g.finish == "stop_after_call" and s.reward == 0.0
        assert s.ids[:len(r.prompt_ids) + cut] == r.prompt_ids + r.response_ids[:cut]
        assert s.mask == [0] * (len(r.prompt_ids) + cut) + [1] * (len(s.ids) - len(r.prompt_ids) - cut)

# -----------------------------------------------------------------------------
# collect(): the step-level groups, on scripted policies


class BranchLM(ScriptedLM):
    """A ScriptedLM whose policy returns a list of intended responses: the next token is drawn
    uniformly among those that continue them, so the rows of one group part where the scripts do.
    `regen` is True while collect() regenerates from step-level prefixes."""
    regen = False

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=0):
        logits, rows = self.read_context(input_ids, attention_mask, past_key_values)
        for b, (text, _) in enumerate(rows):
            prompt, _, response = text.partition("Assistant:\n")
            nxt = {self.tok.encode(t[len(response):], add_special_tokens=False)[0]
                   for t in self.policy(prompt, response, self.regen)
                   if t.startswith(response) and len(t) > len(response)}
            logits[b, 0, list(nxt or {self.tok.eos_token_id})] = 30.0
        return type("Out", (), {"logits": logits})()


def collect(lm, tok, sandbox, problems, monkeypatch, *flags):
    """rl.collect on problems (texts, answer 7) with the toy-sized args + flags; flags lm.regen on the 2nd rollout."""
    real = rl.model.rollout

    def rollout(*a, **kw):
        lm.regen = kw.get("prefixes") is not None
        return real(*a, **kw)
    monkeypatch.setattr(rl.model, "rollout", rollout)
    args = rl.parse_args(["--data", "unused", "--group-size", "4", "--max-new-tokens", "120", "--l-suf", "3", *flags])
    return rl.collect(lm, tok, sandbox, [{"problem": p, "answer": "7"} for p in problems], 0, args)


def code_of(tok, s):
    """The text a step sample's policy wrote (its mask-1 tokens)."""
    return tok.decode([t for t, m in zip(s.ids, s.mask) if m])


def test_each_step_prefix_gets_its_own_budget(tiny_dir, sandbox, monkeypatch):
    """A late failing call must not starve an early one's regenerations (they used to share
    max_new_tokens - max(cuts): 120 - 94 tokens, too few for the early block's 52)."""
    _, tok = model.load(tiny_dir)
    early = "Divide.\n```python\nx = [1, 2, 3, 4, 5, 6, 7, 8, 9]\nprint(sum(x) / 0)\n```"
    late = "Let me think about this. " * 6 + "Divide.\n```python\nprint(1/0)\n```"
    lm = BranchLM(tok, lambda prompt, response, regen: [early if "early" in prompt else late])
    samples, st = collect(lm, tok, sandbox, ["early", "late"], monkeypatch, "--no-episode-level",
                          "--no-dynamic-sampling")
    assert st["prefixes"] == 2 and st["step_rollouts"] == 8
    assert len(samples) == 8 and st["step_no_code"] == 0     # every regeneration wrote its block
    assert sum("sum(x) / 0" in code_of(tok, s) for s in samples) == 4


def test_regenerations_without_code_leave_the_step_group(tiny_dir, sandbox, monkeypatch):
    """A step sample is (r_suf, a_t): a regeneration that answers instead of writing code is dropped
    and counted, and the group is normalised over the regenerations that wrote code."""
    _, tok = model.load(tiny_dir)
    start = "Compute it now.\n"
    fail, fixed, answer = start + "```python\nprint(7/0)\n```", start + "```python\nprint(7)\n```", start + "\\boxed{7}"
    lm = BranchLM(tok, lambda prompt, response, regen: [fail, fixed, answer] if regen else [fail])
    samples, st = collect(lm, tok, sandbox, ["q"], monkeypatch, "--no-episode-level", "--group-size", "16")
    assert samples and all("```python" in code_of(tok, s) for s in samples)
    assert [s.adv for s in samples] == pytest.approx(rl.group_advantages([s.reward for s in samples]))
    assert {s.reward for s in samples} == {0.0, 1.0}
    assert st["prefixes"] == 1 and st["step_rollouts"] == 16 and st["step_no_code"] == 16 - len(samples) > 0


def test_a_group_without_failed_calls_still_gets_a_step_prefix(tiny_dir, sandbox, monkeypatch):
    """The release regenerates a random code step when nothing failed; --only-failed-steps turns it off."""
    _, tok = model.load(tiny_dir)
    ok = "Compute it now.\n```python\nprint(7)\n```"
    lm = BranchLM(tok, lambda prompt, response, regen: [ok, "Compute it now.\n```python\nprint(7/0)\n```"] if regen
                  else [ok + "\n```output\n7\n```\n\\boxed{7}"])
    samples, st = collect(lm, tok, sandbox, ["q"], monkeypatch, "--no-episode-level")
    assert st["prefixes"] == 1 and st["step_rollouts"] == 4 and st["step_groups_kept"] == 1
    for s in samples:   # regenerated from r_t^pre: the last L_suf tokens of r_t and the block
        text = code_of(tok, s)
        assert text.index("```python") > 0 and (ok.endswith(text) or ok.replace("7)", "7/0)").endswith(text))
    samples, st = collect(lm, tok, sandbox, ["q"], monkeypatch, "--no-episode-level", "--only-failed-steps")
    assert st["prefixes"] == 0 and samples == []



class NoSandbox:
    def run_many(self, codes):
        raise AssertionError("--no-tools ran code")


def test_no_tools_ends_a_code_block_unexecuted_with_reward_0(tiny_dir, monkeypatch):
    _, tok = model.load(tiny_dir)
    code, cot = "Compute.\n```python\nprint(7)\n```\n\\boxed{7}", "In my head: \\boxed{7}"
    lm = BranchLM(tok, lambda prompt, response, regen: [code, cot])
    samples, st = collect(lm, tok, NoSandbox(), ["q"], monkeypatch, "--no-tools", "--group-size", "8")
    assert st["calls"] == 0 and st["prefixes"] == 0                 # nothing ran, so no step level
    texts = [code_of(tok, s) for s in samples]
    assert len(samples) == 8 and {t.endswith("```") for t in texts} == {True, False}
    for s, t in zip(samples, texts):   # the block ends the rollout: reward 0 (not dropped as unboxed)
        assert (s.reward, s.adv > 0) == ((0.0, False) if t.endswith("```") else (1.0, True))

# -----------------------------------------------------------------------------
# Loss masks: no gradient from forced tokens


class TableLM(torch.nn.Module):
    """Logits are a parameter table, the same for every sequence: position p's hidden state is the one-hot
    e_p and the output head's column p is its logits (an HF causal LM's shape: a head after the hidden
    states, which model.logprobs slices). Changing the column that predicts token t changes that token's
    logprob and nothing else."""

    def __init__(self, T, V):
        super().__init__()
        self.config = type("Config", (), {})()
        self.head = torch.nn.Linear(T, V, bias=False)
        torch.nn.init.normal_(self.head.weight)

    @property
    def device(self):
        return self.head.weight.device

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        B, L = input_ids.shape
        hidden = torch.eye(self.head.in_features)[None, :L].expand(B, -1, -1)
        return type("Out", (), {"logits": self.head(hidden)})()


def test_no_gradient_from_forced_tokens(tiny_dir, sandbox):
    _, tok = model.load(tiny_dir)
    # a real rollout: its mask is 0 on the prompt and on the forced tool output
    r = model.rollout(ScriptedLM(tok, two_calls_policy), tok, prompts_for(tok, ["q"]), sandbox,
                      max_new_tokens=300, temperature=0)[0]
    s = rl.to_sample(r, 1.0, 1.0)
    obs = tok.encode(model.observation_text("42"), add_special_tokens=False)
    out0 = len(r.prompt_ids) + r.calls[0].end
    assert s.ids[out0:out0 + len(obs)] == obs and s.mask[out0:out0 + len(obs)] == [0] * len(obs)
    assert s.mask[:len(r.prompt_ids)] == [0] * len(r.prompt_ids)
    s2 = rl.Sample(s.ids, s.mask, -0.5, 0.0)
    torch.manual_seed(0)
    lm = TableLM(len(s.ids), len(tok))

    def grad():
        lm.head.weight.grad = None
        lp = rl.token_logprobs(lm, [s, s2], 1.0)
        mask = rl.padded([s, s2], "mask", "cpu").float()
        loss, _, _ = rl.pg_loss(lp, old=old, adv=torch.tensor([s.adv, s2.adv]), mask=mask, n_tok=mask.sum().item(),
                                n_pos=sum(s.mask), nll_alpha=0.01)
        loss.backward()
        return lm.head.weight.grad.T.clone()  # (T, V): row p is position p's logits
    with torch.no_grad():
        old = rl.token_logprobs(lm, [s, s2], 1.0) - 0.1   # ratio e^0.1: inside the clip range
    g1 = grad()
    forced = [t - 1 for t in range(1, len(s.ids)) if s.mask[t] == 0]   # rows whose logits predict forced tokens
    trained = [t - 1 for t in range(1, len(s.ids)) if s.mask[t] == 1]
    with torch.no_grad():
        lm.head.weight[:, forced] = torch.randn(len(tok), len(forced)) * 5
    g2 = grad()
    assert torch.equal(g1, g2)
    assert g1[forced].abs().sum() == 0 and g1[trained].abs().sum() > 0

# -----------------------------------------------------------------------------
# End to end on a small model warmed up to write (sometimes failing, sometimes wrong) code


STEPS = 300


@contextlib.contextmanager
def one_thread():
    """The tiny models here run several times faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A 2-layer model trained for a few steps on one tiny task: 'What is 3 + 4?' solved with a code
    block that fails 30% of the time (prnt) and an answer that is wrong 30% of the time, so that
    its rollouts give mixed rewards at both levels. Returns (model dir, problems JSONL)."""
    d = tmp_path_factory.mktemp("warm")
    out, data = str(d / "warm"), str(d / "problems.jsonl")
    with open(data, "w") as f:
        f.writelines(json.dumps({"id": f"t{i}", "problem": "What is 3 + 4?", "answer": "7"}) + "\n" for i in range(64))
    model.build_tiny(out, seed=0, hidden=64, layers=2, pretrain_steps=0)
    m, tok = model.load(out)
    rng, seqs = random.Random(0), []
    for _ in range(100):
        bad, wrong = rng.random() < 0.3, rng.random() < 0.3
        obs = "NameError: name 'prnt' is not defined" if bad else "7"
        resp = (f"Compute.\n```python\n{'prnt' if bad else 'print'}(3 + 4)\n```" + model.observation_text(obs)
                + ("\\boxed{8}" if wrong else "\\boxed{7}"))
        p, r = (model.encode_prompt(tok, "What is 3 + 4?"),
                tok.encode(resp, add_special_tokens=False) + [tok.eos_token_id])
        seqs.append((p + r, [0] * len(p) + [1] * len(r)))
    torch.manual_seed(0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    with one_thread():
        for _ in range(STEPS):
            batch = rng.sample(seqs, 8)
            ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s, _ in batch], batch_first=True)
            resp = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for _, r in batch], batch_first=True)
            loss = -(model.logprobs(m, ids) * resp).sum() / resp.sum()   # response tokens only
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.save(m, tok, out)
    return out, data


def run_args(warm, out, *extra):
    return ["--model", warm[0], "--data", warm[1], "--out", out,
            "--group-size", "4", "--batch-problems", "4", "--updates-per-batch", "2", "--lr", "1e-3",
            "--max-new-tokens", "64", "--l-suf", "3", "--max-refills", "1", "--micro-batch", "16",
            "--save-every", "0", "--sandbox-workers", "1", "--tool-timeout", "5", *extra]


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.slow
def test_end_to_end_three_iterations_then_resume_bit_for_bit(warm, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with one_thread():
        assert rl.main(run_args(warm, a, "--iterations", "3"))[0] == 3
        rl.main(run_args(warm, b, "--iterations", "2"))
        rl.main(run_args(warm, b, "--iterations", "3", "--resume"))
    log = [json.loads(line) for line in open(os.path.join(a, "log.jsonl"))]
    assert [r["iteration"] for r in log] == [1, 2, 3] and sum(r["updates"] for r in log) > 0
    assert sum(r["step_prefixes"] for r in log) > 0 and sum(r["step_samples"] for r in log) > 0
    # the step samples' share of the loss's tokens and of the NLL's, logged per iteration
    assert all(0 <= r["step_token_share"] <= 1 and 0 <= r["step_nll_share"] <= 1 for r in log)
    assert all((r["step_token_share"] > 0) == (r["step_samples"] > 0) for r in log)
    w0, wa = weights(warm[0]), weights(a)
    assert any(not torch.equal(w0[k], wa[k]) for k in w0)          # the weights moved
    m, tok = model.load(a)                                          # a loadable model dir
    assert sum(q.numel() for q in m.parameters()) > 0 and os.path.exists(a + "_curves.png")
    # 2 iterations, then --resume to 3 == 3 iterations straight, bit for bit
    wb = weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [json.loads(line) for line in open(os.path.join(b, "log.jsonl"))][-1]["pos"] == log[-1]["pos"]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_first_update(warm, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    outs, procs = {n: str(tmp_path / f"ddp{n}") for n in (1, 2)}, {}
    for n in (1, 2):  # both runs at once; --standalone gives each its own rendezvous port
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               os.path.join(ROOT, "rl.py"), *run_args(warm, outs[n], "--iterations", "1", "--updates-per-batch", "1",
                                                     "--rollout-chunk", "2", "--keep-failed-episodes")]
        procs[n] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for p in procs.values():
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, out[-3000:]
    logs = [json.loads(open(os.path.join(outs[n], "log.jsonl")).readline()) for n in (1, 2)]
    for k in ("accuracy", "tool_success", "step_prefixes", "episode_samples", "step_samples", "updates", "pos",
              "grad_norm"):
        assert logs[0][k] == pytest.approx(logs[1][k], rel=1e-5), k   # the same rollouts, split over two ranks
    assert logs[0]["updates"] == 1 and logs[0]["episode_samples"] > 0 and logs[0]["step_samples"] > 0
    w0, w1, w2 = weights(warm[0]), weights(outs[1]), weights(outs[2])
    norm = lambda d: math.sqrt(sum(float((v ** 2).sum()) for v in d.values()))
    moved = norm({k: w1[k] - w0[k] for k in w0})
    assert moved > 0.1                                               # ~lr per weight (Adam's first step)
    assert norm({k: w1[k] - w2[k] for k in w0}) < 1e-4 * moved       # float summation order only
