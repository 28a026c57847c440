"""Replay drafters offline over recorded greedy answers, with the target's measured step costs.

Tuning a drafting rule through the full benchmark takes tens of minutes per try; this takes
seconds. Greedy decoding makes it exact up to timing: the answer is fixed, so for any drafter the
rounds, drafts and accepted tokens are exactly what the stack would see. Time per round is modelled
as the target's measured forward time for γ+1 tokens plus a fixed per-round overhead (the stack's
RPCs; 0 for in-process `transformers`) plus the drafter's own measured compute (a draft model's forwards).
The model only runs once per prompt to record the answer
(cached in --refs) and once to measure forward times.

    python benchmarks/replay_drafters.py --drafter pld=prompt_lookup --drafter sfx=suffix:24:off
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banditspec.bench.config import BENCHMARKS_DIR
from banditspec.bench.workload import load_prompts, render_prompts
from banditspec.sampling import SamplingParams
from banditspec.verify_lengths import effective_forward_seconds, padded_lengths
from services.draft.drafters.base import DraftSession
from services.draft.server import build_drafter
from services.draft.specs import DrafterSpec


def hf_prompt_lookup(context: list[int], num_tokens: int = 5, max_ngram: int = 2) -> list[int]:
    """transformers' PromptLookupCandidateGenerator: the earliest match of the last 2, then 1 token(s)."""
    for n in range(min(max_ngram, len(context) - 1), 0, -1):
        tail = context[-n:]
        for i in range(len(context) - n):
            if context[i : i + n] == tail:
                return context[i + n : i + n + num_tokens]
    return []


def record_answers(
    model_arg, prompts, dtype: str, max_new_tokens: int, refs: Path, measure: bool
) -> tuple[dict, list[float]]:
    from banditspec.bench.methods import hf_call
    from banditspec.model_paths import resolve_model_path
    from banditspec.models import load_causal_lm

    loaded = load_causal_lm(resolve_model_path(model_arg), dtype=dtype)
    render_prompts(prompts, loaded.tokenizer)
    stored = json.loads(refs.read_text()) if refs.exists() else {}
    for p in prompts:
        key = f"{model_arg}/{dtype}/{max_new_tokens}/{p.id}"
        if key not in stored:
            stored[key] = hf_call(loaded.model, p.ids, max_new_tokens).tokens
            refs.write_text(json.dumps(stored))
            print(f"recorded {p.id}", file=sys.stderr)
    costs = loaded.measure_forwards() if measure else []
    return {p.id: stored[f"{model_arg}/{dtype}/{max_new_tokens}/{p.id}"] for p in prompts}, costs


def replay(propose, prompt_ids: list[int], answer: list[int], costs: list[float], overhead: float):
    """propose(context) -> draft. Returns (seconds, rounds, drafted, accepted)."""
    context = list(prompt_ids)
    seconds, rounds, drafted, accepted = 0.0, 0, 0, 0
    done = 0
    while done < len(answer):
        start = time.perf_counter()  # a model drafter's compute is part of the round
        draft = propose(context)[: len(answer) - done - 1]
        seconds += time.perf_counter() - start
        ok = 0
        while ok < len(draft) and draft[ok] == answer[done + ok]:
            ok += 1
        step = answer[done : done + ok + 1]
        context.extend(step)
        done += len(step)
        seconds += costs[min(len(draft), len(costs) - 1)] + overhead
        rounds += 1
        drafted += len(draft)
        accepted += ok
    return seconds, rounds, drafted, accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=Path, default=BENCHMARKS_DIR / "prompts.json")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="prompts per kind")
    parser.add_argument("--refs", type=Path, default=Path("results/replay/answers.json"))
    parser.add_argument("--drafter", action="append", default=[], help="NAME=SPEC[@GAMMA] (default γ 6)")
    parser.add_argument("--overhead-ms", type=float, default=1.7, help="per-round stack overhead")
    parser.add_argument("--costs-ms", help="comma-separated forward ms for 1, 2, ... tokens instead of measuring")
    parser.add_argument("--pad", action="store_true", help="the stack pads each verify to its cheapest length")
    args = parser.parse_args()

    prompts = load_prompts(args.prompts, limit=args.limit)
    args.refs.parent.mkdir(parents=True, exist_ok=True)
    answers, costs = record_answers(args.model, prompts, args.dtype, args.max_new_tokens, args.refs, not args.costs_ms)
    if args.costs_ms:
        costs = [float(c) / 1e3 for c in args.costs_ms.split(",")]
    stack_costs = effective_forward_seconds(costs, padded_lengths(costs)) if args.pad else costs
    print("forward ms by tokens:", " ".join(f"{1e3 * c:.0f}" for c in costs[:10]))

    methods = {
        "hf-plain": (lambda ctx: [], 0.0, costs),
        "hf-pld": (hf_prompt_lookup, 0.0, costs),
        "target-only": (lambda ctx: [], args.overhead_ms / 1e3, stack_costs),
    }
    for text in args.drafter:
        spec_text, _, gamma = text.rpartition("@") if "@" in text.split("=", 1)[1].split(":")[-1] else (text, "", "6")
        drafter = build_drafter(DrafterSpec.parse(spec_text), "cpu", args.dtype)
        methods[text] = (_proposer(drafter, int(gamma)), args.overhead_ms / 1e3, stack_costs)

    totals: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0, 0, 0, 0]))
    for name, (propose, overhead, step_costs) in methods.items():
        for p in prompts:
            if hasattr(propose, "reset"):
                propose.reset()
            s, r, d, a = replay(propose, p.ids, answers[p.id], step_costs, overhead)
            for key in (p.kind, "all"):
                t = totals[name][key]
                t[0] += s
                t[1] += len(answers[p.id])
                t[2] += r
                t[3] += d
                t[4] += a
    kinds = ["all", *sorted({p.kind for p in prompts})]
    print(f"{'method':36}" + "".join(f"{k[:11]:>12}" for k in kinds))
    base = totals["hf-pld"]
    for name in methods:
        row = "".join(
            f"{totals[name][k][1] / totals[name][k][0]:7.1f} {totals[name][k][1] / totals[name][k][0] / (base[k][1] / base[k][0]):.2f}"[
                :12
            ].rjust(12)
            for k in kinds
        )
        t = totals[name]["all"]
        print(f"{name[:36]:36}{row}   acc {t[4] / max(1, t[3]):.2f} tok/round {t[1] / t[2]:.2f}")
    print("\nper-token acceptance (accepted ÷ drafted) per kind")
    print(f"{'method':36}" + "".join(f"{k[:11]:>12}" for k in kinds))
    for name in methods:
        if any(totals[name][k][3] for k in kinds):
            print(
                f"{name[:36]:36}" + "".join(f"{totals[name][k][4] / max(1, totals[name][k][3]):12.2f}" for k in kinds)
            )


def _proposer(drafter, gamma: int):
    sessions = {}

    def propose(context: list[int]) -> list[int]:
        session = sessions.get("s")
        if session is None:
            session = sessions["s"] = DraftSession(list(context), SamplingParams(), 0, prompt_length=len(context))
        else:
            session.context.extend(context[len(session.context) :])
        return drafter.propose(session, gamma).token_ids

    propose.reset = sessions.clear
    return propose


if __name__ == "__main__":
    main()
