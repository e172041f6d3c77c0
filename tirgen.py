"""
TIRGen (paper §2.2, Algorithm 1): problems.jsonl -> trajectories.jsonl -> sft.jsonl.

The actor (the policy itself, so the data is policy-aligned) writes the next reasoning step r_t,
at most L_step tokens, cut back to its last newline. The critic sees only that step, never the
problem or the answer: if the step computes something code should compute, it returns the step's
pure reasoning r_logic and one self-contained Python block a_t. The block runs in the sandbox and
r_logic + a_t + the real output o_t replace the step; the actor continues from there. Until
\\boxed{} or --max-steps, --attempts tries per problem; then the multi-stage filter and its report.
The file reads: prompts, Algorithm 1, the filter, then the agents (LLM and toy), files and the CLI.
The toy problems themselves are written by data/prepare_toy.py.

    python tirgen.py                    # toy default: rule-based toy agents, data/toy_train.jsonl
                                        #   -> out/toy_trajectories.jsonl -> out/toy_sft.jsonl
    python tirgen.py --actor out/policy --critic http://127.0.0.1:8000/v1 --template chat \\
        --data problems.jsonl --trajectories out/traj.jsonl --out out/sft.jsonl --attempts 4

--actor/--critic: "toy", a model dir run through model.py (--engine hf|vllm), or the URL of an
OpenAI-compatible server (POST .../v1/completions, e.g. `vllm serve Qwen/Qwen3-32B`: how a 32B
critic is served). All go through the same loop, `tirgen_one`. Problems run in a thread pool;
local models generate one request at a time (a lock), so for throughput serve them and pass URLs.
A rerun resumes: (id, sample) pairs already in the trajectories file are skipped.

Decisions (the paper is silent; the release is followed where it says something):
 1. Judge, ExtractLogic and ConvertToCode are one critic call (release). The critic's generation
    stops after its block, which is then run: numbers the critic wrote are never used. A reply
    without a parseable block, garbage included, is "no code": the actor's step stays.
 2. A failing block abandons the attempt (release); it is still written (finish="abandoned", with
    the error output) so that a rerun skips it and the report counts it.
 3. The actor generates plain text: a block it writes itself is not run (the format rule drops it).
    Every attempt is written; the filter keeps one per problem.
 4. A block is trivial unless it imports a library or has control flow; at most 40% of a sample's
    blocks may be trivial, so a lone trivial block fails (the release's ceil(0.4 n) passes it).
    Repetition is rewards.has_repetition, as in the RL reward, on the text minus output blocks.
 5. The toy default makes 1 attempt per problem to run in well under a minute on 2 cores (the
    release makes 4). Its agents err like weak LLMs do: see --toy-slip, --toy-words, --toy-bug; and its
    critic varies its code between library idioms (TOY_CODE), as an LLM critic does.
"""
import argparse
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

import model
from rewards import CODE_BLOCK, extract_answer, has_repetition, http_json, is_equiv, read_problems
from rewards import read_jsonl as jsonl_lines
from sandbox import Sandbox, format_observation


# -----------------------------------------------------------------------------
# Prompts: the actor's (paper App. E) and the critic's, one readable constant with a one-shot example

ACTOR_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

CRITIC_PROMPT = """\
Below is one step of someone's solution to a math problem. If the step calculates something that \
Python should calculate, rewrite it as:
1. the step's reasoning, in its own words, with the calculated values left out;
2. one self-contained ```python block that imports what it needs and print()s the values (prefer a \
library call such as math, sympy or numpy, or a loop, over bare arithmetic).
Write nothing after the block: it will be run and its real output shown. Do not solve more than \
the step does. If the step calculates nothing, reply exactly: no code

STEP:
A box holds 14 rows of 23 apples, so it holds 14 * 23 = 322 apples, and 5 boxes hold 5 * 322 = 1610 apples.
REWRITE:
A box holds 14 rows of 23 apples, and 5 boxes hold five times as many.
```python
import math
print(math.prod([5, 14, 23]))
```

STEP:
{step}
REWRITE:
"""

def parse_critic(reply):
    """The critic's reply -> (r_logic, code), or None for "no code". Robust by construction: the
    first closed ```python block with some code is a_t, the text before it is r_logic; anything
    else (garbage, an unclosed block, a stray fence before the block) means no code."""
    m = CODE_BLOCK.search(reply)
    if reply.strip().lower().startswith("no code") or m is None or not m.group(1).strip():
        return None
    r_logic = re.sub(r"^\s*REWRITE:", "", reply[:m.start()]).strip()  # an echoed label goes
    if "```" in r_logic:
        return None
    return r_logic, m.group(1).strip("\n").rstrip()


