"""
runs/ladder.py: the whole THOR pipeline on the embedded toy default, ending in the toy version of
the paper's Table 3 ablation ladder (T1-T6), every step a paired difference with a 95% interval.

    python runs/ladder.py                       # 3 seeds on 2 CPU cores (docs/ladder.md has the time)
    python runs/ladder.py --one-cold-start --rl-iterations 8 --test-n 250   # quicker: docs/ladder.md
    python runs/ladder.py --seeds 0 --quick     # tiny sizes, a smoke test of the wiring (pytest runs it)
    python runs/ladder.py --out out/ladder-a001 --rl-args='--nll-alpha 0.01'   # an RL ablation, same seeds

Every stage is its own process and stages pass files, nothing else:
    model.py build-tiny        -> out/tiny               the tiny base model: it can copy, nothing more (once)
    sft.py on data/toy_cot.jsonl -> out/ladder/cot/      the toy base model: the copy model + the toy actor's
                                                         own chain-of-thought (once; T1)
    tirgen.py                  -> out/ladder/toy_sft.jsonl   toy actor-critic data + filters (once)
    rl.py --no-tools           -> out/ladder/t2/         T2: CoT-RL from the base model, no tool execution (once)
    per seed s, in out/ladder/s<s>/:
      sft.py                   -> sft/                   T3: TIRGen cold start from the base model (with
                                                         --one-cold-start: once, in out/ladder/sft/)
      rl.py --no-step-level    -> t4/                    T4: + episode-level RL from T3
      rl.py                    -> t5/                    T5: + step-level RL (same seed, same budget)
    infer.py on the held-out toy problems (the first --test-n of data/toy_test1000.jsonl), one predictions
      file per row and temperature: T3 the cold start; T4 t4/; T5 t5/ (no self-correction); T6 t5/ with
      self-correction (N_corr 4); and once, in out/ladder/: T1 cot/ and T2 t2/, without tool execution
    eval.py --predictions      -> <row>@<T>/report.json  accuracy, tool-call success, calls, tokens
The stages run --jobs (2) at a time, each as soon as the stages it reads from are done (`schedule`).
Out: out/ladder/ladder.md (the tables), out/ladder/ladder.png (the chart), out/ladder/rows.jsonl (one
record per seed, row and temperature), times.jsonl beside each log (every stage's wall and CPU time). A
rerun skips the stages whose output exists; --fresh starts over.

The seeds vary T3-T6's training and sampling; the base models, T2 and the TIRGen data are shared, like
a base checkpoint and a dataset in the paper. --one-cold-start shares T3's model too (the paper has one
T3; the seeds then vary RL and sampling), so the intervals no longer cover the SFT seed, which moved
T3 by up to 22 points. 95% intervals: a paired two-level bootstrap, seeds drawn
with replacement and then problems with replacement within each drawn seed, the same problems for both
rows of a difference (so it covers the training-seed spread as well as the test-set noise; with 3 seeds
the seed level is coarse, so every seed's own difference is listed too). Accuracy is averaged over all
seed x problem answers; tool-call success is pooled over their calls.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [("T1", "base model, CoT"), ("T2", "+ CoT-RL, no tools"), ("T3", "+ TIRGen cold start"),
        ("T4", "+ episode-level RL"), ("T5", "+ step-level RL"), ("T6", "+ self-correction")]
STEPS = [("T2", "T1", "CoT-RL without tools"), ("T3", "T1", "tools + TIRGen cold start"),
         ("T4", "T3", "episode-level RL"),
         ("T5", "T4", "step-level RL"), ("T6", "T5", "self-correction"), ("T5", "T3", "hierarchical RL")]
B = 2000  # bootstrap resamples
# --quick: sizes that only check that the stages fit together (seconds per stage).
QUICK = dict(sft=["--max-steps", "3", "--batch-size", "4"],
             rl=["--iterations", "1", "--group-size", "2", "--batch-problems", "2", "--max-new-tokens", "48",
                 "--max-refills", "0"],
             infer_tokens=48)


def run(cmd, log, threads=1):
    """One stage in its own process with `threads` CPU threads, output to its log. Its wall time and
    CPU time (its processes' user + system seconds: on a loaded machine the wall time is not the idle
    one, the CPU time nearly is) go to times.jsonl beside the log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)}); log {log}:\n{tail}")
    with open(os.path.join(os.path.dirname(log), "times.jsonl"), "a") as f:
        f.write(json.dumps({"stage": os.path.basename(log), "seconds": round(time.time() - t0, 1), "threads": threads,
                            "cpu": round(usage.ru_utime + usage.ru_stime, 1)}) + "\n")


