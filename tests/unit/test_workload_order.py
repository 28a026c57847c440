"""The load test's prompt order: the first n prompts mix the workload's kinds, so a phase of any size runs
a sample of the whole workload and not of its first kinds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from banditspec.bench.workload import Prompt, interleaved_by_kind, load_prompts

PROMPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "prompts.json"


def prompt(kind: str, index: int) -> Prompt:
    return Prompt(id=f"{kind}{index}", kind=kind, messages=None, text="")


def test_kinds_take_turns_in_file_order_and_a_short_kind_drops_out():
    prompts = [prompt("a", 0), prompt("a", 1), prompt("a", 2), prompt("b", 0), prompt("c", 0), prompt("c", 1)]
    order = interleaved_by_kind(prompts)
    assert [p.id for p in order] == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert interleaved_by_kind([]) == []


def test_the_default_workloads_first_prompts_cover_every_kind_evenly():
    stored = load_prompts(PROMPTS)
    order = interleaved_by_kind(stored)
    assert sorted(p.id for p in order) == sorted(p.id for p in stored)
    kinds = sorted({p.kind for p in stored})
    assert len(kinds) == 6
    for n in (6, 12, 16, 32):  # 1 client × 6, 8 clients × 2, 8 clients × 4, ...
        counts = Counter(p.kind for p in order[:n])
        assert set(counts) == set(kinds)
        assert max(counts.values()) - min(counts.values()) <= 1
