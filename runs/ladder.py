"""
runs/ladder.py: the whole THOR pipeline on the embedded toy default, ending in the toy version of
the paper's Table 3 ablation ladder, mean and spread over several seeds.

    python runs/ladder.py                       # 3 seeds at once: 15 min on 2 CPU cores (+70 s to build out/tiny)
    python runs/ladder.py --seeds 0 --quick     # tiny sizes, a smoke test of the wiring (pytest runs it)
    python runs/ladder.py --out out/ladder-a001 --rl-args='--nll-alpha 0.01'   # an RL ablation, same seeds

Every stage is its own process and stages pass files, nothing else:
    model.py build-tiny        -> out/tiny               the tiny base model (once)
    tirgen.py                  -> out/ladder/toy_sft.jsonl   toy actor-critic data + filters (once)
    per seed s, in out/ladder/s<s>/:
      sft.py                   -> sft/                   T3: TIRGen cold start
      rl.py --no-step-level    -> t4/                    T4: + episode-level RL
      rl.py                    -> t5/                    T5: + step-level RL (same seed, same budget)
      infer.py on the held-out toy problems, one predictions file per row and temperature:
        T1 out/tiny, no tool execution; T3 sft/; T4 t4/; T5 t5/ (no self-correction);
        T6 t5/ with self-correction (N_corr 4)
      eval.py --predictions    -> <row>@<T>/report.json  accuracy, tool-call success, calls, tokens
Out: out/ladder/ladder.md (the table), out/ladder/ladder.png (the chart), out/ladder/rows.jsonl (one
record per seed, row and temperature). A rerun skips the stages whose output exists; --fresh starts over.
The seeds vary SFT, RL and sampling; the base model and the TIRGen data are shared, like a base
checkpoint and a dataset in the paper. Two sampling temperatures: the paper's evaluation setting 0.6,
where few of the tiny model's tool calls fail, and RL's rollout temperature 1.0, where 10-40% fail,
as real models' calls do; the code-level mechanisms (step-level RL, self-correction) act on failures.
"""
import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [("T1", "tiny model, no tools"), ("T3", "+ TIRGen cold start"), ("T4", "+ episode-level RL"),
        ("T5", "+ step-level RL"), ("T6", "+ self-correction")]
METRICS = [("avg@k", "acc", "{:.1f}"), ("tool_success", "tool-call success", "{:.1f}"),
           ("tool_calls", "calls/answer", "{:.2f}"), ("tokens", "tokens/answer", "{:.0f}")]
PER_TEMPERATURE = 2  # acc and tool-call success at every temperature; calls and tokens at the first
# --quick: sizes that only check that the stages fit together (seconds per stage).
QUICK = dict(sft=["--max-steps", "3", "--batch-size", "4"],
             rl=["--iterations", "1", "--group-size", "2", "--batch-problems", "2", "--max-new-tokens", "48",
                 "--max-refills", "0"],
             infer_tokens=48)


