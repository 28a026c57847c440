"""The drafter interface: propose γ tokens for a session's context.

A drafter keeps whatever per-session state it needs in `DraftSession.state[drafter name]`, so
releasing a session or unloading a drafter frees it. A proposal's `probs` is None for a
deterministic draft (the verifier then treats it as a point mass). A drafter that learns across
requests implements `finish(session)`: the registry calls it when a session is released, with the
finished text at `session.context[session.prompt_length:]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from banditspec.sampling import SamplingParams


@dataclass
class DraftSession:
    context: list[int]
    sampling: SamplingParams
    seed: int
    state: dict[str, Any] = field(default_factory=dict)
    prompt_length: int = 0  # context tokens present when the session opened
    max_token_id: int = -1  # the largest id in context, to check it against a model drafter's vocabulary


@dataclass(frozen=True)
class Proposal:
    token_ids: list[int]
    probs: torch.Tensor | None = None  # [len(token_ids), V] for a sampled draft


class Drafter(Protocol):
    name: str
    kind: str  # "prompt_lookup" | "model" | "suffix" | "retrieval"
    vocab_fingerprint: str  # "" for a model-free drafter
    source: str
    device: str

    def propose(self, session: DraftSession, num_tokens: int) -> Proposal: ...

    def close(self) -> None: ...
