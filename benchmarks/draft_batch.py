"""Drafting for many sessions at once: a model drafter's `propose_batch` against one proposal at a time.

    python benchmarks/draft_batch.py [--sessions 1,2,4,8] [--gamma 4] [--rounds 6]

Per batch size N, N sessions of the pydocs workload (prompts of different lengths) draft `--rounds`
rounds of γ tokens each, once with every session proposing alone and once as one batch, interleaved
round by round so that machine noise hits both alike. Prints a Markdown table (milliseconds per round of
all N proposals, and the ratio); the drafts of both ways are checked equal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from banditspec.model_paths import resolve_model_path
from banditspec.sampling import SamplingParams
from services.draft.drafters.base import DraftSession
from services.draft.drafters.model_drafter import ModelDrafter

PASSAGES = Path(__file__).resolve().parent / "pydocs_passages.json"


def sessions(prompts: list[list[int]]) -> list[DraftSession]:
    return [DraftSession(list(p), SamplingParams(), seed=0, prompt_length=len(p)) for p in prompts]


def measure(model: str, sizes: list[int], gamma: int, rounds: int, dtype: str) -> list[tuple[int, float, float]]:
    path = str(resolve_model_path(model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = [p["text"] for p in json.loads(PASSAGES.read_text())["prompts"]]
    prompts = [tokenizer(text)["input_ids"][:256] for text in texts]
    # min_confidence 0: every proposal drafts γ tokens, so both ways do the same work.
    alone = ModelDrafter.load("alone", path, device="cpu", dtype=dtype, min_confidence=0.0)
    batched = ModelDrafter("batched", alone.loaded, min_confidence=0.0)
    rows = []
    for size in sizes:
        picked = [prompts[i % len(prompts)] for i in range(size)]
        one_by_one, together = sessions(picked), sessions(picked)
        times = {"alone": 0.0, "batched": 0.0}
        for round_index in range(rounds + 1):  # round 0 prefills and is not counted
            start = time.perf_counter()
            drafts = [alone.propose(s, gamma).token_ids for s in one_by_one]
            middle = time.perf_counter()
            batch = [p.token_ids for p in batched.propose_batch([(s, gamma) for s in together])]
            end = time.perf_counter()
            if batch != drafts:
                raise AssertionError("a batched draft differs from the same session's draft alone")
            if round_index:
                times["alone"] += middle - start
                times["batched"] += end - middle
            for s, draft in zip([*one_by_one, *together], [*drafts, *drafts], strict=True):
                s.context.extend([*draft[: gamma // 2], 7])  # half accepted, then a bonus token
        rows.append((size, 1e3 * times["alone"] / rounds, 1e3 * times["batched"] / rounds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="pydocs:draft-s,pydocs:draft-m")
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--gamma", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(n) for n in args.sessions.split(",")]
    print(f"γ = {args.gamma}, {args.rounds} rounds, {args.dtype}, {args.threads} thread(s)\n")
    print("| draft model | sessions | one at a time, ms/round | batched, ms/round | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for model in args.models.split(","):
        for size, alone_ms, batched_ms in measure(model, sizes, args.gamma, args.rounds, args.dtype):
            print(f"| {model} | {size} | {alone_ms:.1f} | {batched_ms:.1f} | {alone_ms / batched_ms:.2f}× |")


if __name__ == "__main__":
    main()