def run(cmd, log, one_thread=True):
    """One stage in its own process, output to its log; one CPU thread where seeds run side by side."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **({"OMP_NUM_THREADS": "1"} if one_thread else {}))
    with open(log, "w") as f:
        p = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        with open(log) as f:
            tail = f.read()[-2000:]
        raise SystemExit(f"{' '.join(cmd)} failed (exit {p.returncode}); log {log}:\n{tail}")


def head(name, n, out):
    """The first n problems of data/<name> (all if n is None), copied to out/<name>."""
    path = os.path.join(out, name)
    with open(os.path.join(ROOT, "data", name)) as f, open(path, "w") as g:
        g.writelines(f.readlines()[:n])
    return path


def seed_chain(s, args, test, sft_data):
    """All stages of one seed; returns {"<row>@<temperature>": eval report}."""
    d = os.path.join(args.out, f"s{s}")
    os.makedirs(d, exist_ok=True)
    q = QUICK if args.quick else dict(sft=[], rl=[])
    j = lambda *p: os.path.join(d, *p)
    rl = lambda name, *level: (j(name), ["rl.py", "--model", j("sft"), "--out", j(name), "--seed", str(s), *level,
                                         "--iterations", str(args.rl_iterations), "--eval-every", "0", *q["rl"], *args.rl_args])
    stages = [
        (j("sft"), ["sft.py", "--data", sft_data, "--model", args.tiny, "--out", j("sft"), "--seed", str(s),
                    "--max-steps", str(args.sft_steps), "--eval-n", "0", *q["sft"]]),
        rl("t4", "--no-step-level"),  # same seed and budget: T4 and T5 differ only in the step level
        rl("t5"),
    ]
    for out, cmd in stages:
        if not os.path.exists(os.path.join(out, "config.json")):
            run(cmd, out + ".log")
    no_sc = ["--n-corr", "0"]  # infer.py corrects by default; only T6 does
    rows = dict(T1=(args.tiny, ["--max-tool-calls", "0", *no_sc]), T3=(j("sft"), no_sc), T4=(j("t4"), no_sc),
                T5=(j("t5"), no_sc), T6=(j("t5"), ["--n-corr", "4"]))
    reports = {}
    for row, (model, extra) in rows.items():
        for t in args.temperatures:
            name = f"{row}@{t}"
            preds, rep = j(f"{name}.jsonl"), j(name, "report.json")
            if not os.path.exists(rep):
                run(["infer.py", "--model", model, "--data", test, "--out", preds, "--seed", str(s), "--temperature", str(t),
                     "--max-new-tokens", str(args.max_new_tokens), *extra], j(f"{name}.infer.log"))
                run(["eval.py", "--predictions", preds, "--benchmarks", "toy", "--out", j(name)], j(f"{name}.eval.log"))
            with open(rep) as f:
                reports[name] = json.load(f)["benchmarks"]["toy"]
    return reports


def columns(temps):
    """(key, header, format, temperature) of every column of the table."""
    cols = [(k, f"{name} T={t}", fmt, t) for t in temps for k, name, fmt in METRICS[:PER_TEMPERATURE]]
    return cols + [(k, f"{name} T={temps[0]}", fmt, temps[0]) for k, name, fmt in METRICS[PER_TEMPERATURE:]]


def values(results, seeds, row, key, t):
    return [results[s][f"{row}@{t}"][key] for s in seeds if results[s][f"{row}@{t}"][key] is not None]


def table(results, seeds, temps):
    """Markdown: mean ± half the range over seeds (every seed's numbers are in rows.jsonl)."""
    cols = columns(temps)
    lines = [f"Held-out toy problems (one sample each), {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
             "mean ± half-range; T = sampling temperature.", "",
             "| stage | " + " | ".join(h for _, h, _, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row, name in ROWS:
        cells = []
        for key, _, fmt, t in cols:
            xs = values(results, seeds, row, key, t)
            half = (max(xs) - min(xs)) / 2 if xs else 0
            cells.append("-" if not xs else fmt.format(statistics.mean(xs)) + (" ± " + fmt.format(half) if len(xs) > 1 else ""))
        lines.append(f"| {row} {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results, seeds, temps, path):
    """Accuracy and tool-call success per stage and temperature: bars at the mean, seeds as dots."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(temps)
    for ax, (key, label) in zip(axes, [("avg@k", "accuracy %"), ("tool_success", "tool-call success %")]):
        for k, t in enumerate(temps):
            for i, (row, _) in enumerate(ROWS):
                xs = values(results, seeds, row, key, t) or [0.0]  # no tool calls at all: an empty bar
                x = i + (k - (len(temps) - 1) / 2) * width
                ax.bar(x, statistics.mean(xs), width=width * 0.9, color=f"C{k}", label=f"T={t}" if i == 0 else None)
                ax.plot([x] * len(xs), xs, "k.", ms=4)
        ax.set_xticks(range(len(ROWS)), [f"{r}\n" + textwrap.fill(n, 14) for r, n in ROWS], fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"THOR toy ablation ladder: held-out toy problems, {len(seeds)} seeds (dots)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (the issue asks for >= 3)")
    p.add_argument("--jobs", type=int, default=3, help="seeds run at the same time (one CPU thread each)")
    p.add_argument("--out", default="out/ladder")
    p.add_argument("--tiny", default="out/tiny", help="the base model dir (built if missing)")
    p.add_argument("--test-n", type=int, default=200, help="held-out toy problems scored per row")
    p.add_argument("--sft-steps", type=int, default=250, help="cold-start SFT steps")
    p.add_argument("--rl-iterations", type=int, default=12, help="RL iterations for T4 and for T5")
    p.add_argument("--rl-args", default="", help="more rl.py flags for T4 and T5, one string: an RL ablation, "
                   "e.g. --out out/ladder-a001 --rl-args='--nll-alpha 0.01'")
    p.add_argument("--temperatures", default="0.6,1.0", help="sampling temperatures of the inference rows")
    p.add_argument("--max-new-tokens", type=int, default=160, help="response budget at inference (RL's toy budget)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the wiring, not the method")
    p.add_argument("--fresh", action="store_true", help="delete --out first (the base model --tiny stays)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.rl_args = shlex.split(args.rl_args)
    if args.quick:
        args.max_new_tokens = QUICK["infer_tokens"]
    args.out, args.tiny = (os.path.abspath(x) for x in (args.out, args.tiny))
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    if not os.path.exists(os.path.join(args.tiny, "config.json")):
        run(["model.py", "build-tiny", "--out", args.tiny] + (["--pretrain-steps", "0"] if args.quick else []),
            os.path.join(args.out, "tiny.log"), one_thread=False)  # alone on the CPU: 70 s, not 2.3 min
    train, test = head("toy_train.jsonl", 64 if args.quick else None, args.out), head("toy_test.jsonl", args.test_n, args.out)
    sft_data = os.path.join(args.out, "toy_sft.jsonl")
    if not os.path.exists(sft_data):
        run(["tirgen.py", "--data", train, "--trajectories", os.path.join(args.out, "toy_trajectories.jsonl"),
             "--out", sft_data], os.path.join(args.out, "tirgen.log"))
    print(f"base {args.tiny}, data {sft_data}; seeds {seeds}, {args.jobs} at a time; logs in {args.out}/s<seed>/")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(seeds, pool.map(lambda s: seed_chain(s, args, test, sft_data), seeds)))
    with open(os.path.join(args.out, "rows.jsonl"), "w") as f:
        for s in seeds:
            for row, _ in ROWS:
                for t in args.temperatures:
                    rep = results[s][f"{row}@{t}"]
                    f.write(json.dumps(dict(seed=s, row=row, temperature=t, **{k: rep[k] for k, _, _ in METRICS})) + "\n")
    md = table(results, seeds, args.temperatures)
    with open(os.path.join(args.out, "ladder.md"), "w") as f:
        f.write(md + "\n")
    chart(results, seeds, args.temperatures, os.path.join(args.out, "ladder.png"))
    print(md)
    print(f"wrote {args.out}/ladder.md, ladder.png, rows.jsonl in {(time.time() - t0) / 60:.1f} min")
    return results


if __name__ == "__main__":
    main()