def actor_prompt(problem, wrap=None):
    """The actor prompt: ACTOR_INSTRUCTION + the question, in the chat template (wrap) or in the
    policy's raw conversation template with the instruction swapped."""
    user = ACTOR_INSTRUCTION + "\n" + problem
    return wrap(user) if wrap else model.RAW_TEMPLATE.replace(model.INSTRUCTION + "\n{problem}", user)


# -----------------------------------------------------------------------------
# Algorithm 1: one attempt on one problem. The same function for toy, model-dir and URL agents.


def tirgen_one(rec, actor, critic, sandbox, max_steps, rng):
    """Returns (τ, tool calls, tool errors, finish: boxed | eos | budget | abandoned).
    critic=None is the pure-CoT pass: the actor alone."""
    tau, calls = "", 0
    for _ in range(max_steps):
        r_t, finished = actor(rec, tau, rng)                       # r_t ~ π_actor(·|τ), |r_t| <= L_step
        if not finished and "\n" in r_t:
            r_t = r_t[:r_t.rindex("\n") + 1]                       # cut back to the last newline
        if not r_t.strip():
            return tau, calls, 0, "eos"
        rewrite = parse_critic(critic(r_t, rng)) if critic else None  # JudgeCodeSolvable: code or not
        if rewrite is None:
            tau, prose = tau + r_t, r_t                            # τ ← τ ⊕ r_t
        else:
            r_logic, a_t = rewrite                                 # ExtractLogic, ConvertToCode
            res = sandbox.run(a_t)                                 # o_t ← Sandbox(a_t): real output only
            calls += 1
            tau += (r_logic + "\n" if r_logic else "") + f"```python\n{a_t}\n```" + model.observation_text(
                format_observation(res))                           # τ ← τ ⊕ (r_logic, a_t, o_t)
            if not res.ok:
                return tau, calls, 1, "abandoned"                  # a failing critic block abandons the try
            prose = r_logic
        if "\\boxed{" in prose:                                    # IsSolved(τ)
            return tau, calls, 0, "boxed"
        if finished and rewrite is None:
            return tau, calls, 0, "eos"
    return tau, calls, 0, "budget"


def run_problem(rec, samples, actor, critic, sandbox, args, label):
    """Trajectory records for the attempts `samples` of one problem (seeded per id and sample)."""
    out = []
    for j in samples:
        tau, calls, errors, finish = tirgen_one(rec, actor, critic, sandbox, args.max_steps,
                                                random.Random(f"{args.seed}/{rec['id']}/{j}"))
        pred = extract_answer(tau)
        out.append({**rec, "response": tau, "pred": pred, "correct": pred is not None and is_equiv(pred, rec["answer"]),
                    "tool_calls": calls, "tool_errors": errors, "finish": finish, "model": label, "sample": j})
    if args.drop_cot_solved and out:  # paper §2.2 stage 3: does a pure-CoT pass already solve it?
        tau = tirgen_one(rec, actor, None, sandbox, args.max_steps, random.Random(f"{args.seed}/{rec['id']}/cot"))[0]
        pred = extract_answer(tau)
        for r in out:
            r["cot_correct"] = pred is not None and is_equiv(pred, rec["answer"])
    return out


# -----------------------------------------------------------------------------
# The multi-stage filter (paper §2.2): small pure predicates on a trajectory record, then balancing

EXECUTED = re.compile(r"```python\n(?:(?!```).)*?\n```\n```output\n(?:(?!```).)*?\n```\n", re.S)
MAX_TRIVIAL = 0.4  # share of a sample's blocks that may be trivial (paper: library call or control flow)


def not_abandoned(r):
    return r["finish"] != "abandoned"  # Alg. 1: not in D_raw


def format_ok(r):
    """Every ```python block closed and followed by the environment's output block, no other
    fence (so no model-written output block), and a non-empty \\boxed{} in the model's text."""
    body, n = EXECUTED.subn("", r["response"])
    return n == r["tool_calls"] and "```" not in body and "\\boxed{" in body and bool(extract_answer(body))


