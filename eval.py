"""
eval.py: score a model the way THOR reports it: math benchmarks (paper §7, Tables 1, 3, 5, App. D.1) and
the code benchmarks of Fig. 5 (EvalPlus HumanEval+ and MBPP+, pass@1).

In:  benchmark JSONL files (--data-dir, default ../shared/data; the toy test set data/toy_test.jsonl
     is the default benchmark) and a model dir, or an existing predictions JSONL (--predictions).
Out: <out>/predictions.jsonl  one trajectory record per (problem, sample) (docs/design.md) plus
                              benchmark, sample, tokens, corrections, finish; code tasks add solution,
                              passed_base, passed_plus, check_error; --judge adds judge. Appended and flushed
                              per record, so a rerun resumes: (benchmark, id, sample) already there are skipped
     <out>/report.json        per benchmark n, k, avg@k, pass@k, maj@k, tokens and tool statistics, the
                              key-insight table, the average over benchmarks, and the command
     a printed table, one row per benchmark in the paper's Table 1 order, then the average.

    python eval.py                                   # toy default: toy test set, out/rl | out/sft | out/tiny, k=4
    python eval.py --model DIR --benchmarks paper    # the paper's six: MATH500 AIME24 AIME25 AMC23 Minerva Olympiad
    python eval.py --model DIR --benchmarks code     # Fig. 5's HumanEval+ and MBPP+ (base and plus tests)
    python eval.py --model DIR --benchmarks paper,gsm8k --judge http://host:8000/v1   # and an LLM judge
    python eval.py --model DIR --benchmarks math500,aime24 --k 4 --engine vllm --batch-size 512 --reasoning
    python eval.py --model DIR --benchmarks paper --self-correction 4   # T6 of Table 3 = THOR rows of Table 1
    python eval.py --predictions F --benchmarks math500   # score existing predictions, no model
    python eval.py --check-data                      # every code benchmark's reference solutions pass its tests

Metrics (accuracies in %), on the first k samples of a problem. Avg@k, the paper's metric: mean accuracy
over the k samples of a problem, averaged over problems. pass@k: Chen et al. (2021)'s unbiased estimator
1 - C(n-c, k) / C(n, k) for n samples (all of a problem's, n >= k) of which c are correct. maj@k: majority
vote over the extracted answers of the first k samples, equivalent answers (1/2, 0.5, \\frac{1}{2}) forming
one group; a tie goes to the answer seen first; no answer is no vote. Tokens per answer: tokens the policy
sampled, rolled-back self-correction attempts included (as in Table 5), tool output excluded. Tool calls per
answer; call success rate = succeeded / executed calls; code ratio = share of answers with a call (Fig. 4).

Decisions:
 1. Grading is rule-based (rewards.is_equiv on the last \\boxed{}); the paper used a Qwen3-32B judge,
    whose prompt is not released (--judge adds one, decision 7). Every scoring re-grades from `response`
    (or `pred`), never trusting a stored `correct`. Gold answers are read by rewards.read_problems, the
    reader every stage uses: math500/aime/amc23 `answer` (amc23 floats 27.0 -> "27"), minerva the last
    \\boxed{} of `solution`, olympiadbench `final_answer` joined with ", " and without $, gsm8k the text
    after "####" without thousands separators.
 2. Key insight (App. D.1, Table 4): an answer's code *succeeded* if it made at least one call and all
    its (kept) calls succeeded, *failed* if at least one call failed. Answers with no call are left out
    of the 2x2 table and reported apart (no_code); the paper leaves this open, but its table holds 5956
    answers, fewer than the 6188 = 4 x 1547 of its six benchmarks. With self-correction a call that
    failed and was rolled back is not a kept call. chi2 is Pearson's, 2x2, without continuity correction (paper: 336.3).
 3. Default token budget: 4096 new tokens, 16384 with --reasoning (paper §7); the toy benchmark uses
    256 (a toy solution is under 150 tokens and the tiny model's context is 2048).
 4. The average is unweighted over the benchmarks in the table, like the paper's Avg column: over the
    math benchmarks when there are any, else over the code ones; the pooled key-insight table likewise.
 5. Seeds: each benchmark's problems are cut into fixed chunks of --batch-size in file order, and a
    chunk's sampling seed derives from (--seed, benchmark, its first id). A rerun samples a partly written
    chunk again whole and writes only what is missing, so a resumed run writes the records an uninterrupted
    one would (model.rollout takes one seed per call; a seed per (problem, sample) needs one per row there).
 6. Code tasks (Fig. 5; zero-shot, as the paper). The model sees the task's prompt (HumanEval: signature
    and docstring; MBPP+: the description and one assert) in a ```python fence, then CODE_INSTRUCTION,
    through the same prompt template as math; it reasons with tool calls as for math. Its solution is
    the last ```python block that defines the entry point (rewards.extract_code); it is checked in a
    sandbox by EvalPlus's rule (rewards.check_code): base = HumanEval's / MBPP's inputs, plus = base and
    the extra inputs; the plain HumanEval file runs its check(). A verdict is stored with the solution
    it belongs to and checked again only when the solution changes (checking runs every test; a verdict
    without check_error was not written here and is checked again). maj@k does not apply. LiveCodeBench,
    the third code benchmark of Fig. 5, has no offline copy: not run.
 7. --judge URL (optional, math only): an OpenAI-compatible chat endpoint (e.g. `vllm serve` of an
    instruct model) is asked, with JUDGE_PROMPT at temperature 0, whether each extracted answer equals the
    gold one. The rule-based grade stays the table's accuracy; the judge's Avg@k and the agreement are
    reported beside it. A judgement is cached in its prediction (with the judge model, prompt and answer
    it was about), so a rerun does not ask again; samples without an answer are wrong without asking.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shlex
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from tqdm import tqdm

from rewards import (CHECK_MEMORY_MB, CHECK_TIMEOUT_S, check_code, extract_answer, extract_code, grade_many,
                     http_json, read_code_tasks, read_jsonl, read_problems, repair_jsonl)
# torch and model.py are imported by the two functions below that need a model: scoring a predictions
# file needs neither, and importing torch costs seconds per process (runs/ladder.py scores 30 files).

ROOT = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# CLI arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--benchmarks", default=None,
                   help=f"comma-separated, from {','.join(ORDER)}, and the presets 'paper' (the six of Table 1) "
                        "and 'code' (HumanEval+, MBPP+) (default: toy; with --predictions: every benchmark in "
                        "the file)")
    g.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder of the benchmark JSONL files")
    g.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    g.add_argument("--check-data", action="store_true",
                   help="run every reference solution of the code benchmarks (--benchmarks, default all) against "
                        "its tests and exit")
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", default=None, help="model dir (default: out/rl, else out/sft, else the tiny model)")
    g.add_argument("--predictions", default=None, help="score this predictions JSONL instead of running a model")
    g.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="hand-written KV-cached sampler or vLLM")
    g.add_argument("--batch-size", type=int, default=32,
                   help="prompts per rollout call, each sampled k times (32 suits the CPU sampler; vLLM wants ~512)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 by default: the tiny model gains nothing from more, and on a shared "
                        "CPU spinning threads made sampling ~9x slower")
    g.add_argument("--out", default=None, help="output folder (default: out/eval/<model or predictions name>)")
    g.add_argument("--judge", default=None, metavar="URL",
                   help="also grade math answers with an LLM judge: an OpenAI-compatible chat endpoint, "
                        "e.g. http://host:8000/v1 of `vllm serve` (decision 7)")
    g = p.add_argument_group("generation (paper §7: Avg@4, temperature 0.6, top-p 1.0, 4k / 16k tokens, 10 calls)")
    g.add_argument("--k", type=int, default=4, help="samples per problem (Avg@k, pass@k, maj@k)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0: greedy)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, default=0, help="top-k sampling, 0 = off")
    g.add_argument("--reasoning", action="store_true",
                   help="reasoning (thinking) model: 16384 new tokens and the thinking template by default")
    g.add_argument("--max-new-tokens", type=int, default=None, help="tokens per answer, not per turn: every response "
                   "token, tool output included (rolled-back attempts are not) (default 4096/16384)")
    g.add_argument("--template", choices=["raw", "chat", "thinking"], default=None,
                   help="prompt template (model.build_prompt); default raw, thinking with --reasoning")
    g.add_argument("--max-tool-calls", type=int, default=10, help="code executions per answer, retries included")
    g.add_argument("--tool-timeout", type=float, default=10.0, help="sandbox wall-clock limit per call, seconds")
    g.add_argument("--self-correction", type=int, default=0, metavar="N_corr",
                   help="paper §2.4: retries per failing call, rolling back L_suf tokens (T6 uses 4; 0 = off)")
    g.add_argument("--l-suf", type=int, default=500,
                   help="L_suf: reasoning tokens dropped before a failed call (500 in the released inference code)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (a chunk's seed derives from it, decision 5)")
    args = p.parse_args(argv)
    args.template = args.template or ("thinking" if args.reasoning else "raw")
    return args

# -----------------------------------------------------------------------------
# Benchmarks: rewards.read_problems / read_code_tasks map each file's own fields to ours


BENCHMARKS = {
    "math500": "math500.jsonl", "aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "amc23": "amc23.jsonl",
    "minerva": "minerva_math.jsonl", "olympiadbench": "olympiadbench.jsonl", "gsm8k": "gsm8k_test.jsonl",
    "toy": "toy_test.jsonl", "humaneval_plus": "humaneval_plus.jsonl", "mbpp_plus": "mbpp_plus.jsonl",
    "humaneval": "humaneval.jsonl",
}
ORDER = list(BENCHMARKS)  # the paper's Table 1 column order, then the others
PAPER = ORDER[:6]
CODE = ["humaneval_plus", "mbpp_plus", "humaneval"]
PRESETS = {"paper": PAPER, "code": CODE[:2]}  # Fig. 5 also has LiveCodeBench, which has no offline copy
NAMES = dict(math500="MATH500", aime24="AIME24", aime25="AIME25", amc23="AMC23", minerva="Minerva",
             olympiadbench="Olympiad", gsm8k="GSM8K", toy="toy", humaneval_plus="HumanEval+", mbpp_plus="MBPP+",
             humaneval="HumanEval")
TOY_MAX_NEW_TOKENS = 256
CODE_INSTRUCTION = ("This is a programming task, with no \\boxed{{}} answer: write the Python function "
                    "`{entry_point}`. You may run code to test it (each ```python block is run and you see its "
                    "output). End with the complete solution in one last ```python block that defines "
                    "`{entry_point}` and imports what it needs: that block is graded against hidden tests.")
_data = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
DEFAULT_DATA_DIR = _data if os.path.isdir(_data) else None


def benchmark_names(spec):
    """--benchmarks: names and presets, in the order given, each once."""
    names = []
    for x in filter(None, (spec or "").split(",")):
        if x == "livecodebench":
            raise SystemExit("livecodebench: no offline copy in --data-dir (Fig. 5 reports it; see docs/grading.md)")
        for b in PRESETS.get(x, [x]):
            if b not in BENCHMARKS:
                raise SystemExit(f"unknown benchmark {b!r} (choose from {', '.join(ORDER)}, "
                                 "or the presets paper, code)")
            names += [] if b in names else [b]
    return names


def load_benchmark(name, data_dir, tasks=False):
    """[{id, problem, answer}] of a benchmark in file order; a code benchmark gives {id, problem, entry_point},
    or with tasks=True its full tasks (tests included). The toy test set lives in data/."""
    if name != "toy" and data_dir is None:
        raise SystemExit(f"benchmark {name} needs --data-dir (../shared/data was not found)")
    path = os.path.join(ROOT if name == "toy" else data_dir, "data" if name == "toy" else "", BENCHMARKS[name])
    if name in CODE:
        ts = read_code_tasks(path)
        return ts if tasks else [dict(id=t["id"], entry_point=t["entry_point"], problem="```python\n"
                                      + t["prompt"].strip("\n") + "\n```\n" + CODE_INSTRUCTION.format(**t)) for t in ts]
    return [dict(id=p["id"], problem=p["problem"], answer=p["answer"]) for p in read_problems(path)]

# -----------------------------------------------------------------------------
# Generation: model.rollout over fixed chunks of prompts, appended to the predictions file


def token_budget(args, benchmark):
    """Paper §7: 4,096 tokens for non-reasoning models, 16,384 for reasoning ones (decision 3 for toy)."""
    if args.max_new_tokens:
        return args.max_new_tokens
    return 16384 if args.reasoning else TOY_MAX_NEW_TOKENS if benchmark == "toy" else 4096


def chunk_seed(seed, benchmark, first_id):
    """Decision 5: a chunk's seed depends on what it holds, not on what an earlier run left to do."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{benchmark}/{first_id}".encode()).digest()[:4], "big")


