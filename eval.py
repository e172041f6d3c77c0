"""
eval.py: score a model on math benchmarks the way THOR reports them (paper §7, Tables 1, 3, 5, App. D.1).

In:  benchmark JSONL files (--data-dir, default ../shared/data; the toy test set data/toy_test.jsonl
     is the default benchmark) and a model dir, or an existing predictions JSONL (--predictions).
Out: <out>/predictions.jsonl  one trajectory record per (problem, sample) (../shared/DESIGN.md) plus
                              benchmark, sample, tokens, corrections, finish; appended and flushed per
                              record, so a rerun resumes: (benchmark, id, sample) already there are skipped
     <out>/report.json        per benchmark n, k, avg@k, pass@k, maj@k, tokens and tool statistics, the
                              key-insight table, the average over benchmarks, and the command
     a printed table, one row per benchmark in the paper's Table 1 order, then the average.

    python eval.py                                   # toy default: toy test set, out/rl | out/sft | out/tiny, k=4
    python eval.py --model DIR --benchmarks paper    # the paper's six: MATH500 AIME24 AIME25 AMC23 Minerva Olympiad
    python eval.py --model DIR --benchmarks math500,aime24 --k 4 --engine vllm --batch-size 512 --reasoning
    python eval.py --model DIR --benchmarks paper --self-correction 4   # T6 of Table 3 = THOR rows of Table 1
    python eval.py --predictions F --benchmarks math500   # score existing predictions, no model

Metrics (accuracies in %). Avg@k, the paper's metric: mean accuracy over the k samples of a problem,
averaged over problems. pass@k: Chen et al. (2021)'s unbiased estimator 1 - C(n-c, k) / C(n, k) for
n samples of which c are correct. maj@k: majority vote over the extracted answers of the first k samples,
equivalent answers (1/2, 0.5, \\frac{1}{2}) forming one group; a tie goes to the answer seen first;
no answer is no vote. Tokens per answer: tokens the policy sampled, rolled-back self-correction attempts
included (as in Table 5), tool output excluded. Tool calls per answer; call success rate = succeeded /
executed calls; code ratio = share of answers with at least one call (Fig. 4).

Decisions:
 1. Grading is rule-based (rewards.is_equiv on the last \\boxed{}); the paper used a Qwen3-32B judge,
    whose prompt is not released. Every scoring re-grades from `response` (or `pred`), never trusting a
    stored `correct`. Gold answers are read by rewards.read_problems, the reader every stage uses:
    math500/aime/amc23 `answer` (amc23 floats 27.0 -> "27"), minerva the last \\boxed{} of `solution`,
    olympiadbench `final_answer` joined with ", " and without $, gsm8k the text after "####" without
    thousands separators.
 2. Key insight (App. D.1, Table 4): an answer's code *succeeded* if it made at least one call and all
    its (kept) calls succeeded, *failed* if at least one call failed. Answers with no call are left out
    of the 2x2 table and reported apart (no_code); the paper leaves this open, but its table holds 5956
    answers, fewer than the 6188 = 4 x 1547 of its six benchmarks. With self-correction a call that
    failed and was rolled back is not a kept call. chi2 is Pearson's, 2x2, without continuity correction (paper: 336.3).
 3. Default token budget: 4096 new tokens, 16384 with --reasoning (paper §7); the toy benchmark uses
    256 (a toy solution is under 150 tokens and the tiny model's context is 2048).
 4. The average is unweighted over the benchmarks in the table, like the paper's Avg column.
"""
import argparse
import json
import math
import os
import shlex
import sys
from collections import defaultdict

from tqdm import tqdm

from rewards import extract_answer, grade_many, read_jsonl, read_problems
# torch and model.py are imported by the two functions below that need a model: scoring a predictions
# file needs neither, and importing torch costs seconds per process (runs/ladder.py scores 30 files).

