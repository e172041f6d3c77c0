#!/usr/bin/env bash
# THOR-Thinking-8B (paper Table 1, 79.8 Avg@4): Qwen3-8B in thinking mode, the "thinking" prompt (Fig. 9),
# 16,384 tokens. TIRGen (critic Qwen3-32B) -> SFT -> hierarchical RL -> eval with self-correction, 8 x 80 GB.
#   Nothing is downloaded: BASE is a local model dir, CRITIC and ACTOR are OpenAI-compatible servers, e.g.
#     vllm serve Qwen/Qwen3-32B --port 8000 --tensor-parallel-size 2     # the critic (non-thinking)
#     vllm serve $BASE --port 8001                                        # the actor, for TIRGen's throughput
# Architecture for --plan: configs/Qwen3-8B/config.json, the fields of Qwen/Qwen3-8B's config.json on the
# Hugging Face hub (hidden 4096, 36 layers, 32 heads, 8 KV heads, head_dim 128, intermediate 12288, vocab 151936,
# untied, q/k norms).
# What each step needs (GPUs from the plan; hours are NOT known: no GPU throughput has been measured in this repo.
# bench/gpu_check.sh measures rollout and update tokens/s on one GPU; hours ~ tokens below / (tokens/s x GPUs)):
#   TIRGen  3 GPUs (critic TP 2 + actor), 4 attempts x the problems x up to 20k tokens (paper: 57,598 kept samples)
#   SFT     8 GPUs, 1 epoch over ~58k samples x ~8k tokens ~ 0.5B tokens (projection: samples x a typical length)
#   RL      8 GPUs (paper: 16 H200), 110 iterations x 5120 problems x G=16 x ~8k tokens (Table 5: 7,841) ~ 70B tokens;
#           the paper's batch sizes for this run are not known, the release's 7B ones are used
#   eval    1-8 GPUs, 6 benchmarks (1,547 problems) x 4 samples x ~8k tokens ~ 50M tokens
# Several nodes: the same commands, with LAUNCH="torchrun --nnodes 2 --node-rank R --nproc_per_node 8
#   --rdzv-backend c10d --rdzv-endpoint HOST:29500" on every node and NPROC=16 for the plan.
set -euo pipefail
cd "$(dirname "$0")/../.."
NPROC=${NPROC:-8}
GPU_GB=${GPU_GB:-79}          # GiB per GPU: an 80 GB H100/A100 has 79.6
LAUNCH=${LAUNCH:-torchrun --nproc_per_node $NPROC}
SFT=(--lr 2e-6 --epochs 1 --batch-size 1 --grad-accum $((256 / NPROC)) --max-len 20000 --bucket --grad-checkpointing
     --template thinking)
RL=(--group-size 16 --max-new-tokens 16384 --micro-batch 1 --grad-checkpointing --engine vllm --vllm-gpu-memory 0.6
    --template thinking)

# 0. Memory plans from config.json alone, before anything is loaded (exit 1 with the reason if a stage does not fit)
python sft.py --plan --model runs/recipes/configs/Qwen3-8B --nproc "$NPROC" --gpu-memory "$GPU_GB" "${SFT[@]}"
python rl.py --plan --model runs/recipes/configs/Qwen3-8B --nproc "$NPROC" --gpu-memory "$GPU_GB" "${RL[@]}"

[ -z "${PLAN_ONLY:-}" ] || exit 0   # PLAN_ONLY=1: the plans alone, no model or data needed
BASE=${BASE:?set BASE to a local Qwen3-8B model dir}
CRITIC=${CRITIC:-http://127.0.0.1:8000/v1}
ACTOR=${ACTOR:-http://127.0.0.1:8001/v1}
PROBLEMS=${PROBLEMS:?set PROBLEMS to the TIRGen problems JSONL (paper: DAPO-17k, DeepMath-103k, DeepScaleR-40k)}
RL_DATA=${RL_DATA:?set RL_DATA to ToRL-28k as JSONL (id, problem, answer)}
OUT=${OUT:-out/thor-thinking-8b}
mkdir -p "$OUT"

# 1. TIRGen (§2.2): L_step 4096 for reasoning models, 4 attempts per problem, pure-CoT-solved problems dropped
python tirgen.py --actor "$ACTOR" --critic "$CRITIC" --template thinking --L-step 4096 --attempts 4 --drop-cot-solved \
    --data "$PROBLEMS" --trajectories "$OUT/trajectories.jsonl" --out "$OUT/sft.jsonl" --workers 64

# 2. Cold-start SFT (§2.3, Eq. 3): lr 2e-6 constant, 1 epoch, global batch 1 x 256/NPROC x NPROC = 256, 20,000 tokens
$LAUNCH sft.py --data "$OUT/sft.jsonl" --model "$BASE" --out "$OUT/sft" "${SFT[@]}" --eval-n 0

# 3. Hierarchical RL (Eq. 4-9): G 16, lr 1e-6, eps 0.2/0.28, nll_alpha 0.01, L_suf 100, 5 calls (rl.py defaults);
#    16,384 new tokens (paper App. E.2); 5120 problems x 40 updates per batch, 110 iterations (the release's 7B run)
$LAUNCH rl.py --model "$OUT/sft" --data "$RL_DATA" --out "$OUT/rl" --iterations 110 "${RL[@]}"

# 4. Eval (§7): Avg@4 on the six benchmarks, T 0.6, 16,384 tokens, self-correction N_corr 4 (Table 3, T6)
python eval.py --model "$OUT/rl" --benchmarks paper --k 4 --engine vllm --self-correction 4 --reasoning \
    --template thinking --out "$OUT/eval"
