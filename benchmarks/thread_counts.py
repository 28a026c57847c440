"""The lean batched forward on different torch thread counts, interleaved in one process on one model.

    PYTHONPATH=. python benchmarks/thread_counts.py [--threads 1,2] [--shapes 1x1,1x4,8x4] [--repeats 15]

What `serve-target --solo-threads` rests on: how much faster a forward runs on every core than on one
fewer. Each shape (rows × tokens per row, after 300 cached tokens per row) runs on each thread count in
turn, the order alternating; the table gives each count's median time and the median of the paired ratios
to the first count (robust to a machine whose speed drifts).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from banditspec.default_model import ensure_default_model
from banditspec.lean_llama import Feed, LeanLlama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts; ratios are to the first")
    parser.add_argument("--shapes", default="1x1,1x4,1x7,1x8,2x4,8x1,8x4")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    counts = [int(x) for x in args.threads.split(",")]
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
    model = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=getattr(torch, args.dtype)).eval()
    lean = LeanLlama(model, 2048)
    rows_needed = max(rows for rows, _ in shapes)
    caches = [lean.new_cache() for _ in range(rows_needed)]
    times: dict[tuple[tuple[int, ...], int], list[float]] = {(s, n): [] for s in shapes for n in counts}
    with torch.inference_mode():
        for cache in caches:
            lean.forward_batch([Feed(cache, list(range(100, 400)), "last")])
        for repeat in range(args.repeats):
            order = counts if repeat % 2 == 0 else counts[::-1]
            for shape in shapes:
                rows, tokens = shape
                for count in order:
                    torch.set_num_threads(count)
                    start = time.perf_counter()
                    lean.forward_batch([Feed(cache, [7] * tokens, "all") for cache in caches[:rows]])
                    times[(shape, count)].append(time.perf_counter() - start)
                    for cache in caches[:rows]:
                        cache.crop(-tokens)
    base = counts[0]
    header = " | ".join(f"{n} thread(s) ms" for n in counts)
    ratios = " | ".join(f"{n} ÷ {base}" for n in counts[1:])
    print(f"| rows × tokens | {header} | {ratios} |")
    print("|---" + "|---:" * (2 * len(counts) - 1) + "|")
    for shape in shapes:
        medians = " | ".join(f"{statistics.median(times[(shape, n)]) * 1e3:.1f}" for n in counts)
        paired = " | ".join(
            f"{statistics.median(b / a for a, b in zip(times[(shape, base)], times[(shape, n)], strict=True)):.2f}"
            for n in counts[1:]
        )
        print(f"| {shape[0]} × {shape[1]} | {medians} | {paired} |")


if __name__ == "__main__":
    main()