def trivial(code):
    return not re.search(r"^\s*(?:import|from)\s|\b(?:for|while|if)\b", code, re.M)


def code_quality_ok(r):
    """At least one call, every call succeeded, at most MAX_TRIVIAL of the blocks trivial."""
    codes = CODE_BLOCK.findall(r["response"])
    return r["tool_calls"] > 0 and r["tool_errors"] == 0 and sum(map(trivial, codes)) <= MAX_TRIVIAL * len(codes)


def correct(r):
    return r["correct"] is True  # graded with rewards.is_equiv when the trajectory was written


def no_repetition(r):
    return not has_repetition(re.sub(r"```output\n.*?```", "", r["response"], flags=re.S))


def cot_unsolved(r):
    return r.get("cot_correct") is not True


RULES = [("abandoned: critic code failed (Alg. 1)", not_abandoned), ("format", format_ok),
         ("code quality", code_quality_ok), ("correct final answer", correct), ("degenerate repetition", no_repetition)]


def multi_stage_filter(records, rules, keep_one_call, seed):
    """-> (SFT samples, [(stage, samples left)], samples before the call-round balancing)."""
    rows = [("raw trajectories", len(records))]
    for name, keep in rules:
        records = [r for r in records if keep(r)]
        rows.append((name, len(records)))
    rng = random.Random(seed)
    by_id = {}
    for r in sorted(records, key=lambda r: (r["id"], r["sample"])):
        by_id.setdefault(r["id"], []).append(r)
    one = [rng.choice(v) for _, v in sorted(by_id.items())]
    rows.append(("one sample per problem", len(one)))
    kept = [r for r in one if r["tool_calls"] != 1 or rng.random() < keep_one_call]  # balance call rounds
    rows.append((f"down-sample 1-call samples (keep {keep_one_call:.0%})", len(kept)))
    return kept, rows, one


def report(rows, before, kept):
    print("multi-stage filter (paper §2.2)           removed    left")
    for i, (name, n) in enumerate(rows):
        print(f"  {name:<40} {'' if i == 0 else rows[i - 1][1] - n:>7} {n:>7}")
    buckets = lambda rs: [sum(min(r["tool_calls"], 4) == c for r in rs) for c in (1, 2, 3, 4)]
    print("calls per sample      before balancing  after")
    for c, b, a in zip(("1", "2", "3", "4+"), buckets(before), buckets(kept)):
        print(f"  {c:>3} {b:>18} {a:>7}  {'#' * round(40 * a / max(1, len(kept)))}")
    print("length (characters)   samples")
    edges = [128 * 2 ** i for i in range(12)]
    lengths = [next(e for e in edges + [float("inf")] if len(r["response"]) < e) for r in kept]
    for e in sorted(set(lengths)):
        n = lengths.count(e)
        print(f"  < {e:<7} {n:>13}  {'#' * round(40 * n / len(kept))}")


# -----------------------------------------------------------------------------
# LLM agents: a backend gives complete(prompt, max_tokens, rng, stop) -> (text, finished) and wrap
# (the chat template, or None for raw text); the same agents serve model dirs and URLs.


def llm_actor(complete, wrap, L_step):
    def actor(rec, tau, rng):
        return complete(actor_prompt(rec["problem"], wrap) + tau, L_step, rng)  # |r_t| <= L_step
    return actor


def llm_critic(complete, wrap, max_tokens):
    def critic(step, rng):
        prompt = CRITIC_PROMPT.replace("{step}", step.strip())
        return complete(wrap(prompt) if wrap else prompt, max_tokens, rng, stop=["```output"])[0]
    return critic


def model_backend(path, engine, template, sandbox, sampling):
    """(complete, wrap) for a model dir through model.py's sampler (hf) or its vLLM engine."""
    m, tok = model.load(path) if engine == "hf" else (model.VLLM(path), None)
    tok = tok or m.tok
    lock = threading.Lock()  # neither the HF sampler nor vLLM's LLM object is thread-safe

    def complete(prompt, max_tokens, rng, stop=None):
        # max_tool_calls=0: a closed ```python block ends the generation unexecuted, as `stop` would
        ids = tok.encode(prompt, add_special_tokens=False)
        with lock:
            r = model.rollout(m, tok, [ids], sandbox, max_new_tokens=max_tokens, max_tool_calls=0,
                              seed=rng.randrange(2 ** 31), **sampling)[0]
        return tok.decode(r.response_ids, skip_special_tokens=True), r.finish == "eos"

    def wrap(text):  # chat and thinking models: the user turn of the chat template (the actor's own instruction)
        return model.chat_prompt(tok, text)
    return complete, wrap if template != "raw" else None


