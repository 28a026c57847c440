"""What a draft token costs the target, alone and beside other sessions: the lean batched forward of the
default model (SmolLM2-135M-Instruct) for N rows of k tokens after 200 cached tokens each.

    python benchmarks/forward_cost.py [--threads 1] [--dtype float32]

Prints milliseconds per forward (the fastest of 5) and, per N, the cost of one more draft token per row as
a share of a row's plain decoding round: the acceptance rate above which drafting pays.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM

from banditspec.default_model import ensure_default_model
from banditspec.lean_llama import Feed, LeanLlama


def forward_ms(lean: LeanLlama, caches, rows: int, tokens: int) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        lean.forward_batch([Feed(cache, [7] * tokens, "all") for cache in caches[:rows]])
        times.append(time.perf_counter() - start)
        for cache in caches[:rows]:
            cache.crop(-tokens)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=getattr(torch, args.dtype)).eval()
    lean = LeanLlama(model, 2048)
    caches = [lean.new_cache() for _ in range(8)]
    for cache in caches:
        lean.forward([5] * 200, cache)
    print(f"{args.dtype}, {args.threads} thread(s); ms per forward of N rows × k tokens\n")
    print("| N | k = 1 | k = 4 | k = 7 | one more draft token per row ÷ a row's k = 1 round |")
    print("|---:|---:|---:|---:|---:|")
    for rows in (1, 2, 4, 8):
        one, four, seven = (forward_ms(lean, caches, rows, k) for k in (1, 4, 7))
        per_token = (seven - one) / (6 * rows)
        print(f"| {rows} | {one:.1f} | {four:.1f} | {seven:.1f} | {per_token / (one / rows):.0%} |")


if __name__ == "__main__":
    main()
