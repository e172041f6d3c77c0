#!/usr/bin/env bash
# The prepared device check, one run on a lent GPU (H100/H200), about 10 minutes, every step under `timeout`:
#   bash bench/gpu_check.sh        (wheels in .whl/ are installed first; results go to $OUT)
# 1. a random ~1.5B model shaped like Qwen2-1.5B (built here from a config: nothing is downloaded);
# 2. the memory plan's prediction for it (`rl.py --plan`, from the sharded-training work: skipped where
#    this checkout's rl.py has no --plan);
# 3. vLLM colocated with the policy (needs vLLM installed; skipped otherwise): engine start, rollout
#    tokens/s, sleep / wake / weight-sync seconds, memory freed by sleep, and whether the engine's greedy
#    tokens follow the policy after an update (agreement with HF greedy before and after the sync);
# 4. one RL iteration of that model through rl.py (vLLM if installed, else the HF sampler), with GPU
#    memory polled by nvidia-smi: rollout / tools / update seconds, tokens/s, peak memory;
# 5. sampler throughput: ours (with our KV-cache layer) vs HF generate (bench/sampler_bench.py);
# 6. the memory plan against a measured peak: sharded training of the same shapes (bench/plan_check.py);
# 7. the vLLM tests on the GPU (weight sync by prompt log-probs; tests/test_vllm_ranks.py needs 2 GPUs: skipped on 1).
set -u
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
M=out/q15
nvidia-smi -L; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
HAS_VLLM=$(python3 -c "import vllm; print(vllm.__version__)" 2>/dev/null || echo "")
echo "vllm: ${HAS_VLLM:-not installed (steps 3 and the vLLM engine of step 4 are skipped)}" | tee "$OUT/summary.txt"

# 1. the model: Qwen2-1.5B's shapes (1.54B parameters), random bf16 weights, the tiny model's tokenizer
timeout 90 python3 - "$M" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import sys, torch, model
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
out = sys.argv[1]
tok = AutoTokenizer.from_pretrained(model.build_tiny(out + "-tok", pretrain_steps=0))
cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
torch.manual_seed(0)
with torch.device("cuda"):
    m = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
m.generation_config.eos_token_id = tok.eos_token_id
model.save(m, tok, out)
print(f"model: {sum(p.numel() for p in m.parameters()) / 1e9:.2f}B parameters -> {out}")
EOF

# 2. the memory plan (the sharded-training work adds --plan; its absence is reported, not fatal)
timeout 30 python3 rl.py --model "$M" --plan --nproc 1 --gpu-memory 139 --group-size 8 --max-new-tokens 512 2>&1 \
  | tee "$OUT/plan.txt" | tail -25 || true

# 3. vLLM colocated with the policy
if [ -n "$HAS_VLLM" ]; then
timeout 200 python3 - "$M" <<'EOF' 2>&1 | grep -v "INFO\|DEBUG" | tee "$OUT/vllm.txt" | tail -20
import json, sys, time, torch, model
from sandbox import Sandbox
path = sys.argv[1]
def mem():  # GiB in use on the GPU, engine included (its memory is outside torch's allocator)
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30
t = time.perf_counter(); engine = model.VLLM(path, gpu_memory=0.3, max_model_len=2048); t_start = time.perf_counter() - t
policy, tok = model.load(path, device="cuda", dtype=torch.bfloat16)
problems = [json.loads(line)["problem"] for line in open("data/toy_test.jsonl")][:16]
prompts = [model.encode_prompt(tok, p) for p in problems]
with Sandbox(workers=4) as sb:
    model.rollout(engine, tok, prompts[:2], sb, n=2, max_new_tokens=16, seed=0)  # warm-up
    t = time.perf_counter()
    rs = model.rollout(engine, tok, prompts, sb, n=8, max_new_tokens=512, seed=0)
    t_roll = time.perf_counter() - t
    greedy = lambda m: [r.response_ids[:16] for r in model.rollout(m, tok, prompts, sb, max_new_tokens=16, temperature=0)]
    agree = lambda a, b: sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(map(len, a))
    with torch.no_grad():  # an "update": a perturbation large enough to change greedy decoding
        for q in policy.parameters():
            q.add_(torch.randn_like(q) * q.float().std().to(q.dtype) * 0.5)
    hf_new = greedy(policy)
    before = agree(greedy(engine), hf_new)
    m0 = mem(); torch.cuda.synchronize(); t = time.perf_counter(); engine.sleep(); t_sleep = time.perf_counter() - t; m1 = mem()
    t = time.perf_counter(); n = engine.wake_and_sync(model.full_params(policy, engine.dtype)); torch.cuda.synchronize(); t_sync = time.perf_counter() - t
    m2 = mem()  # after the wake: the update's cached blocks were released first (VLLM.wake_and_sync)
    after = agree(greedy(engine), hf_new)
