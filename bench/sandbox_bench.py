"""
Benchmark sandbox.py against the baseline users would write: a fresh `python -c` subprocess
per cell (subprocess.run with captured output).

Two cells: (a) trivial `print(1+1)`, (b) sympy `import sympy; print(sympy.factorint(2**64-1))`.
For each cell and runner it prints
  - throughput (cells/s) with `--workers` cells in flight (Sandbox.run_many; for the baseline
    a thread pool of the same size, each thread running one subprocess at a time),
  - p50 / p99 latency of one cell at a time (sequential calls, measured around the call),
and as its LAST line `speedup_vs_subprocess_sympy: <x>` = Sandbox / baseline throughput on (b).
Targets (issue 2): speedup >= 20x on (b), p50 <= 15 ms on (a).

    python bench/sandbox_bench.py                  # about a minute on 2 cores
    python bench/sandbox_bench.py --n-sandbox 2000 --n-baseline 40
"""

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sandbox import Sandbox  # noqa: E402

CELLS = {  # name -> (code, expected stdout)
    "trivial": ("print(1+1)", "2\n"),
    "sympy": ("import sympy; print(sympy.factorint(2**64-1))",
              "{3: 1, 5: 1, 17: 1, 257: 1, 641: 1, 65537: 1, 6700417: 1}\n"),
}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--workers", type=int, default=2, help="cells in flight (both runners)")
parser.add_argument("--n-sandbox", type=int, default=500,
                    help="Sandbox cells per measurement (latency and throughput each)")
parser.add_argument("--n-baseline", type=int, default=20,
                    help="subprocess cells per measurement (each costs ~0.1-0.6 s)")
args = parser.parse_args()


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(run_one, run_many, code, expected, n):
    """(cells/s with run_many, p50 s, p99 s of run_one); checks every output."""
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = run_one(code)
        latencies.append(time.perf_counter() - t0)
        assert out == expected, out
    t0 = time.perf_counter()
    outs = run_many([code] * n)
    throughput = n / (time.perf_counter() - t0)
    assert outs == [expected] * n, outs[:3]
    return throughput, percentile(latencies, 0.50), percentile(latencies, 0.99)


def subprocess_one(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60).stdout


def subprocess_many(codes):
    with ThreadPoolExecutor(args.workers) as pool:
        return list(pool.map(subprocess_one, codes))


print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
t0 = time.perf_counter()
sb = Sandbox(workers=args.workers)
print(f"Sandbox(workers={args.workers}) start-up: {time.perf_counter() - t0:.2f} s "
      f"(network isolated: {sb.network_isolated}, running as uid {os.geteuid()})")
sb.run_many([code for code, _ in CELLS.values()] * args.workers)  # warm the caches

rows = {}
for name, (code, expected) in CELLS.items():
    rows[name, "sandbox"] = measure(lambda c: sb.run(c).stdout,
                                    lambda cs: [r.stdout for r in sb.run_many(cs)],
                                    code, expected, args.n_sandbox)
    rows[name, "subprocess"] = measure(subprocess_one, subprocess_many, code, expected,
                                       args.n_baseline)
sb.close()

print(f"{'cell':8s} {'runner':11s} {'cells/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
for (name, runner), (throughput, p50, p99) in rows.items():
    print(f"{name:8s} {runner:11s} {throughput:9.1f} {p50 * 1e3:8.1f} {p99 * 1e3:8.1f}")
print(f"load average {os.getloadavg()[0]:.2f} at end")
for name in CELLS:
    speedup = rows[name, "sandbox"][0] / rows[name, "subprocess"][0]
    print(f"speedup_vs_subprocess_{name}: {speedup:.1f}")
