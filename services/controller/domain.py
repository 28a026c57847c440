"""The controller's plain values: a validated request, what a round produced, and the result.

A leaf module: the round loop, the protobuf edge and the tests all speak in these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from banditspec.sampling import SamplingParams
from services.controller.arms import Arm

MAX_REQUEST_SECONDS = 3600.0  # a request without a deadline still gets one


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams
    seed: int
    stop: list[str]
    policy: str
    arms: list[Arm]
    request_id: str


@dataclass(frozen=True)
class Proposal:
    """A draft service's answer: the draft, its q rows (opaque to the loop, empty when deterministic),
    and the drafts of other drafters it was asked to score."""

    token_ids: list[int]
    probs: list[Any] = field(default_factory=list)
    compute_seconds: float = 0.0
    alternatives: dict[str, list[int]] = field(default_factory=dict)
    parents: list[int] | None = None  # a token tree: each token's parent index (-1: the context); None: a chain
    alternative_parents: dict[str, list[int]] = field(default_factory=dict)  # the alternatives that are trees


NO_DRAFT = Proposal([])


@dataclass(frozen=True)
class Verdict:
    """The target's answer to a round: the tokens it committed (accepted draft + one of its own)."""

    token_ids: list[int]
    accepted: int
    compute_seconds: float
    batch_rows: int = 1  # the forward that verified the draft: rows and tokens of every session in it
    batch_tokens: int = 0
    batch_forward_seconds: float = 0.0
    batch_prefill_rows: int = 0  # of the batch, rows that prefilled a prompt's chunk, and their tokens
    batch_prefill_tokens: int = 0


@dataclass(frozen=True)
class RoundEvent:
    round: int
    arm: str
    drafted: int
    accepted: int
    token_ids: list[int]
    text: str
    wall_seconds: float
    service_seconds: float


@dataclass
class ArmTally:
    pulls: int = 0
    drafted: int = 0
    accepted: int = 0
    reward_sum: float = 0.0
    wall_seconds: float = 0.0
    counterfactual: int = 0  # reward samples from rounds where another arm was pulled


@dataclass
class GenerationResult:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    rounds: int = 0
    wall_seconds: float = 0.0
    prefill_seconds: float = 0.0
    first_token_seconds: float | None = None  # from the request's start to its first verified token
    overheads: list[float] = field(default_factory=list)
    tallies: dict[str, ArmTally] = field(default_factory=dict)


class Deadline:
    """A request's deadline, from which every call and every round takes its timeout."""

    def __init__(self, seconds: float | None, rpc_timeout: float) -> None:
        self.expires = None if seconds is None else time.monotonic() + seconds
        self.rpc_timeout = rpc_timeout

    def timeout(self) -> float:
        """For one call or one round: the RPC timeout, cut to what is left of the request's deadline."""
        if self.expires is None:
            return self.rpc_timeout
        return max(0.001, min(self.rpc_timeout, self.expires - time.monotonic()))

    def stream_timeout(self) -> float:
        """For a stream that lives as long as the request; each round on it still has `timeout()`."""
        if self.expires is None:
            return MAX_REQUEST_SECONDS
        return max(0.001, self.expires - time.monotonic())

    def expired(self) -> bool:
        return self.expires is not None and self.expires - time.monotonic() <= 0.001