ROOT = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# CLI arguments


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--benchmarks", default=None,
                   help=f"comma-separated, from {','.join(ORDER)}, or 'paper' for the six of Table 1 "
                        "(default: toy; with --predictions: every benchmark in the file)")
    g.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder of the benchmark JSONL files")
    g.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
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
    g.add_argument("--seed", type=int, default=0, help="sampling seed (chunk i uses seed + i)")
    args = p.parse_args(argv)
    args.template = args.template or ("thinking" if args.reasoning else "raw")
    return args

# -----------------------------------------------------------------------------
# Benchmarks: one normaliser per file, mapping its fields to {id, problem, answer}


BENCHMARKS = {  # name: file; rewards.read_problems maps each file's own fields to {id, problem, answer}
    "math500": "math500.jsonl", "aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "amc23": "amc23.jsonl",
    "minerva": "minerva_math.jsonl", "olympiadbench": "olympiadbench.jsonl", "gsm8k": "gsm8k_test.jsonl",
    "toy": "toy_test.jsonl",
}
ORDER = list(BENCHMARKS)  # the paper's Table 1 column order, then the others
PAPER = ORDER[:6]
NAMES = dict(math500="MATH500", aime24="AIME24", aime25="AIME25", amc23="AMC23", minerva="Minerva",
             olympiadbench="Olympiad", gsm8k="GSM8K", toy="toy")
TOY_MAX_NEW_TOKENS = 256
_data = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
DEFAULT_DATA_DIR = _data if os.path.isdir(_data) else None


def load_benchmark(name, data_dir):
    """[{id, problem, answer}] of a benchmark, in file order; the toy test set lives in data/."""
    if name != "toy" and data_dir is None:
        raise SystemExit(f"benchmark {name} needs --data-dir (../shared/data was not found)")
    path = os.path.join(ROOT if name == "toy" else data_dir, "data" if name == "toy" else "", BENCHMARKS[name])
    return [dict(id=p["id"], problem=p["problem"], answer=p["answer"]) for p in read_problems(path)]

# -----------------------------------------------------------------------------
# Generation: model.rollout over chunks of prompts, appended to the predictions file


def default_model():
    import model
    for d in ("out/rl", "out/sft"):
        if os.path.isdir(d):
            return d, f"{d} (default: the latest trained stage)"
    return model.ensure_tiny(), f"{model.TINY_DIR} (default: no out/rl or out/sft, so the untrained tiny model)"


def token_budget(args, benchmark):
    """Paper §7: 4,096 tokens for non-reasoning models, 16,384 for reasoning ones (decision 3 for toy)."""
    if args.max_new_tokens:
        return args.max_new_tokens
    return 16384 if args.reasoning else TOY_MAX_NEW_TOKENS if benchmark == "toy" else 4096


def written_samples(path, model_name):
    """{(benchmark, id, sample)} already in the predictions file; refuses a file of another model."""
    done = set()
    if os.path.exists(path):
        for n, r in read_jsonl(path):
            if r.get("model") != model_name:
                raise SystemExit(f"{path}:{n}: a prediction of model {r.get('model')!r}, not {model_name!r}; "
                                 "pass another --out")
            done.add((r.get("benchmark"), str(r.get("id")), r.get("sample")))
    return done


