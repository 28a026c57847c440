"""Workloads: prompts stored as data (a chat, or raw text), filtered by kind and count, then tokenised."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Prompt:
    id: str
    kind: str
    messages: list[dict] | None  # a chat, rendered with the chat template ...
    text: str | None = None  # ... or raw text (passage openings for a base model)
    ids: list[int] = field(default_factory=list)


def load_prompts(path: Path, kinds: list[str] | None = None, limit: int | None = None) -> list[Prompt]:
    """The prompts of `kinds` (all when None), at most `limit` per kind, in file order."""
    stored = json.loads(path.read_text())["prompts"]
    prompts = [Prompt(p["id"], p["kind"], p.get("messages"), p.get("text")) for p in stored]
    known = sorted({p.kind for p in prompts})
    unknown = [k for k in kinds or [] if k not in known]
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(unknown)}; {path} has {', '.join(known)}")
    if kinds:
        prompts = [p for p in prompts if p.kind in kinds]
    if limit:
        taken: dict[str, int] = defaultdict(int)
        kept = []
        for p in prompts:
            if taken[p.kind] < limit:
                taken[p.kind] += 1
                kept.append(p)
        prompts = kept
    return prompts


def interleaved_by_kind(prompts: list[Prompt]) -> list[Prompt]:
    """Each kind's first prompt (kinds in file order), then each kind's second, ...: so that the first n
    prompts mix the kinds as the whole workload does, where file order would give n of the first kind."""
    by_kind: dict[str, list[Prompt]] = defaultdict(list)
    for p in prompts:
        by_kind[p.kind].append(p)
    depth = max((len(group) for group in by_kind.values()), default=0)
    return [group[i] for i in range(depth) for group in by_kind.values() if i < len(group)]


def render_prompts(prompts: list[Prompt], tokenizer) -> None:
    """Fill `ids`: the chat template with the generation prompt, or the raw text; the stack gets the same ids."""
    for p in prompts:
        if p.text is not None:
            p.ids = tokenizer.encode(p.text, add_special_tokens=False)
            continue
        encoded = tokenizer.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=True)
        p.ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
