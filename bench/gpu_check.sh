#!/usr/bin/env bash
# The prepared device check, run once on a lent GPU (H100/H200) through the workplace's device tool:
#   bash bench/gpu_check.sh        (math-verify's wheels travel in .whl/; results go to $OUT)
# 1. sampler throughput on the GPU (ours vs HF generate, bench/sampler_bench.py);
# 2. the toy pipeline at its defaults on the GPU: tirgen -> sft -> rl (timings and figures vs the CPU's);
# 3. the memory plan against a measured peak, sharded training of a random Qwen2.5-Math-1.5B-shaped model.
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
nvidia-smi -L; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 150 python3 bench/sampler_bench.py --device cuda 2>&1 | grep -v shards | tee "$OUT/sampler.txt"
timeout 60 python3 tirgen.py 2>&1 | grep -v "TIRGen:" | tail -22 | tee "$OUT/tirgen.txt"
timeout 200 python3 sft.py 2>&1 | tr '\r' '\n' | grep -v "^sft:" | tee "$OUT/sft.txt" | tail -12
timeout 150 python3 rl.py --eval-every 5 2>&1 | tr '\r' '\n' | grep -v "^rl:\|^rollout" | tee "$OUT/rl.txt" | tail -25
timeout 300 python3 bench/plan_check.py 2>&1 | grep -v Warn | tee "$OUT/plan_check.txt"
timeout 300 python3 bench/plan_check.py --micro-batch 1 --no-grad-checkpointing 2>&1 | grep -v Warn | tee -a "$OUT/plan_check.txt"
cp out/rl/log.jsonl "$OUT/rl_log.jsonl" 2>/dev/null; cp out/rl_curves.png "$OUT/" 2>/dev/null
exit 0