def schedule(jobs, slots):
    """Run jobs = {name: (names it waits for, fn(threads))}, each once all it waits for are done, at
    most `slots` at a time. List scheduling: among the ready jobs the one that most jobs wait on
    (directly or not) starts first, so the seeds' training chains are not starved by inference rows.
    A job that starts alone (none running, none ready) gets `slots` threads: the CoT base model, which
    all the rest waits for (SFT on 2 threads: 1.85x the steps per second of 1)."""
    below = {n: set() for n in jobs}
    for n in reversed(list(jobs)):  # jobs are listed after those they wait for
        for d in jobs[n][0]:
            below[d] |= {n} | below[n]
    done, running, pending = set(), {}, list(jobs)
    with ThreadPoolExecutor(slots) as pool:
        while pending or running:
            ready = sorted((n for n in pending if set(jobs[n][0]) <= done), key=lambda n: -len(below[n]))
            while ready and len(running) < slots:
                n = ready.pop(0)
                pending.remove(n)
                running[pool.submit(jobs[n][1], 1 if running or ready else slots)] = n
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                f.result()  # a failed stage stops the ladder (the running ones finish first)
                done.add(running.pop(f))


def head(name, n, out):
    """The first n problems of data/<name> (all if n is None), copied to out/<name>."""
    path = os.path.join(out, name)
    with open(os.path.join(ROOT, "data", name)) as f, open(path, "w") as g:
        g.writelines(f.readlines()[:n])
    return path


def predict(d, row, model, extra, s, args, test, threads):
    """infer.py + eval.py for one row of the ladder at each temperature (skipped where its report exists)."""
    for t in args.temperatures:
        name = f"{row}@{t}"
        preds = os.path.join(d, f"{name}.jsonl")
        if not os.path.exists(os.path.join(d, name, "report.json")):
            run(["infer.py", "--model", model, "--data", test, "--out", preds, "--seed", str(s),
                 "--temperature", str(t), "--max-new-tokens", str(args.max_new_tokens),
                 "--batch", str(args.batch), *extra],
                os.path.join(d, f"{name}.infer.log"), threads)
            run(["eval.py", "--predictions", preds, "--benchmarks", "toy", "--out", os.path.join(d, name)],
                os.path.join(d, f"{name}.eval.log"))


def scores(d, row, args):
    """{"<row>@<T>": (eval report, [predictions by id])} of one row."""
    out = {}
    for t in args.temperatures:
        name = f"{row}@{t}"
        with open(os.path.join(d, name, "report.json")) as f, open(os.path.join(d, f"{name}.jsonl")) as g:
            out[name] = json.load(f)["benchmarks"]["toy"], sorted((json.loads(line) for line in g),
                                                                  key=lambda r: r["id"])
    return out


NO_TOOLS = ["--max-tool-calls", "0", "--n-corr", "0"]  # a code block ends the answer unexecuted (as rl.py --no-tools)
NO_SC = ["--n-corr", "0"]  # infer.py self-corrects by default; only T6 does


def stage(out, cmd):
    """A training stage (sft.py or rl.py) as a job: skipped when its model dir exists."""
    def fn(threads):
        if not os.path.exists(os.path.join(out, "config.json")):
            run(cmd + ["--threads", str(threads)], out + ".log", threads)
    return fn


def rl_stage(d, name, start, s, args, *flags):
    """rl.py from the model dir `start` into d/name, as a job."""
    q = QUICK["rl"] if args.quick else []
    return stage(os.path.join(d, name),
                 ["rl.py", "--model", start, "--out", os.path.join(d, name), "--seed", str(s), *flags,
                  "--iterations", str(args.rl_iterations), "--eval-every", "0", *q, *args.rl_args])


