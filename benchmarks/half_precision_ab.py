"""The lean forward in half precision on a CPU, its paths side by side: folded attention products and
`F.linear` for one row (the float32 paths) against the fused attention kernel and `torch.mv`.

    python benchmarks/half_precision_ab.py [--threads 2] [--dtype bfloat16] [--repeats 9]

SmolLM2-135M-Instruct, N rows of k tokens after 200-375 cached tokens each, the variants interleaved shape
by shape; prints the median milliseconds per forward and each variant's ratio to the float32 paths.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from banditspec.default_model import ensure_default_model
from banditspec.lean_llama import Feed, LeanLlama

VARIANTS = {"float32 paths": (False, False), "fused attention": (True, False), "fused + mv": (True, True)}
SHAPES = ((1, 1), (1, 8), (8, 1), (8, 5), (8, 8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=getattr(torch, args.dtype)).eval()
    lean = LeanLlama(model, 2048)
    caches = [lean.new_cache() for _ in range(8)]
    for index, cache in enumerate(caches):
        lean.forward([5] * (200 + 25 * index), cache)

    def seconds(rows: int, tokens: int) -> float:
        start = time.perf_counter()
        lean.forward_batch([Feed(cache, [7] * tokens, "all") for cache in caches[:rows]])
        elapsed = time.perf_counter() - start
        for cache in caches[:rows]:
            cache.crop(-tokens)
        return elapsed

    times: dict[tuple[int, int, str], list[float]] = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for rows, tokens in SHAPES:
            for name, (fused, vectors) in VARIANTS.items():
                lean.fused, lean.half_vectors = fused, vectors
                times.setdefault((rows, tokens, name), []).append(seconds(rows, tokens))
    print(f"{args.dtype}, {args.threads} thread(s), median of {args.repeats}; ms per forward (÷ float32 paths)\n")
    print("| rows × tokens | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---:|" * len(VARIANTS))
    for rows, tokens in SHAPES:
        base = statistics.median(times[(rows, tokens, "float32 paths")][1:])
        cells = []
        for name in VARIANTS:
            median = statistics.median(times[(rows, tokens, name)][1:])
            cells.append(f"{1e3 * median:.1f} ({median / base:.2f})")
        print(f"| {rows} × {tokens} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
