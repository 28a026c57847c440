"""The lean batched forward of this checkout against another's, interleaved in one process on one model.

    PYTHONPATH=. python benchmarks/lean_ab.py --baseline ../wt-old [--shapes 1x1,1x5,8x1,7+1+1+3] [--repeats 12]

A checkout whose decoder calibrates its products (`calibrate_narrow`) does so first, as the target does.
`--baseline` is another checkout of this repository (for example a `git worktree` at an older commit); its
`banditspec/lean_llama.py` is loaded beside this one. Each shape (rows × tokens per row, after 150-290
cached tokens per row; a checkout whose decoder pools its caches pools them, as the target does) runs on both, alternating which goes first, and the table gives the fastest and the
median time of each and the median of the paired ratios (robust to a machine whose speed drifts), plus
the largest difference between the two logits.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from banditspec import lean_llama
from banditspec.default_model import ensure_default_model


def load_baseline(checkout: Path):
    spec = importlib.util.spec_from_file_location("baseline_lean_llama", checkout / "banditspec" / "lean_llama.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no banditspec/lean_llama.py under {checkout}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def parse_shape(text: str) -> tuple[int, ...]:
    """Each row's tokens: "8x1" is 8 rows of 1 token, "7+1+1+3" rows of 7, 1, 1 and 3."""
    if "x" in text:
        rows, tokens = (int(part) for part in text.split("x"))
        return (tokens,) * rows
    return tuple(int(part) for part in text.split("+"))


def label(shape: tuple[int, ...]) -> str:
    return f"{len(shape)} × {shape[0]}" if len(set(shape)) == 1 else "+".join(map(str, shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    parser.add_argument("--shapes", default="1x1,1x3,1x5,1x7,2x3,4x2,8x1,8x4")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [parse_shape(shape) for shape in args.shapes.split(",")]
    model = AutoModelForCausalLM.from_pretrained(ensure_default_model(), dtype=getattr(torch, args.dtype)).eval()
    modules = {"baseline": load_baseline(args.baseline), "this": lean_llama}
    generator = torch.Generator().manual_seed(0)
    most_rows = max(len(shape) for shape in shapes)
    contexts = [torch.randint(0, 49_000, (150 + 20 * (i % 8),), generator=generator).tolist() for i in range(most_rows)]
    engines, caches = {}, {}
    for name, module in modules.items():
        pooled = "pooled" in inspect.signature(module.LeanLlama).parameters  # as a target's decoder
        engines[name] = module.LeanLlama(model, 2048, pooled=True) if pooled else module.LeanLlama(model, 2048)
        caches[name] = [engines[name].new_cache() for _ in contexts]
        for cache, ids in zip(caches[name], contexts, strict=True):
            engines[name].forward(ids, cache)
        if hasattr(engines[name], "calibrate_narrow"):  # as the target does at start-up
            ratios = engines[name].calibrate_narrow()
            print(f"{name}: narrow ÷ linear by product size {', '.join(f'{n}: {r:.2f}' for n, r in ratios.items())}")

    def run(name: str, shape: tuple[int, ...]) -> tuple[float, list]:
        rows = caches[name][: len(shape)]
        pairs = enumerate(zip(rows, shape, strict=True))
        feeds = [modules[name].Feed(cache, [7 + i] * tokens, "all") for i, (cache, tokens) in pairs]
        start = time.perf_counter()
        logits = engines[name].forward_batch(feeds)
        seconds = time.perf_counter() - start
        for cache, tokens in zip(rows, shape, strict=True):
            cache.crop(-tokens)
        return seconds, logits

    times: dict[tuple, list[float]] = {}
    differences: dict[tuple, float] = {}
    for repeat in range(args.repeats):
        for shape in shapes:
            logits = {}
            for name in ("baseline", "this") if repeat % 2 else ("this", "baseline"):
                seconds, logits[name] = run(name, shape)
                times.setdefault((shape, name), []).append(seconds)
            differences[shape] = max(
                (a - b).abs().max().item() for a, b in zip(logits["baseline"], logits["this"], strict=True)
            )
    print(f"{args.dtype}, {args.threads} thread(s); ms per forward, fastest / median of {args.repeats}\n")
    print(
        "| rows × tokens (or each row's tokens) | baseline | this checkout | this ÷ baseline (median of pairs) | largest logit difference |"
    )
    print("|---|---:|---:|---:|---:|")
    for shape in shapes:
        base, this = times[(shape, "baseline")], times[(shape, "this")]
        ratio = statistics.median(b / a for a, b in zip(base, this, strict=True))
        print(
            f"| {label(shape)} | {1e3 * min(base):.1f} / {1e3 * statistics.median(base):.1f} "
            f"| {1e3 * min(this):.1f} / {1e3 * statistics.median(this):.1f} | {ratio:.3f} | {differences[shape]:.1e} |"
        )


if __name__ == "__main__":
    main()