def generate(args, problems, pred_path):
    """Sample k answers per problem with tool calls and write them; (benchmark, id, sample) pairs
    already in pred_path are skipped, so an interrupted run resumes."""
    done = written_samples(pred_path, args.model)
    todo = [(b, p) for b, ps in problems.items() for p in ps
            if any((b, p["id"], s) not in done for s in range(args.k))]
    if not todo:
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
    chunks = [(b, [p for tb, p in todo if tb == b]) for b in problems]  # one benchmark per chunk: one budget
    chunks = [(b, ps[i:i + args.batch_size]) for b, ps in chunks for i in range(0, len(ps), args.batch_size)]
    model.build_prompt(tok, "", args.template)  # a template this tokenizer lacks stops here, before the progress bar
    bar, sampled = tqdm(total=len(todo) * args.k, desc="eval", unit="answer"), [0]

    def progress(finished, tokens):  # called while a batch decodes: answers as they end, tokens as they come
        sampled[0] += tokens
        bar.set_postfix_str(f"{sampled[0]:,} tokens", refresh=False)
        bar.update(finished)
    with Sandbox(workers=2, timeout_s=args.tool_timeout) as sb, open(pred_path, "a", encoding="utf-8") as f:
        for ci, (b, chunk) in enumerate(chunks):
            rollouts = model.rollout(
                engine, tok, [model.encode_prompt(tok, p["problem"], args.template) for p in chunk], sb,
                n=args.k, max_new_tokens=token_budget(args, b), temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, seed=args.seed + ci, max_tool_calls=args.max_tool_calls,
                n_corr=args.self_correction, l_suf=args.l_suf, progress=progress)  # prompt 0 samples 0..k-1, prompt 1 ...
            preds = [extract_answer(r.text) for r in rollouts]
            correct = grade_many([(pred, chunk[j // args.k]["answer"]) for j, pred in enumerate(preds)])
            for j, r in enumerate(rollouts):
                p, s = chunk[j // args.k], j % args.k
                if (b, p["id"], s) in done:  # a partly written problem is sampled again; its kept samples stay
                    continue
                rec = dict(p, benchmark=b, sample=s, response=r.text, pred=preds[j], correct=correct[j],
                           tool_calls=r.tool_calls, tool_errors=r.tool_errors, corrections=r.corrections,
                           tokens=r.generated, finish=r.finish, model=args.model)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
    bar.close()

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
    """{benchmark: {id: [record, ...] by sample}} from a predictions JSONL. A record needs id, answer
    and response or pred; without `benchmark` it belongs to the one benchmark named, without `sample`
    samples are numbered in file order."""
    out = defaultdict(lambda: defaultdict(dict))
    for n, r in read_jsonl(path):
        b = r.get("benchmark") or (benchmarks[0] if benchmarks and len(benchmarks) == 1 else None)
        missing = [f for f in ("id", "answer") if f not in r] + ([] if b else ["benchmark"])
        missing += [] if "response" in r or "pred" in r else ["response or pred"]
        if missing:
            raise SystemExit(f"{path}:{n}: missing field {', '.join(missing)}")
        if benchmarks and b not in benchmarks:
            continue
        per_id = out[b][str(r["id"])]
        s = r.get("sample", len(per_id))
        if s in per_id:
            raise SystemExit(f"{path}:{n}: duplicate sample {s} of {b} {r['id']}")
        per_id[s] = r
    for b in benchmarks or []:
        if b not in out:
            raise SystemExit(f"{path}: no predictions for benchmark {b}")
    return {b: {i: [ss[s] for s in sorted(ss)] for i, ss in ids.items()} for b, ids in out.items()}


def score(preds, k):
    """Per-benchmark metrics from load_predictions' output; grades every sample afresh."""
    flat = [r for ids in preds.values() for rs in ids.values() for r in rs]
    for r in flat:
        r["pred"] = extract_answer(r["response"]) if "response" in r else r.get("pred")
    for r, ok in zip(flat, grade_many([(r["pred"], str(r["answer"])) for r in flat])):
        r["correct"] = ok
    # maj@k groups equivalent answers: grade every pair of distinct answers among a problem's first k
    # in one batch (an earlier answer first, as majority_index asks), then vote.
    kk = {b: min(k, min(len(rs) for rs in ids.values())) for b, ids in preds.items()}
    pairs = set()
    for b, ids in preds.items():
        for rs in ids.values():
            answers = [r["pred"] for r in rs[:kk[b]] if r["pred"] is not None]
            pairs |= {(x, y) for i, x in enumerate(answers) for y in answers[i + 1:] if x != y}
    same = dict(zip(pairs, grade_many(list(pairs))))
    report = {}
    for b, ids in preds.items():
        k_b, rs_all = kk[b], [r for rs in ids.values() for r in rs]
        maj = [majority_index([r["pred"] for r in rs[:k_b]], lambda x, y: same.get((x, y), False)) for rs in ids.values()]
        tool = [r for r in rs_all if "tool_calls" in r]
        calls = sum(r["tool_calls"] for r in tool)
        report[b] = {
            "n": len(ids), "k": k_b, "samples": len(rs_all),
            "avg@k": 100 * _mean([_mean([r["correct"] for r in rs]) for rs in ids.values()]),
            "pass@k": 100 * _mean([pass_at_k(len(rs), sum(r["correct"] for r in rs), k_b) for rs in ids.values()]),
            "maj@k": 100 * _mean([m is not None and rs[m]["correct"] for m, rs in zip(maj, ids.values())]),
            "tokens": _mean([r.get("tokens") for r in rs_all]),
            "tool_calls": _mean([r["tool_calls"] for r in tool]),
            "tool_success": _pct(calls - sum(r.get("tool_errors", 0) for r in tool), calls),
            "code_ratio": _pct(sum(r["tool_calls"] > 0 for r in tool), len(tool)),
            "corrections": _mean([r.get("corrections") for r in rs_all]),
            "truncated": _pct(sum(r.get("finish") == "length" for r in rs_all), len(rs_all)),
            "key_insight": key_insight([(r["correct"], r["tool_calls"], r.get("tool_errors", 0)) for r in tool]),
        }
    return report

# -----------------------------------------------------------------------------
# Report: JSON and the printed table


COLUMNS = [("n", "n", "{:d}"), ("k", "k", "{:d}"), ("avg@k", "avg@k", "{:.1f}"), ("pass@k", "pass@k", "{:.1f}"),
           ("maj@k", "maj@k", "{:.1f}"), ("tokens", "tokens", "{:.0f}"), ("tool_calls", "calls", "{:.2f}"),
           ("code_ratio", "code%", "{:.1f}"), ("tool_success", "call_ok%", "{:.1f}"),
           ("acc_code_ok", "acc|ok", "{:.1f}"), ("acc_code_failed", "acc|fail", "{:.1f}"), ("chi2", "chi2", "{:.1f}")]
AVERAGED = ["avg@k", "pass@k", "maj@k", "tokens", "tool_calls", "code_ratio", "tool_success"]


def _cell(v, fmt):
    return "-" if v is None else fmt.format(v)


def format_table(report):
    rows = [(NAMES[b], {**m, **m["key_insight"]}) for b, m in report["benchmarks"].items()]
    rows.append(("average", report["average"]))
    lines = [f"{'benchmark':<10}" + "".join(f"{h:>9}" for _, h, _ in COLUMNS)]
    lines += [f"{name:<10}" + "".join(f"{_cell(m.get(key), fmt):>9}" for key, _, fmt in COLUMNS) for name, m in rows]
    names = [NAMES[b] for b in report["benchmarks"]] + ["Avg"]
    accs = [m["avg@k"] for m in report["benchmarks"].values()] + [report["average"]["avg@k"]]
    lines.append("Table 1 layout, Avg@k: " + " | ".join(f"{n} {a:.1f}" for n, a in zip(names, accs)))
    t = report["key_insight"]  # pooled over benchmarks, laid out as the paper's Table 4
    lines += [f"key insight (App. D.1): code ok = at least one call, all succeeded; "
              f"{t['no_code_correct'] + t['no_code_incorrect']} answers without code left out",
              f"{'':<12}{'code ok':>13}{'code failed':>13}",
              f"{'correct':<12}{t['correct_code_ok']:>13}{t['correct_code_failed']:>13}",
              f"{'incorrect':<12}{t['incorrect_code_ok']:>13}{t['incorrect_code_failed']:>13}",
              f"P(correct | code ok) {_cell(t['acc_code_ok'], '{:.1f}%')}, P(correct | code failed) "
              f"{_cell(t['acc_code_failed'], '{:.1f}%')}, chi2 {_cell(t['chi2'], '{:.1f}')} (p {_cell(t['p'], '{:.2g}')})"]
    return "\n".join(lines)


def build_report(per_bench, preds, args, source, totals):
    ordered = {b: per_bench[b] for b in ORDER if b in per_bench}
    for b, m in ordered.items():
        m["problems_in_benchmark"] = totals.get(b)
    samples = [(r["correct"], r["tool_calls"], r.get("tool_errors", 0))
               for ids in preds.values() for rs in ids.values() for r in rs if "tool_calls" in r]
    return {
        "command": "python eval.py " + shlex.join(sys.argv[1:]),
        "source": source,
        "grader": "rewards.is_equiv on the last \\boxed{} (rule-based; the paper used a Qwen3-32B judge)",
        "settings": None if args.predictions else dict(
            {key: getattr(args, key) for key in ("model", "engine", "k", "temperature", "top_p", "top_k", "reasoning",
                                                  "template", "max_tool_calls", "self_correction", "l_suf", "seed")},
            max_new_tokens={b: token_budget(args, b) for b in ordered}),
        "benchmarks": ordered,
        "average": {key: _mean([m[key] for m in ordered.values()]) for key in AVERAGED},
        "key_insight": key_insight(samples),  # pooled over benchmarks, as Table 4
    }

# -----------------------------------------------------------------------------
# Main


def main(argv=None):
    args = parse_args(argv)
    names = [] if args.benchmarks is None else PAPER if args.benchmarks == "paper" else args.benchmarks.split(",")
    for b in names:
        if b not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {b!r} (choose from {', '.join(ORDER)} or paper)")
    if args.predictions:
        source, pred_path = f"predictions {args.predictions}", args.predictions
        out = args.out or os.path.join("out", "eval", os.path.splitext(os.path.basename(pred_path))[0])
    else:
        names = names or ["toy"]
        args.model, source = default_model() if args.model is None else (args.model, args.model)
        args.model = os.path.normpath(args.model)
        out = args.out or os.path.join("out", "eval", os.path.basename(args.model))
        pred_path = os.path.join(out, "predictions.jsonl")
    print(f"{'scoring' if args.predictions else 'model'}: {source}")
    os.makedirs(out, exist_ok=True)
    if args.predictions:
        preds = load_predictions(pred_path, names or None)
        totals = {b: len(load_benchmark(b, args.data_dir)) for b in preds if b == "toy" or args.data_dir}
    else:
        full = {b: load_benchmark(b, args.data_dir) for b in names}
        totals = {b: len(ps) for b, ps in full.items()}
        problems = {b: ps[:args.limit] for b, ps in full.items()}
        generate(args, problems, pred_path)
        # Score what this command asked for: its problems, samples 0..k-1 (the file may hold more).
        keep = {b: {p["id"] for p in ps} for b, ps in problems.items()}
        preds = {b: {i: [r for r in rs if r["sample"] < args.k] for i, rs in ids.items() if i in keep[b]}
                 for b, ids in load_predictions(pred_path, names).items()}
    report = build_report(score(preds, args.k), preds, args, source, totals)
    for b, m in report["benchmarks"].items():
        if m["problems_in_benchmark"] and m["n"] < m["problems_in_benchmark"]:
            print(f"note: {NAMES[b]} covers {m['n']} of {m['problems_in_benchmark']} problems: not comparable to the paper")
        if m["k"] < args.k:
            print(f"note: {NAMES[b]} has problems with only {m['k']} samples: pass@k and maj@k use k={m['k']}")
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(report))
    print(f"wrote {os.path.join(out, 'report.json')}" + ("" if args.predictions else f" and {pred_path}"))
    return report


if __name__ == "__main__":
    main()
