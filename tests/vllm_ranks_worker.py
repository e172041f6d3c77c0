"""Worker for tests/test_vllm_ranks.py: vLLM rollouts on uneven shares across ranks.

`python tests/vllm_ranks_worker.py MODEL_DIR OUT_DIR`, either under
`torchrun --nproc_per_node 2` (gloo, via model.init_dist) or as one process. Four chunks of toy
prompts, each rolled out with a seed fixed by its index. Two ranks: rank 0 runs chunks 0, 1, 2 (three
rollout calls, so three times the `generate` calls of rank 1) and rank 1 runs chunk 3 only. One process
runs all four in order. Each process writes {"chunks": {chunk: [response_ids, ...]}, "generate_calls": N}
to OUT_DIR/rank<R>.json."""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

CHUNKS, PER_CHUNK = 4, 2  # problems per chunk
SHARES = {0: [0, 1, 2], 1: [3]}  # rank -> its chunks under 2 ranks


def chunk_seed(c):
    return 1000 + 7919 * c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    import torch.distributed as dist

    import model
    import rewards
    from sandbox import Sandbox
    rank, world, _ = model.init_dist()
    assert world in (1, 2), world
    chunks = list(range(CHUNKS)) if world == 1 else SHARES[rank]
    problems = rewards.read_problems(os.path.join(ROOT, "data", "toy_test.jsonl"))[:CHUNKS * PER_CHUNK]
    engine = model.VLLM(args.model_dir, seed=0, max_model_len=512)
    tok, calls, generate = engine.tok, [0], engine.generate

    def counted(*a, **k):  # this instance only: how many `generate` calls this rank made
        calls[0] += 1
        return generate(*a, **k)
    engine.generate = counted
    out = {}
    with Sandbox(workers=1, timeout_s=5.0) as sb:
        for c in chunks:
            prompts = [model.encode_prompt(tok, p["problem"]) for p in problems[c * PER_CHUNK:(c + 1) * PER_CHUNK]]
            rs = model.rollout(engine, tok, prompts, sb, n=2, max_new_tokens=32, temperature=1.0, seed=chunk_seed(c))
            out[str(c)] = [r.response_ids for r in rs]
            print(f"rank {rank}/{world}: chunk {c} done", flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"chunks": out, "generate_calls": calls[0]}, f)
    if world > 1:
        dist.barrier()  # both ranks done before either starts its teardown
    # No destroy_process_group here (as in rl.py): the engine's shutdown, at interpreter exit, destroys
    # vLLM's groups and then the default group itself; destroying it first makes that shutdown raise
    # "ValueError: Invalid process group specified" (vLLM's finalizer holds the engine, so `del` is moot).


if __name__ == "__main__":
    main()