def row_job(d, row, model, extra, s, args, test):
    """An inference row (predict) as a job."""
    return lambda threads: predict(d, row, model, extra, s, args, test, threads)


def sft_stage(out, data, start, s, steps, args):
    """sft.py from the model dir `start` on `data` into `out`, as a job."""
    return stage(out,
                 ["sft.py", "--data", data, "--model", start, "--out", out, "--seed", str(s), "--max-steps", str(steps),
                       "--eval-n", "0", *(QUICK["sft"] if args.quick else [])])


def seed_jobs(s, args, test, cold, sft):
    """One seed's jobs: T4 and T5 = RL from the cold start `sft` (the job `cold`) with the same seed and
    budget, without and with the step level; an inference row (infer.py + eval.py) for each, T3 = the
    cold start's model, T6 = T5's model with self-correction."""
    d = os.path.join(args.out, f"s{s}")
    os.makedirs(d, exist_ok=True)
    j = lambda *p: os.path.join(d, *p)
    row = lambda name, model, extra: row_job(d, name, model, extra, s, args, test)
    return {f"t4/{s}": ([cold], rl_stage(d, "t4", sft, s, args, "--no-step-level")),
            f"t5/{s}": ([cold], rl_stage(d, "t5", sft, s, args)),
            f"T3/{s}": ([cold], row("T3", sft, NO_SC)),
            f"T4/{s}": ([f"t4/{s}"], row("T4", j("t4"), NO_SC)),
            f"T5/{s}": ([f"t5/{s}"], row("T5", j("t5"), NO_SC)),
            f"T6/{s}": ([f"t5/{s}"], row("T6", j("t5"), ["--n-corr", "4"]))}

# -----------------------------------------------------------------------------
# Paired two-level bootstrap


def per_problem(results, seeds, row, t):
    """(S, N, 4) array: each seed's answers to the N problems as (correct, calls that ran, calls, 1)."""
    return np.array([[(bool(p["correct"]), p["tool_calls"] - p["tool_errors"], p["tool_calls"], 1)
                      for p in results[s][f"{row}@{t}"][1]] for s in seeds], dtype=float)


def stat(x, metric):
    """x: (..., 4) sums over answers -> accuracy or tool-call success in %."""
    return 100 * (x[..., 0] / x[..., 3] if metric == "acc" else x[..., 1] / np.maximum(x[..., 2], 1))


def interval(results, seeds, t, metric, row, base=None):
    """Point value, 95% interval and per-seed values of `row`'s metric, or of row - base, both rows
    resampled with the same draws."""
    a = per_problem(results, seeds, row, t)
    b = per_problem(results, seeds, base, t) if base else None
    S, N, _ = a.shape
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(0, B, 250):  # resample seeds, then problems within each drawn seed (paired)
        si, pi = rng.integers(0, S, (250, S, 1)), rng.integers(0, N, (250, S, N))
        value = stat(a[si, pi].sum((1, 2)), metric)
        draws.append(value - stat(b[si, pi].sum((1, 2)), metric) if base else value)
    point = stat(a.sum((0, 1)), metric) - (stat(b.sum((0, 1)), metric) if base else 0)
    per_seed = stat(a.sum(1), metric) - (stat(b.sum(1), metric) if base else 0)
    lo, hi = np.percentile(np.concatenate(draws), [2.5, 97.5])
    return point, lo, hi, per_seed


