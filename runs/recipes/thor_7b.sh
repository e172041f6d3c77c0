#!/usr/bin/env bash
# THOR-7B (paper Table 1, 61.2 Avg@4): Qwen2.5-Math-7B, non-reasoning, the "raw" prompt, 4,096 tokens.
#   TIRGen (critic Qwen3-32B) -> SFT -> hierarchical RL -> eval with self-correction, one node of 8 x 80 GB.
#   Nothing is downloaded: BASE is a local model dir, CRITIC and ACTOR are OpenAI-compatible servers, e.g.
#     vllm serve Qwen/Qwen3-32B --port 8000 --tensor-parallel-size 2     # the critic (non-thinking)
#     vllm serve $BASE --port 8001                                        # the actor, for TIRGen's throughput
# Architecture for --plan: configs/Qwen2.5-Math-7B/config.json, the fields of Qwen/Qwen2.5-Math-7B's config.json
# on the Hugging Face hub (hidden 3584, 28 layers, 28 heads, 4 KV heads, intermediate 18944, vocab 152064, untied).
# What each step needs (GPUs from the plan; hours are NOT known: no GPU throughput has been measured in this repo.
# bench/gpu_check.sh measures rollout and update tokens/s on one GPU; hours ~ tokens below / (tokens/s x GPUs)):
#   TIRGen  3 GPUs (critic TP 2 + actor), 4 attempts x the problems x ~1-2k tokens each (paper: 29,217 kept samples)
#   SFT     8 GPUs, 1 epoch over ~29k samples x ~1.5k tokens ~ 45M tokens (projection: samples x a typical length)
#   RL      8 GPUs (paper: 16 H200), 110 iterations x 5120 problems x G=16 rollouts x ~1k tokens (Table 5) ~ 9B tokens
#   eval    1-8 GPUs, 6 benchmarks (1,547 problems) x 4 samples x ~1k tokens ~ 6M tokens
# Several nodes: the same commands, with LAUNCH="torchrun --nnodes 2 --node-rank R --nproc_per_node 8
#   --rdzv-backend c10d --rdzv-endpoint HOST:29500" on every node and NPROC=16 for the plan.
set -euo pipefail
cd "$(dirname "$0")/../.."
NPROC=${NPROC:-8}
GPU_GB=${GPU_GB:-79}          # GiB per GPU: an 80 GB H100/A100 has 79.6
LAUNCH=${LAUNCH:-torchrun --nproc_per_node $NPROC}
SFT=(--lr 2e-6 --epochs 1 --batch-size 2 --grad-accum $((128 / NPROC)) --max-len 4096 --bucket --grad-checkpointing)
RL=(--group-size 16 --max-new-tokens 3584 --micro-batch 2 --grad-checkpointing --engine vllm --vllm-gpu-memory 0.5)

# 0. Memory plans from config.json alone, before anything is loaded (exit 1 with the reason if a stage does not fit)
python sft.py --plan --model runs/recipes/configs/Qwen2.5-Math-7B --nproc "$NPROC" --gpu-memory "$GPU_GB" "${SFT[@]}"
python rl.py --plan --model runs/recipes/configs/Qwen2.5-Math-7B --nproc "$NPROC" --gpu-memory "$GPU_GB" "${RL[@]}"

[ -z "${PLAN_ONLY:-}" ] || exit 0   # PLAN_ONLY=1: the plans alone, no model or data needed
BASE=${BASE:?set BASE to a local Qwen2.5-Math-7B model dir}
CRITIC=${CRITIC:-http://127.0.0.1:8000/v1}
ACTOR=${ACTOR:-http://127.0.0.1:8001/v1}
PROBLEMS=${PROBLEMS:?set PROBLEMS to the TIRGen problems JSONL (paper: DAPO-17k, DeepMath-103k, DeepScaleR-40k)}
RL_DATA=${RL_DATA:?set RL_DATA to ToRL-28k as JSONL (id, problem, answer)}
OUT=${OUT:-out/thor-7b}
mkdir -p "$OUT"

# 1. TIRGen (§2.2): L_step 512, 4 attempts per problem (release), pure-CoT-solved problems dropped
python tirgen.py --actor "$ACTOR" --critic "$CRITIC" --template raw --L-step 512 --attempts 4 --drop-cot-solved \
    --data "$PROBLEMS" --trajectories "$OUT/trajectories.jsonl" --out "$OUT/sft.jsonl" --workers 64

# 2. Cold-start SFT (§2.3, Eq. 3): lr 2e-6 constant, 1 epoch, global batch 2 x 128/NPROC x NPROC = 256
$LAUNCH sft.py --data "$OUT/sft.jsonl" --model "$BASE" --out "$OUT/sft" "${SFT[@]}" --eval-n 0

# 3. Hierarchical RL (Eq. 4-9): G 16, lr 1e-6, eps 0.2/0.28, nll_alpha 0.01, L_suf 100, 5 calls (rl.py defaults);
#    5120 problems x 40 updates per batch (release), 110 iterations = 20 epochs of ToRL-28k;
#    3584 new tokens: prompt + response within Qwen2.5-Math's 4,096 positions (release: 800 + 3,200)
$LAUNCH rl.py --model "$OUT/sft" --data "$RL_DATA" --out "$OUT/rl" --iterations 110 "${RL[@]}"

# 4. Eval (§7): Avg@4 on the six benchmarks, T 0.6, self-correction N_corr 4 (Table 3, T6)
python eval.py --model "$OUT/rl" --benchmarks paper --k 4 --engine vllm --self-correction 4 --max-new-tokens 3584 \
    --out "$OUT/eval"