def endpoint_backend(url, sampling):
    """(complete, None) for an OpenAI-compatible /v1/completions server; raw-text prompts."""
    base = url.rstrip("/").removesuffix("/completions").removesuffix("/v1") + "/v1"
    name = http_json(base + "/models")["data"][0]["id"]  # the served model

    def complete(prompt, max_tokens, rng, stop=None):
        body = dict(model=name, prompt=prompt, max_tokens=max_tokens, temperature=sampling["temperature"],
                    top_p=sampling["top_p"], seed=rng.randrange(2 ** 31))
        if sampling["top_k"] > 0:
            body["top_k"] = sampling["top_k"]  # a vLLM extension of the OpenAI API
        if stop:
            body["stop"] = stop
        choice = http_json(base + "/completions", body)["choices"][0]
        return choice["text"], choice.get("finish_reason") == "stop"
    return complete, None


def build_agents(args, sandbox):
    """(actor, critic) from --actor/--critic: toy agents, model dirs or URLs (one backend per spec)."""
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    backend = {spec: endpoint_backend(spec, sampling) if spec.startswith(("http://", "https://"))
               else model_backend(spec, args.engine, args.template, sandbox, sampling)
               for spec in {args.actor, args.critic} - {"toy"}}  # one model even when it plays both roles
    actor = (toy_actor(args.toy_slip, args.toy_words) if args.actor == "toy"
             else llm_actor(*backend[args.actor], args.L_step))
    critic = (toy_critic(args.toy_bug) if args.critic == "toy"
              else llm_critic(*backend[args.critic], args.critic_max_tokens))
    return actor, critic


# -----------------------------------------------------------------------------
# Toy agents. An actor is actor(rec, tau, rng) -> (r_t, finished), a critic is critic(step, rng) ->
# reply text; the toy ones are rules whose replies take the same path as an LLM's.