def written_samples(path, model_name):
    """{(benchmark, id, sample)} already in the predictions file; refuses a file of another model."""
    done = set()
    if os.path.exists(path):
        repair_jsonl(path)  # a run killed mid-write leaves a torn last line
        for n, r in read_jsonl(path):
            if r.get("model") != model_name:
                raise SystemExit(f"{path}:{n}: a prediction of model {r.get('model')!r}, not {model_name!r}; "
                                 "pass another --out")
            done.add((r.get("benchmark"), str(r.get("id")), r.get("sample")))
    return done


def generate(args, problems, pred_path):
    """Sample k answers per problem with tool calls and write them; chunks whose (benchmark, id, sample)
    records are all in pred_path are skipped, so an interrupted run resumes (decision 5)."""
    done = written_samples(pred_path, args.model)
    chunks = [(b, ps[i:i + args.batch_size]) for b, ps in problems.items() for i in range(0, len(ps), args.batch_size)]
    chunks = [(b, c) for b, c in chunks if any((b, p["id"], s) not in done for p in c for s in range(args.k))]
    if not chunks:
        return
    import torch
    import model
    from sandbox import Sandbox
    torch.set_num_threads(args.threads)
    if args.engine == "vllm":
        engine = model.VLLM(args.model)
        tok = engine.tok
    else:
        engine, tok = model.load(args.model)
    model.build_prompt(tok, "", args.template)  # a template this tokenizer lacks stops here, before the progress bar
    bar, progress = model.progress_bar(sum(len(c) for _, c in chunks) * args.k, "eval")
    with Sandbox(workers=2, timeout_s=args.tool_timeout) as sb, open(pred_path, "a", encoding="utf-8") as f:
        for b, chunk in chunks:
            rollouts = model.rollout(
                engine, tok, [model.encode_prompt(tok, p["problem"], args.template) for p in chunk], sb,
                n=args.k, max_new_tokens=token_budget(args, b), temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, seed=chunk_seed(args.seed, b, chunk[0]["id"]), max_tool_calls=args.max_tool_calls,
                n_corr=args.self_correction, l_suf=args.l_suf, progress=progress)
            # rollouts are in prompt order: prompt 0's samples 0..k-1, then prompt 1's ...
            if b in CODE:  # checked later, once per solution (decision 6)
                graded = [{} for _ in rollouts]
            else:
                preds = [extract_answer(r.text) for r in rollouts]
                correct = grade_many([(pred, chunk[j // args.k]["answer"]) for j, pred in enumerate(preds)])
                graded = [dict(pred=pred, correct=ok) for pred, ok in zip(preds, correct)]
            for j, r in enumerate(rollouts):
                p, s = chunk[j // args.k], j % args.k
                if (b, p["id"], s) in done:  # a partly written chunk is sampled again; its kept records stay
                    continue
                rec = dict(p, benchmark=b, sample=s, response=r.text, **graded[j], tool_calls=r.tool_calls,
                           tool_errors=r.tool_errors, corrections=r.corrections, tokens=r.generated,
                           finish=r.finish, model=args.model)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
    bar.close()

# -----------------------------------------------------------------------------
# Verdicts kept in the predictions file: code checks (decision 6) and LLM judgements (decision 7)


def code_sandbox():
    """The sandbox that runs tests: longer and larger cells than tool calls (rewards.check_code)."""
    from sandbox import Sandbox
    return Sandbox(workers=min(8, os.cpu_count() or 1), timeout_s=CHECK_TIMEOUT_S, memory_mb=CHECK_MEMORY_MB)


def check_solutions(preds, data_dir):
    """Check the code records whose verdict is missing or belongs to another solution; True if any."""
    todo, tasks = [], {}
    for b in [b for b in preds if b in CODE]:
        tasks[b] = {t["id"]: t for t in load_benchmark(b, data_dir, tasks=True)}
        for i, rs in preds[b].items():
            if i not in tasks[b]:
                raise SystemExit(f"{BENCHMARKS[b]}: no task {i!r} (a prediction's id)")
            for r in rs:
                sol = extract_code(r["response"], tasks[b][i]["entry_point"]) if "response" in r else r.get("solution")
                if "check_error" not in r or r.get("solution") != sol:  # check_error: a verdict of ours
                    todo.append((b, r, sol))
    if not todo:
        return False
    t0 = time.time()
    with code_sandbox() if any(sol is not None for _, _, sol in todo) else nullcontext() as sb:
        verdicts = check_code(sb, [(tasks[b][r["id"]], sol) for b, r, sol in todo])
    for (b, r, sol), v in zip(todo, verdicts):
        r.update(solution=sol, passed_base=v["passed_base"], passed_plus=v["passed_plus"], check_error=v["error"],
                 correct=v["passed_base"] if v["passed_plus"] is None else v["passed_plus"])
    print(f"checked {len(todo)} code solutions in {time.time() - t0:.0f} s")
    return True


JUDGE_PROMPT = """You are grading the final answer to a math problem against the reference answer.

Problem:
{problem}

Reference answer: {answer}
Final answer to grade: {pred}

Is the final answer mathematically equivalent to the reference answer? The form may differ (fractions or \
decimals, LaTeX, units, the order of a set's elements); do not solve the problem yourself. Reply with one word: \
YES or NO."""
JUDGE_ID = hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:8]  # a cached judgement names the prompt it answered
JUDGE_TRIES, JUDGE_TIMEOUT_S, JUDGE_WORKERS = 3, 120.0, 8


def judge_verdict(reply):
    """True/False from the judge's reply (a thinking model's <think> part skipped), None if it says neither."""
    words = re.findall(r"\b(YES|NO)\b", (reply or "").rsplit("</think>", 1)[-1].upper())
    return words[-1] == "YES" if words else None


def judge(preds, url):
    """Ask the judge about every math sample with an answer and no judgement cached for it."""
    base = url.rstrip("/").removesuffix("/chat/completions").removesuffix("/v1") + "/v1"
    get = lambda url, body=None: http_json(url, body, tries=JUDGE_TRIES, timeout_s=JUDGE_TIMEOUT_S, flag="--judge")
    name = get(base + "/models")["data"][0]["id"]  # the served model
    key = dict(model=name, prompt=JUDGE_ID)
    todo = []
    for b in [b for b in preds if b not in CODE]:
        for r in (r for rs in preds[b].values() for r in rs):
            pred = extract_answer(r["response"]) if "response" in r else r.get("pred")
            cached = {k: v for k, v in r.get("judge", {}).items() if k != "verdict"}
            if pred is not None and cached != dict(key, pred=pred):
                todo.append((r, pred))

    def ask(item):
        r, pred = item
        content = JUDGE_PROMPT.format(problem=r.get("problem", "(not given)"), answer=r["answer"], pred=pred)
        reply = get(base + "/chat/completions", dict(model=name, temperature=0, max_tokens=1024,
                                                      messages=[{"role": "user", "content": content}]))
        r["judge"] = dict(key, pred=pred, verdict=judge_verdict(reply["choices"][0]["message"]["content"]))

    ex = ThreadPoolExecutor(JUDGE_WORKERS)
    try:
        list(tqdm(ex.map(ask, todo), total=len(todo), desc=f"judge {name}", unit="answer", disable=not todo))
    finally:  # a judge that stops answering stops the run; requests not yet sent are not sent
        ex.shutdown(cancel_futures=True)


def rewrite_jsonl(path, records):
    """Write the records back with their new verdicts (atomically: a kill leaves the old file)."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)

# -----------------------------------------------------------------------------
# Metrics: pure functions of per-sample outcomes


def pass_at_k(n, c, k):
    """Chen et al. (2021): unbiased pass@k from n samples with c correct, 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_index(preds, same):
    """Index of the sample that wins the majority vote, or None if no sample has an answer.
    Answers group greedily with the first group whose first answer is `same`; ties go to the
    group seen first."""
    groups = []  # [index of first member, size]
    for i, pred in enumerate(preds):
        if pred is None:
            continue
        for g in groups:
            if preds[g[0]] == pred or same(preds[g[0]], pred):
                g[1] += 1
                break
        else:
            groups.append([i, 1])
    return max(groups, key=lambda g: g[1])[0] if groups else None  # max keeps the first of equals


def chi2_2x2(a, b, c, d):
    """Pearson's chi2 (no continuity correction) and its p-value (1 dof) for [[a, b], [c, d]]."""
    n, margins = a + b + c + d, (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return None, None
    chi2 = n * (a * d - b * c) ** 2 / margins
    return chi2, math.erfc(math.sqrt(chi2 / 2))


def key_insight(samples):
    """App. D.1, Table 4: answer correct/incorrect x code succeeded/failed, over samples given as
    (correct, tool_calls, tool_errors); answers without a call are counted apart (decision 2)."""
    t = dict(correct_code_ok=0, correct_code_failed=0, incorrect_code_ok=0, incorrect_code_failed=0,
             no_code_correct=0, no_code_incorrect=0)
    for ok, calls, errors in samples:
        answer = "correct" if ok else "incorrect"
        t[f"no_code_{answer}" if not calls else f"{answer}_code_{'failed' if errors else 'ok'}"] += 1
    a, b, c, d = (t["correct_code_ok"], t["correct_code_failed"], t["incorrect_code_ok"], t["incorrect_code_failed"])
    t["acc_code_ok"] = _pct(a, a + c)
    t["acc_code_failed"] = _pct(b, b + d)
    t["chi2"], t["p"] = chi2_2x2(a, b, c, d)
    return t


def _pct(x, n):
    return 100.0 * x / n if n else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None

# -----------------------------------------------------------------------------
# Scoring a predictions file


def load_predictions(path, benchmarks=None):
    """(every record in file order, {benchmark: {id: [record, ...] by sample}}) from a predictions JSONL.
    A math record needs id, answer and response or pred, a code record id and response or solution;
    without `benchmark` it belongs to the one benchmark named, without `sample` samples are numbered in
    file order."""
    records, out = [], defaultdict(lambda: defaultdict(dict))
    for n, r in read_jsonl(path):
        records.append(r)
        b = r.get("benchmark") or (benchmarks[0] if benchmarks and len(benchmarks) == 1 else None)
        need = ("response", "solution") if b in CODE else ("response", "pred")
        missing = [f for f in ("id",) + (() if b in CODE else ("answer",)) if f not in r] + ([] if b else ["benchmark"])
        missing += [] if any(f in r for f in need) else [" or ".join(need)]
        if missing:
            raise SystemExit(f"{path}:{n}: missing field {', '.join(missing)}")
        if benchmarks and b not in benchmarks:
            continue
        per_id = out[b][str(r["id"])]
        s = r.get("sample", len(per_id))
        if s in per_id:
            raise SystemExit(f"{path}:{n}: duplicate sample {s} of {b} {r['id']}")
        per_id[s] = r
    if not records:
        raise SystemExit(f"{path}: no predictions (an empty file)")
    for b in benchmarks or []:
        if b not in out:
            raise SystemExit(f"{path}: no predictions for benchmark {b}")
    return records, {b: {i: [ss[s] for s in sorted(ss)] for i, ss in ids.items()} for b, ids in out.items()}


def judged(r):
    """The judge's verdict on a sample: no answer is wrong without asking, an unclear reply is wrong."""
    return r["pred"] is not None and r.get("judge", {}).get("verdict") is True


def score(preds, k):
    """Per-benchmark metrics from load_predictions' output, on each problem's first k samples (pass@k on
    all of them); math is graded afresh, code by the verdicts check_solutions keeps up to date."""
    grade_math(preds)
    same = equivalent_answers(preds, k)
    return {b: metrics(b, ids, k, same) for b, ids in preds.items()}


def grade_math(preds):
    """Sets each math record's "pred" (the extracted answer) and "correct", in place, in one grading batch."""
    math_recs = [r for b, ids in preds.items() if b not in CODE for rs in ids.values() for r in rs]
    for r in math_recs:
        r["pred"] = extract_answer(r["response"]) if "response" in r else r.get("pred")
    for r, ok in zip(math_recs, grade_many([(r["pred"], str(r["answer"])) for r in math_recs])):
        r["correct"] = ok


def equivalent_answers(preds, k):
    """{(x, y): x is equivalent to y} for every pair of distinct answers among a problem's first k, an
    earlier answer first (as majority_index asks), graded in one batch: maj@k groups equivalent answers."""
    pairs = set()
    for b, ids in preds.items():
        for rs in ids.values():
            answers = [r["pred"] for r in rs[:k] if b not in CODE and r["pred"] is not None]
            pairs |= {(x, y) for i, x in enumerate(answers) for y in answers[i + 1:] if x != y}
    return dict(zip(pairs, grade_many(list(pairs))))


def metrics(b, ids, k, same):
    """One benchmark's row: {problem id: its records} -> Avg@k, pass@k, maj@k, tokens, calls, key insight..."""
    k_b = min(k, min(len(rs) for rs in ids.values()))
    firsts = [rs[:k] for rs in ids.values()]
    rs_all = [r for rs in firsts for r in rs]
    tool = [r for r in rs_all if "tool_calls" in r]
    calls = sum(r["tool_calls"] for r in tool)
    if b in CODE:
        maj_at_k = None
    else:
        winners = [majority_index([r["pred"] for r in rs], lambda x, y: same.get((x, y), False)) for rs in firsts]
        maj_at_k = 100 * _mean([w is not None and rs[w]["correct"] for w, rs in zip(winners, firsts)])
    m = {
        "n": len(ids), "k": k_b, "samples": len(rs_all),
        "avg@k": 100 * _mean([_mean([r["correct"] for r in rs]) for rs in firsts]),
        "pass@k": 100 * _mean([pass_at_k(len(rs), sum(r["correct"] for r in rs), k_b) for rs in ids.values()]),
        "maj@k": maj_at_k,
        "tokens": _mean([r.get("tokens") for r in rs_all]),
        "tool_calls": _mean([r["tool_calls"] for r in tool]),
        "tool_success": _pct(calls - sum(r.get("tool_errors", 0) for r in tool), calls),
        "code_ratio": _pct(sum(r["tool_calls"] > 0 for r in tool), len(tool)),
        "corrections": _mean([r.get("corrections") for r in rs_all]),
        "truncated": _pct(sum(r.get("finish") == "length" for r in rs_all), len(rs_all)),
        "key_insight": key_insight([(r["correct"], r["tool_calls"], r.get("tool_errors", 0)) for r in tool]),
    }
    if b in CODE and b != "humaneval":  # base = HumanEval's / MBPP's own inputs, avg@k above = base + plus
        m["base_avg@k"] = 100 * _mean([_mean([r["passed_base"] for r in rs]) for rs in firsts])
        m["base_pass@k"] = 100 * _mean([pass_at_k(len(rs), sum(r["passed_base"] for r in rs), k_b)
                                        for rs in ids.values()])
    if b not in CODE and any("judge" in r for r in rs_all):  # decision 7
        asked = [(judged(r), r["correct"]) for r in rs_all if r["pred"] is not None]
        m.update({"judge@k": 100 * _mean([_mean([judged(r) for r in rs]) for rs in firsts]),
                  "judge_agree": _pct(sum(v == ok for v, ok in asked), len(asked)),
                  "judge_only": sum(v and not ok for v, ok in asked),
                  "rules_only": sum(ok and not v for v, ok in asked),
                  "judge_unclear": sum("judge" in r and r["judge"]["verdict"] is None for r in rs_all)})
    return m

# -----------------------------------------------------------------------------
# Report: JSON and the printed table


COLUMNS = [("n", "n", "{:d}"), ("k", "k", "{:d}"), ("avg@k", "avg@k", "{:.1f}"), ("pass@k", "pass@k", "{:.1f}"),
           ("maj@k", "maj@k", "{:.1f}"), ("tokens", "tokens", "{:.0f}"), ("tool_calls", "calls", "{:.2f}"),
           ("code_ratio", "code%", "{:.1f}"), ("tool_success", "call_ok%", "{:.1f}"),
           ("acc_code_ok", "acc|ok", "{:.1f}"), ("acc_code_failed", "acc|fail", "{:.1f}"), ("chi2", "chi2", "{:.1f}")]
JUDGE_COLUMNS = [("judge@k", "judge", "{:.1f}"), ("judge_agree", "agree%", "{:.1f}")]
AVERAGED = ["avg@k", "pass@k", "maj@k", "tokens", "tool_calls", "code_ratio", "tool_success", "judge@k"]


def _cell(v, fmt):
    return "-" if v is None else fmt.format(v)


def format_table(report):
    bench = report["benchmarks"]
    cols = COLUMNS + (JUDGE_COLUMNS if any("judge@k" in m for m in bench.values()) else [])
    rows = []
    for b, m in bench.items():
        rows.append((NAMES[b], {**m, **m["key_insight"]}))
        if "base_avg@k" in m:  # EvalPlus reports the base tests apart (HumanEval, MBPP)
            rows.append(("  base", dict(n=m["n"], k=m["k"], **{"avg@k": m["base_avg@k"], "pass@k": m["base_pass@k"]})))
    rows.append(("average", report["average"]))
    lines = [f"{'benchmark':<11}" + "".join(f"{h:>9}" for _, h, _ in cols)]
    lines += [f"{name:<11}" + "".join(f"{_cell(m.get(key), fmt):>9}" for key, _, fmt in cols) for name, m in rows]
    maths = [b for b in bench if b not in CODE]
    if maths:
        lines.append("Table 1 layout, Avg@k: " + " | ".join(f"{NAMES[b]} {bench[b]['avg@k']:.1f}" for b in maths)
                     + f" | Avg {report['average']['avg@k']:.1f}")
    if any(b in CODE for b in bench):
        lines.append("Fig. 5 layout, pass@1 (Avg@k): " + " | ".join(f"{NAMES[b]} {bench[b]['avg@k']:.1f}" for b in CODE
                                                                     if b in bench)
                     + " | LiveCodeBench - (no offline copy: not run)")
    t = report["key_insight"]  # pooled over benchmarks, laid out as the paper's Table 4
    lines += [f"key insight (App. D.1): code ok = at least one call, all succeeded; "
              f"{t['no_code_correct'] + t['no_code_incorrect']} answers without code left out",
              f"{'':<12}{'code ok':>13}{'code failed':>13}",
              f"{'correct':<12}{t['correct_code_ok']:>13}{t['correct_code_failed']:>13}",
              f"{'incorrect':<12}{t['incorrect_code_ok']:>13}{t['incorrect_code_failed']:>13}",
              f"P(correct | code ok) {_cell(t['acc_code_ok'], '{:.1f}%')}, P(correct | code failed) "
              f"{_cell(t['acc_code_failed'], '{:.1f}%')}, chi2 {_cell(t['chi2'], '{:.1f}')} (p "
              f"{_cell(t['p'], '{:.2g}')})"]
    return "\n".join(lines)


def build_report(per_bench, preds, args, source, totals):
    ordered = {b: per_bench[b] for b in ORDER if b in per_bench}
    for b, m in ordered.items():
        m["problems_in_benchmark"] = totals.get(b)
    main = [b for b in ordered if b not in CODE] or list(ordered)  # decision 4
    samples = [(r["correct"], r["tool_calls"], r.get("tool_errors", 0))
               for b in main for rs in preds[b].values() for r in rs[:args.k] if "tool_calls" in r]
    return {
        "command": "python eval.py " + shlex.join(sys.argv[1:]),
        "source": source,
        "grader": "rewards.is_equiv on the last \\boxed{} (rule-based; the paper used a Qwen3-32B judge)"
                  + (f"; judge {args.judge} with JUDGE_PROMPT {JUDGE_ID}" if args.judge else "")
                  + ("; code: EvalPlus's rule (rewards.check_code)" if any(b in CODE for b in ordered) else ""),
        "settings": None if args.predictions else dict(
            {key: getattr(args, key) for key in ("model", "engine", "k", "temperature", "top_p", "top_k", "reasoning",
                                                  "template", "max_tool_calls", "self_correction", "l_suf", "seed")},
            max_new_tokens={b: token_budget(args, b) for b in ordered}),
        "benchmarks": ordered,
        "average": {key: _mean([ordered[b].get(key) for b in main]) for key in AVERAGED},
        "key_insight": key_insight(samples),  # pooled over benchmarks, as Table 4
    }


def check_data(names, args):
    """--check-data: each code benchmark's reference solutions against its tests, by the rule candidates get."""
    failed = 0
    with code_sandbox() as sb:
        for b in [b for b in names if b in CODE] or CODE:
            tasks = load_benchmark(b, args.data_dir, tasks=True)[:args.limit]
            t0 = time.time()
            verdicts = check_code(sb, [(t, t["prompt"] + t["canonical_solution"]) for t in tasks])
            bad = [(t["id"], v["error"]) for t, v in zip(tasks, verdicts)
                   if not v["passed_base"] or v["passed_plus"] is False]
            print(f"{NAMES[b]}: {len(tasks) - len(bad)} of {len(tasks)} reference solutions pass their tests "
                  f"({time.time() - t0:.0f} s)" + "".join(f"\n  {i}: {e}" for i, e in bad))
            failed += len(bad)
    if failed:
        raise SystemExit(f"--check-data: {failed} reference solution(s) failed")

# -----------------------------------------------------------------------------
# Main


def main(argv=None):
    args = parse_args(argv)
    names = benchmark_names(args.benchmarks)
    if args.check_data:
        return check_data(names, args)
    if args.predictions:
        source, pred_path = f"predictions {args.predictions}", args.predictions
        out = args.out or os.path.join("out", "eval", os.path.splitext(os.path.basename(pred_path))[0])
    else:
        names = names or ["toy"]
        if args.model is None:
            import model  # only here: scoring a predictions file needs neither torch nor model.py
            args.model, source = model.default_model()
        else:
            source = args.model
        args.model = os.path.normpath(args.model)
        out = args.out or os.path.join("out", "eval", os.path.basename(args.model))
        pred_path = os.path.join(out, "predictions.jsonl")
    print(f"{'scoring' if args.predictions else 'model'}: {source}")
    os.makedirs(out, exist_ok=True)
    if args.predictions:
        records, preds = load_predictions(pred_path, names or None)
        totals = {b: len(load_benchmark(b, args.data_dir)) for b in preds if b == "toy" or args.data_dir}
    else:
        full = {b: load_benchmark(b, args.data_dir) for b in names}
        totals = {b: len(ps) for b, ps in full.items()}
        problems = {b: ps[:args.limit] for b, ps in full.items()}
        generate(args, problems, pred_path)
        # Score what this command asked for: its problems, samples 0..k-1 (the file may hold more).
        keep = {b: {p["id"] for p in ps} for b, ps in problems.items()}
        records, preds = load_predictions(pred_path, names)
        preds = {b: {i: [r for r in rs if r["sample"] < args.k] for i, rs in ids.items() if i in keep[b]}
                 for b, ids in preds.items()}
    changed = check_solutions(preds, args.data_dir)  # verdicts kept in the file (decisions 6, 7)
    try:
        if args.judge:
            judge(preds, args.judge)
    finally:  # what the judge answered is kept even if it stops answering
        if changed or args.judge:
            rewrite_jsonl(pred_path, records)
    report = build_report(score(preds, args.k), preds, args, source, totals)
    for b, m in report["benchmarks"].items():
        if m["problems_in_benchmark"] and m["n"] < m["problems_in_benchmark"]:
            print(f"note: {NAMES[b]} covers {m['n']} of {m['problems_in_benchmark']} problems: "
                  "not comparable to the paper")
        if m["k"] < args.k:
            print(f"note: {NAMES[b]} has problems with only {m['k']} samples: pass@k and maj@k use k={m['k']}")
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report))
    print(f"wrote {os.path.join(out, 'report.json')}" + ("" if args.predictions else f" and {pred_path}"))
    return report


if __name__ == "__main__":
    main()
