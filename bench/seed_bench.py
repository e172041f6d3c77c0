"""
What one seed per model.rollout call costs: eval.py and infer.py roll out fixed chunks of problems
(one call, one seed per chunk) so that a resumed run samples what an uninterrupted one did. A seed
per problem would need one call per problem (or a seed per row inside model.rollout). This times both
on the same prompts, in one run, and prints the ratio (measure it on an idle machine for absolute times).

    python bench/seed_bench.py --model out/tiny               # 32 toy problems x 4 samples, 64 tokens
    python bench/seed_bench.py --model DIR --problems 16 --max-new-tokens 256
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model  # noqa: E402
from sandbox import Sandbox  # noqa: E402

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--model", default="out/tiny", help="model dir")
p.add_argument("--problems", type=int, default=32, help="toy test problems: one chunk")
p.add_argument("--k", type=int, default=4, help="samples per problem")
p.add_argument("--max-new-tokens", type=int, default=64)
p.add_argument("--repeats", type=int, default=2)
args = p.parse_args()

import torch  # noqa: E402
torch.set_num_threads(1)
m, tok = model.load(args.model)
with open(os.path.join(os.path.dirname(__file__), "..", "data", "toy_test.jsonl")) as f:
    prompts = [model.encode_prompt(tok, json.loads(line)["problem"]) for line in f][:args.problems]
kw = dict(n=args.k, max_new_tokens=args.max_new_tokens, temperature=0.6, max_tool_calls=10)
with Sandbox(workers=2) as sb:
    for _ in range(args.repeats):
        t = time.perf_counter()
        chunk = model.rollout(m, tok, prompts, sb, seed=0, **kw)
        t_chunk = time.perf_counter() - t
        t = time.perf_counter()
        each = [r for i, q in enumerate(prompts) for r in model.rollout(m, tok, [q], sb, seed=i, **kw)]
        t_each = time.perf_counter() - t
        print(f"one call for {len(prompts)} problems: {t_chunk:.1f} s ({sum(r.generated for r in chunk)} tokens) | "
              f"one call per problem: {t_each:.1f} s ({sum(r.generated for r in each)} tokens) | "
              f"ratio {t_each / t_chunk:.2f}")