tokens = sum(r.generated for r in rs)
print(f"vllm engine start {t_start:.1f} s; rollouts: {len(rs)} x <=512 tokens, {tokens} tokens in {t_roll:.1f} s = {tokens / t_roll:.0f} tokens/s")
print(f"sleep {t_sleep:.2f} s (GPU memory {m0:.1f} -> {m1:.1f} GiB), wake + sync {n} tensors {t_sync:.2f} s (-> {m2:.1f} GiB)")
print(f"greedy agreement with the updated policy (16 prompts x 16 tokens): before sync {before:.2f}, after {after:.2f}")
EOF
fi

# 4. one RL iteration through rl.py, GPU memory polled every 0.2 s
ENGINE=$([ -n "$HAS_VLLM" ] && echo vllm || echo hf)
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/rl_mem.csv" & POLL=$!
timeout 200 python3 rl.py --model "$M" --data data/toy_train.jsonl --out out/rl-q15 --engine "$ENGINE" --vllm-gpu-memory 0.3 \
  --group-size 8 --batch-problems 8 --iterations 1 --updates-per-batch 2 --micro-batch 8 --max-new-tokens 512 \
  --max-refills 0 --no-dynamic-sampling --keep-unboxed --keep-failed-episodes --no-step-level --save-every 0 --lr 1e-6 \
  2>&1 | grep -v "INFO\|DEBUG" | tee "$OUT/rl.txt" | tail -8
kill $POLL 2>/dev/null
python3 - "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import json, sys
out = sys.argv[1]
r = json.loads(open("out/rl-q15/log.jsonl").readlines()[-1])
n = r["episode_samples"]
peak = max(int(x) for x in open(f"{out}/rl_mem.csv").read().split())
print(f"rl.py iteration: rollout {r['s_rollout']:.1f} s + tools {r['s_tool']:.1f} s + update {r['s_update']:.1f} s (sleep, update, wake, sync); "
      f"rollout {64 * r['response_len'] / (r['s_rollout'] + r['s_tool']):.0f} tokens/s; update {2 * n * r['response_len'] / r['s_update']:.0f} "
      f"response tokens/s ({n} samples x 2 updates); peak GPU memory {peak / 1024:.1f} GiB")
EOF
cp out/rl-q15/log.jsonl "$OUT/rl_log.jsonl" 2>/dev/null

# 5. sampler throughput on the GPU: ours vs HF generate
timeout 90 python3 bench/sampler_bench.py --device cuda 2>&1 | grep -v shards | tee "$OUT/sampler.txt" | tail -6

# 6. planned vs measured peak memory of sharded training (the plan must be within 15%)
timeout 150 python3 bench/plan_check.py 2>&1 | grep -v Warn | tee "$OUT/plan_check.txt"
timeout 150 python3 bench/plan_check.py --micro-batch 1 --no-grad-checkpointing 2>&1 | grep -v Warn | tee -a "$OUT/plan_check.txt"
# 7. the vLLM tests on the GPU
if [ -n "$HAS_VLLM" ]; then
  timeout 240 python3 -m pytest -q tests/test_vllm.py 2>&1 | tail -3 | tee "$OUT/vllm_tests.txt"
fi
cat "$OUT/vllm.txt" 2>/dev/null | tail -3 >> "$OUT/summary.txt"
tail -4 "$OUT/plan_check.txt" >> "$OUT/summary.txt"
exit 0