TOY_SLIP, TOY_WORDED = 0.5, 0.1  # the toy actor's head-arithmetic slips and worded steps (--toy-slip, --toy-words)
TOY_PLANS = {  # the toy actor's computation steps: (lead, expression, true value); k = last result in τ
    "mul": [lambda a, k: ("The total is", f"{a[0]} * {a[1]}", a[0] * a[1])],
    "add": [lambda a, k: ("The total is", f"{a[0]} + {a[1]} + {a[2]}", sum(a))],
    "mod": [lambda a, k: ("The remainder is", f"{a[0]} % {a[1]}", a[0] % a[1])],
    "eq": [lambda a, k: ("So x is", f"({a[2]} - {a[1]}) / {a[0]}", (a[2] - a[1]) // a[0])],
    "mulmod": [lambda a, k: ("The number of pens is", f"{a[0]} * {a[1]}", a[0] * a[1]),
               lambda a, k: ("The remainder is", f"{k} % {a[2]}", k % a[2])],
}
TOY_WORDS = {"*": "times", "+": "plus", "%": "mod", "-": "minus", "/": "over"}
TOY_CODE = [  # the toy critic's code per computation it recognises: library calls (filter rule 2) in the idioms
    # an LLM critic varies between, one drawn per step. Each imports its own names and calls take their
    # own argument shapes (a list, or separate numbers), so a policy that mixes them up fails the way real
    # TIR code does: a missing import (np. after `import numpy`), wrong arguments (math.prod(a, b)), an
    # undefined name (solve without `x = symbols('x')`).
    (r"\d+(?: \* \d+)+", ["import math\nprint(math.prod([{nums}]))", "import numpy as np\nprint(np.prod([{nums}]))",
                          "from sympy import Mul\nprint(Mul({nums}))"]),
    (r"\d+(?: \+ \d+)+", ["import numpy\nprint(numpy.sum([{nums}]))", "import sympy\nprint(sympy.Add({nums}))",
                          "from functools import reduce\nimport operator\nprint(reduce(operator.add, [{nums}]))"]),
    (r"\d+ % \d+", ["import sympy\nprint(sympy.Mod({nums}))", "import numpy as np\nprint(np.mod({nums}))",
                    "import operator\nprint(operator.mod({nums}))"]),
    (r"\(\d+ - \d+\) / \d+", ["import sympy\nprint(sympy.Rational({0} - {1}, {2}))",
                               "from sympy import symbols, solve\nx = symbols('x')\n"
                               "print(solve({2}*x + {1} - {0}, x)[0])",
                               "import sympy\nx = sympy.Symbol('x')\n"
                               "print(sympy.solve(sympy.Eq({2}*x + {1}, {0}), x)[0])"]),
]
ARITH = re.compile(r"(\(?\d+(?: [-+*/%] \(?\d+\)?)+) = (-?\d+)")  # "a OP b = c", as the toy actor writes it


def toy_read(tau):
    """What the toy actor knows from τ: how many steps it has written (prose lines outside the
    blocks) and the last number outside code, i.e. a real output once a step has been spliced."""
    no_code = CODE_BLOCK.sub("", tau)
    prose = [line for line in re.sub(r"```output\n.*?```", "", no_code, flags=re.S).splitlines() if line.strip()]
    numbers = re.findall(r"-?\d+", no_code)
    return len(prose), int(numbers[-1]) if numbers else None


def toy_slip(value, rng):
    """A head-arithmetic mistake: one digit changed (never a new leading zero)."""
    s = list(str(value))
    i = rng.randrange(len(s))
    s[i] = rng.choice([d for d in "0123456789" if d != s[i] and (d != "0" or i > 0 or len(s) == 1)])
    return int("".join(s))


def toy_actor(slip, words):
    def actor(rec, tau, rng):
        stage, known = toy_read(tau)
        plan = TOY_PLANS[rec["kind"]]
        if stage >= len(plan):  # every step written: answer with the last result it knows
            return f"So the answer is \\boxed{{{known}}}.", True
        lead, expr, value = plan[stage](rec["args"], known)
        if rng.random() < slip:
            value = toy_slip(value, rng)
        if rng.random() < words:  # worded so that the critic finds no "a OP b = c" to compute
            return f"{lead} {' '.join(TOY_WORDS.get(w, w) for w in expr.split())}, which is {value}.\n", False
        return f"{lead} {expr} = {value}.\n", False
    return actor


def toy_critic(bug):
    def critic(step, rng):
        m = ARITH.search(step)
        idioms = m and next((t for pat, t in TOY_CODE if re.fullmatch(pat, m.group(1))), None)
        if not idioms:
            return "no code"
        nums = re.findall(r"\d+", m.group(1))
        code = rng.choice(idioms).format(*nums, nums=", ".join(nums))
        if rng.random() < bug:  # forgets the import, as real critics sometimes do: NameError
            code = code.split("\n", 1)[1]
        r_logic = step[:m.start()] + m.group(1) + step[m.end():]  # keep the logic, drop the head result
        return f"{r_logic.strip()}\n```python\n{code}\n```"
    return critic


# -----------------------------------------------------------------------------
# Files: JSONL readers that name the bad line, and the resumable writer


def read_jsonl(path, required, check=None):
    """The records of a trajectory file; a line missing a `required` field, or that `check` rejects
    (a reason, or None), stops with `file:line: reason`."""
    rows = []
    for i, r in jsonl_lines(path):
        missing = [k for k in required if k not in r]
        why = f"missing field {missing[0]!r}" if missing else check(r) if check else None
        if why:
            raise SystemExit(f"{path}:{i}: {why}")
        rows.append(r)
    return rows


def toy_problem_check(r):
    if r.get("kind") not in TOY_PLANS or not isinstance(r.get("args"), list):
        return "the toy actor needs a toy problem ('kind' and 'args'); use --actor MODEL for other data"


def pending(problems, path, attempts):
    """[(problem, attempts still to run)]: (id, sample) pairs already in `path` are skipped (resume)."""
    done = {(r["id"], r["sample"]) for r in read_jsonl(path, TRAJ_FIELDS)} if os.path.exists(path) else set()
    todo = [(p, [j for j in range(attempts) if (p["id"], j) not in done]) for p in problems]
    return [(p, s) for p, s in todo if s]


def generate(todo, path, actor, critic, sandbox, args, label):
    """Runs Algorithm 1 over the problems in a thread pool, appending and flushing each record."""
    pool = ThreadPoolExecutor(args.workers)
    try:
        futures = [pool.submit(run_problem, p, s, actor, critic, sandbox, args, label) for p, s in todo]
        with open(path, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="TIRGen", unit="problem") as bar:
            for fut in as_completed(futures):
                for r in fut.result():
                    f.write(json.dumps(r) + "\n")
                    f.flush()
                bar.update()
    finally:
        pool.shutdown(cancel_futures=True)


TRAJ_FIELDS = ("id", "answer", "response", "correct", "tool_calls", "tool_errors", "finish", "sample")

# -----------------------------------------------------------------------------
# CLI


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Data
    p.add_argument("--data", default="data/toy_train.jsonl", help="problems JSONL (id, problem, answer)")
    p.add_argument("--trajectories", default="out/toy_trajectories.jsonl",
                   help="raw trajectories JSONL (appended; resumable)")
    p.add_argument("--out", default="out/toy_sft.jsonl", help="filtered SFT samples JSONL (rewritten)")
    # Agents
    p.add_argument("--actor", default="toy", help="toy | model dir | URL of an OpenAI-compatible server")
    p.add_argument("--critic", default="toy", help="toy | model dir | URL of an OpenAI-compatible server")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="sampler for model dirs")
    p.add_argument("--template", choices=["raw", "chat", "thinking"], default="raw",
                   help="prompt template for model dirs")
    p.add_argument("--toy-slip", type=float, default=0.5, help="toy actor: chance a head computation is wrong")
    p.add_argument("--toy-words", type=float, default=0.1,
                   help="toy actor: chance a step is worded so the critic misses it")
    p.add_argument("--toy-bug", type=float, default=0.05, help="toy critic: chance its block forgets the import")
    # Generation (Algorithm 1)
    p.add_argument("--L-step", dest="L_step", type=int, default=512,
                   help="max tokens per actor step (paper: 512 non-reasoning, 4096 reasoning)")
    p.add_argument("--critic-max-tokens", type=int, default=1024, help="max tokens of a critic reply")
    p.add_argument("--max-steps", type=int, default=8, help="actor steps per attempt before giving up (the budget)")
    p.add_argument("--attempts", type=int, default=1, help="tries per problem, all written (release: 4)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature of the LLM agents")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--top-k", type=int, default=30, help="top-k sampling (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="seeds every attempt (per id and sample) and the filter")
    # Runtime
    p.add_argument("--workers", type=int, default=8, help="problems in flight (threads)")
    p.add_argument("--sandbox-workers", type=int, default=4, help="sandbox processes")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per code block")
    # Filter
    p.add_argument("--keep-one-call", type=float, default=0.5,
                   help="share of 1-call samples kept (call-round balancing)")
    p.add_argument("--drop-cot-solved", action="store_true",
                   help="run a pure-CoT pass (the actor alone) and drop problems it solves")
    args = p.parse_args(argv)
    # our files, or the shared training sets (gsm8k_train, math_train) as they are
    problems = read_problems(args.data, check=toy_problem_check if args.actor == "toy" else None)
    for path in (args.trajectories, args.out):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    todo = pending(problems, args.trajectories, args.attempts)
    t0 = time.time()
    if todo:
        with Sandbox(workers=args.sandbox_workers, timeout_s=args.timeout) as sandbox:
            actor, critic = build_agents(args, sandbox)
            generate(todo, args.trajectories, actor, critic, sandbox, args, f"actor={args.actor} critic={args.critic}")
    print(f"TIRGen: {len(problems)} problems x {args.attempts} attempts: ran {sum(len(s) for _, s in todo)} in "
          f"{time.time() - t0:.0f} s -> {args.trajectories}")

    ids = {r["id"] for r in problems}
    records = [r for r in read_jsonl(args.trajectories, TRAJ_FIELDS) if r["id"] in ids]
    lacking = [r for r in records if args.drop_cot_solved and "cot_correct" not in r]
    if lacking:  # written by a run without the flag: the stage would keep them all, silently
        raise SystemExit(f"{args.trajectories}: {len(lacking)} trajectories (e.g. id {lacking[0]['id']!r}) "
                         "were written without the pure-CoT pass that --drop-cot-solved needs; write them again into a "
                         "new --trajectories file with the flag, or drop it")
    rules = RULES + ([("pure CoT already solves it", cot_unsolved)] if args.drop_cot_solved else [])
    kept, rows, before = multi_stage_filter(records, rules, args.keep_one_call, args.seed)
    report(rows, before, kept)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    print(f"{len(kept)} SFT samples -> {args.out}")


if __name__ == "__main__":
    main()