def tables(results, seeds, temps):
    """Markdown: each row's accuracy and tool-call success with 95% intervals, then each step's paired
    difference (the interval, and every seed's own difference)."""
    lines = [f"Held-out toy problems: {len(results[seeds[0]][f'T1@{temps[0]}'][1])} per seed, one sample each; seeds "
             f"{', '.join(map(str, seeds))}; [95% interval]; T = sampling temperature.", ""]
    cols = [(m, t) for t in temps for m in ("acc", "tool")]
    head = {"acc": "accuracy", "tool": "tool-call success"}
    lines += ["| stage | " + " | ".join(f"{head[m]} T={t}" for m, t in cols) + f" | calls/answer T={temps[0]} | "
              f"tokens/answer T={temps[0]} |", "|---" * (len(cols) + 3) + "|"]
    for row, name in ROWS:
        cells = []
        for m, t in cols:
            if m == "tool" and not per_problem(results, seeds, row, t)[..., 2].sum():
                cells.append("-")  # no tool calls at all
                continue
            v, lo, hi, _ = interval(results, seeds, t, m, row)
            cells.append(f"{v:.1f} [{lo:.1f}, {hi:.1f}]")
        reps = [results[s][f"{row}@{temps[0]}"][0] for s in seeds]
        cells += [f"{np.mean([r['tool_calls'] for r in reps]):.2f}", f"{np.mean([r['tokens'] for r in reps]):.0f}"]
        lines.append(f"| {row} {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences, percentage points: all seeds [95% interval] (seed "
                  + "/".join(map(str, seeds)) + ").", "",
              "| step | " + " | ".join(f"{head[m]} T={t}" for m, t in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row, base, name in STEPS:
        cells = []
        for m, t in cols:
            if m == "tool" and "T1" in (row, base):
                cells.append("-")
                continue
            v, lo, hi, ps = interval(results, seeds, t, m, row, base)
            sig = "**" if lo > 0 or hi < 0 else ""
            cells.append(f"{sig}{v:+.1f} [{lo:+.1f}, {hi:+.1f}]{sig} ({'/'.join(f'{x:+.1f}' for x in ps)})")
        lines.append(f"| {row} − {base}, {name} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the interval excludes 0."]
    return "\n".join(lines)


ERROR = re.compile(r"```output\n(?:Traceback.*\n)?([A-Za-z_.]*(?:Error|Exception|Exit|Interrupt)|.*[Tt]imed? ?[Oo]ut)")


def failures(results, seeds, temps, out):
    """Where the step level can act (markdown): per tool row, the share of answers with a failed call,
    how often those are still right against answers whose calls all ran, and the failed calls' error
    types; per RL run, what its rollouts and step-level groups did (rl.py's log, summed)."""
    lines = ["| stage | T | answers with a failed call | their accuracy | accuracy, calls all ran "
             "| error types of failed calls |",
             "|---|---|---|---|---|---|"]
    for row in ("T3", "T4", "T5", "T6"):
        for t in temps:
            answers = [p for s in seeds for p in results[s][f"{row}@{t}"][1]]
            bad = [p for p in answers if p["tool_errors"]]
            ok = [p for p in answers if p["tool_calls"] and not p["tool_errors"]]
            kinds = Counter(m.group(1) for p in bad for m in ERROR.finditer(p["response"]))
            acc = lambda ps: f"{100 * sum(bool(p['correct']) for p in ps) / len(ps):.1f}" if ps else "-"
            lines.append(f"| {row} | {t} | {100 * len(bad) / len(answers):.1f}% | {acc(bad)} | {acc(ok)} | "
                         + ", ".join(f"{k} {v}" for k, v in kinds.most_common(4)) + " |")
    keys = ["failed_rollouts", "groups_with_failure", "step_prefixes", "step_no_code", "step_reward", "step_samples",
            "episode_samples"]
    lines += ["", "| RL run | rollouts with a failed call | groups with a failed call | step prefixes "
              "| regenerations without code | regenerations whose call ran | step samples | episode samples |",
              "|---" * 8 + "|"]
    for run_ in ("t4", "t5"):
        logs = [json.loads(line) for s in seeds for line in open(os.path.join(out, f"s{s}", run_, "log.jsonl"))]
        tot = {k: sum(r.get(k) or 0 for r in logs) for k in keys}
        ran = sum((r["step_reward"] or 0) * (r["step_rollouts"] - r["step_no_code"]) for r in logs)
        lines.append(f"| {run_.upper()} | {100 * tot['failed_rollouts'] / len(logs):.1f}% | "
                     f"{tot['groups_with_failure']} | "
                     f"{tot['step_prefixes']} | {tot['step_no_code']} | {ran:.0f} | {tot['step_samples']} | "
                     f"{tot['episode_samples']} |")
    return "\n".join(lines)


def chart(results, seeds, temps, path):
    """Left: accuracy per stage and temperature (bars, 95% intervals, seeds as dots). Right: each step's
    paired accuracy difference with its 95% interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw=dict(width_ratios=[1.1, 1]))
    width = 0.8 / len(temps)
    for k, t in enumerate(temps):
        for i, (row, _) in enumerate(ROWS):
            v, lo, hi, ps = interval(results, seeds, t, "acc", row)
            x = i + (k - (len(temps) - 1) / 2) * width
            ax.bar(x, v, width=width * 0.9, color=f"C{k}", label=f"T={t}" if i == 0 else None)
            ax.errorbar(x, v, [[v - lo], [hi - v]], color="k", capsize=3, lw=1)
            ax.plot([x] * len(ps), ps, "k.", ms=3)
        for i, (row, base, name) in enumerate(STEPS):
            v, lo, hi, _ = interval(results, seeds, t, "acc", row, base)
            y = i + (k - (len(temps) - 1) / 2) * width
            bx.errorbar(v, y, xerr=[[v - lo], [hi - v]], fmt="o", color=f"C{k}", capsize=3,
                        label=f"T={t}" if i == 0 else None)
    ax.set_xticks(range(len(ROWS)), [f"{r}\n{textwrap.fill(n, 14)}" for r, n in ROWS], fontsize=7)
    ax.set(ylim=(0, 100), title="accuracy % (95% interval; dots: seeds)")
    ax.legend(fontsize=8, loc="upper left")
    bx.axvline(0, color="k", lw=0.8)
    bx.set_yticks(range(len(STEPS)), [f"{r} − {b}\n{n}" for r, b, n in STEPS], fontsize=7)
    bx.invert_yaxis()
    bx.set(title="paired accuracy difference, points (95% interval)")
    bx.legend(fontsize=8)
    fig.suptitle(f"THOR toy ablation ladder: {len(results[seeds[0]][f'T1@{temps[0]}'][1])} held-out toy problems x "
                 f"{len(seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def pipeline(args, train, cot_data, test):
    """Every stage of the ladder as a job for `schedule`: {name: (names it waits for, fn(threads))}."""
    sft_data, cot = os.path.join(args.out, "toy_sft.jsonl"), os.path.join(args.out, "cot")

    def tiny(threads):  # all but TIRGen (a minute) wait for the copy model: it takes every core
        if not os.path.exists(os.path.join(args.tiny, "config.json")):
            run(["model.py", "build-tiny", "--out", args.tiny] + (["--pretrain-steps", "0"] if args.quick else []),
                os.path.join(args.out, "tiny.log"), args.jobs)

    def tirgen(threads):
        if not os.path.exists(sft_data):
            run(["tirgen.py", "--data", train, "--trajectories", os.path.join(args.out, "toy_trajectories.jsonl"),
                 "--out", sft_data], os.path.join(args.out, "tirgen.log"), threads)

    jobs = {"tiny": ([], tiny), "tirgen": ([], tirgen),
            "cot": (["tiny"], sft_stage(cot, cot_data, args.tiny, 0, args.cot_steps, args))}
    # T3: each seed's own cold start, or with --one-cold-start the first seed's for all (T1 and T2 then
    # wait for it, so that it runs alone on both cores).
    colds = {s: ("sft", os.path.join(args.out, "sft")) if args.one_cold_start else
             (f"sft/{s}", os.path.join(args.out, f"s{s}", "sft")) for s in args.seeds}
    for s, (name, sft) in colds.items():
        jobs.setdefault(name, (["cot", "tirgen"], sft_stage(sft, sft_data, cot, s, args.sft_steps, args)))
    # T1 is one model: sampled once (the first seed), shared by the seeds. So is T2, RL without tools:
    # its accuracy cannot move off T1's (a 1,000-problem run: 0.4% in every seed, -0.3/-0.4/-0.4 points
    # from T1), so more seeds of it would only cost time.
    s0, first = args.seeds[0], "sft" if args.one_cold_start else "cot"
    jobs |= {"T1": ([first], row_job(args.out, "T1", cot, NO_TOOLS, s0, args, test)),
             "t2": ([first], rl_stage(args.out, "t2", cot, s0, args, "--no-tools")),
             "T2": (["t2"], row_job(args.out, "T2", os.path.join(args.out, "t2"), NO_TOOLS, s0, args, test))}
    for s in args.seeds:
        jobs.update(seed_jobs(s, args, test, *colds[s]))
    return jobs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the issue asks for >= 3)")
    p.add_argument("--jobs", type=int, default=2, help="stages run at the same time, one CPU thread each (the cores)")
    p.add_argument("--out", default="out/ladder")
    p.add_argument("--tiny", default="out/tiny", help="the tiny copy model dir (built if missing)")
    p.add_argument("--test-n", type=int, default=500,
                   help="held-out toy problems scored per row (data/toy_test1000.jsonl)")
    p.add_argument("--cot-steps", type=int, default=250, help="SFT steps of the CoT base model")
    p.add_argument("--sft-steps", type=int, default=250, help="SFT steps of each TIRGen cold start")
    p.add_argument("--one-cold-start", action="store_true", help="one cold start for all seeds (the paper's one T3): "
                   "faster, but the intervals no longer cover the SFT seed")
    p.add_argument("--rl-iterations", type=int, default=12, help="RL iterations for T2, T4 and T5")
    p.add_argument("--rl-args", default="", help="more rl.py flags for T2, T4 and T5, one string: an RL ablation, "
                   "e.g. --out out/ladder-a001 --rl-args='--nll-alpha 0.01'")
    p.add_argument("--temperatures", default="0.6", help="sampling temperatures of the inference rows, comma-separated "
                   "(paper: 0.6; RL samples at 1.0)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="response budget at inference (RL's toy budget)")
    p.add_argument("--batch", type=int, default=250, help="problems per infer.py sampler call")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the wiring, not the method")
    p.add_argument("--fresh", action="store_true", help="delete --out first (the copy model --tiny stays)")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.rl_args = shlex.split(args.rl_args)
    if args.quick:
        args.max_new_tokens = QUICK["infer_tokens"]
    args.out, args.tiny = (os.path.abspath(x) for x in (args.out, args.tiny))
    return args


def main(argv=None):
    args = parse_args(argv)
    seeds = args.seeds
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "args.json"), "w") as f:  # what made this dir (runs/step_level.py reads it)
        json.dump(vars(args), f)
    t0 = time.time()
    n_train = 64 if args.quick else None
    train, cot_data = head("toy_train.jsonl", n_train, args.out), head("toy_cot.jsonl", n_train, args.out)
    test = head("toy_test1000.jsonl", args.test_n, args.out)
    jobs = pipeline(args, train, cot_data, test)
    print(f"{len(jobs)} stages, {args.jobs} at a time; logs in {args.out}/ and {args.out}/s<seed>/")
    schedule(jobs, args.jobs)
    shared = scores(args.out, "T1", args) | scores(args.out, "T2", args)
    results = {s: {k: v for row in ("T3", "T4", "T5", "T6")
                   for k, v in scores(os.path.join(args.out, f"s{s}"), row, args).items()}
               | shared for s in seeds}
    with open(os.path.join(args.out, "rows.jsonl"), "w") as f:
        for s in seeds:
            for row, _ in ROWS:
                for t in args.temperatures:
                    rep = results[s][f"{row}@{t}"][0]
                    f.write(json.dumps(dict(seed=s, row=row, temperature=t,
                                            **{k: rep[k] for k in ("avg@k", "tool_success", "tool_calls",
                                                                   "tokens")})) + "\n")
    md = tables(results, seeds, args.temperatures) + "\n\n" + failures(results, seeds, args.temperatures, args.out)
    with open(os.path.join(args.out, "ladder.md"), "w") as f:
        f.write(md + "\n")
    chart(results, seeds, args.temperatures, os.path.join(args.out, "ladder.png"))
    print(md)
    print(f"wrote {args.out}/ladder.md, ladder.png, rows.jsonl in {(time.time() - t0) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
