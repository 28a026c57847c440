"""The drafter interface, and how a drafter kind declares itself.

A drafter proposes γ tokens for a session's context. It keeps whatever per-session state it needs in
`DraftSession.state[drafter name]`, so releasing a session or unloading a drafter frees it. A
proposal's `probs` is None for a deterministic draft (the verifier then treats it as a point mass).

The service serves a drafter by its capability flags, never by its kind: `runs_on_worker` drafters
propose on the model worker thread (model-free proposals never queue behind a model forward),
the sessions waiting for one such drafter propose as one batch (`propose_batch`),
`vocab_size` bounds the token ids a session may hold, `learns_from_outputs` drafters get `finish(session)`
when a session is released (the finished text is `session.context[session.prompt_length:]`), and
`looks_ahead` drafters get `draft_ahead` while the target verifies.

A proposal is a chain, or (asked with `tree_tokens` > 0, from a drafter that can branch) a token tree:
`parents[i]` is the index of token i's parent, an earlier token, or -1 for the last context token.
Tokens are in topological order (a parent before its children) and siblings best first, as the target
tries children in order. A tree that is a single path is returned as a chain (`parents` None).

A kind is declared once, in its module, as `KIND = Kind(...)`: its spec syntax, its options (a frozen
dataclass that parses ARGS, validates itself, converts to and from its protobuf message, and builds the
drafter), and is listed in kinds.py.

Nothing here imports torch: spec parsing (the CLI, the controller) must stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from google.protobuf.message import Message

if TYPE_CHECKING:
    import torch

    from banditspec.sampling import SamplingParams
    from banditspec.v1.draft_pb2 import DrafterKind


@dataclass
class DraftSession:
    context: list[int]
    sampling: SamplingParams
    seed: int
    state: dict[str, Any] = field(default_factory=dict)
    prompt_length: int = 0  # context tokens present when the session opened
    max_token_id: int = -1  # the largest id in context, to check it against a drafter's vocabulary


@dataclass(frozen=True)
class Proposal:
    token_ids: list[int]
    probs: torch.Tensor | None = None  # [len(token_ids), V] for a sampled draft
    parents: list[int] | None = None  # a token tree (see the module's docstring); None: a chain


def tree_proposal(token_ids: list[int], parents: list[int]) -> Proposal:
    """A deterministic proposal of a tree in topological order; a single path becomes a chain."""
    if all(parent == index - 1 for index, parent in enumerate(parents)):
        return Proposal(token_ids)
    return Proposal(token_ids, parents=parents)


def merge_paths(paths: Iterable[Sequence[int]], max_tokens: int, max_depth: int) -> Proposal:
    """A token tree of candidate continuations, best first: a trie, so shared prefixes become one path.
    Each path is cut at max_depth tokens; once the tree holds max_tokens tokens the rest is left out
    (the path that filled it keeps the prefix that fit)."""
    token_ids: list[int] = []
    parents: list[int] = []
    child_of: dict[tuple[int, int], int] = {}  # (parent index, token) → its index
    for path in paths:
        if len(token_ids) >= max_tokens:
            break
        parent = -1
        for token in path[:max_depth]:
            node = child_of.get((parent, token))
            if node is None:
                if len(token_ids) >= max_tokens:
                    break
                node = child_of[(parent, token)] = len(token_ids)
                token_ids.append(token)
                parents.append(parent)
            parent = node
    return tree_proposal(token_ids, parents)


class Drafter(Protocol):
    name: str
    kind: str  # the name of its Kind, for display
    vocab_fingerprint: str  # "" when its ids mean the same text under any tokenizer
    source: str
    device: str
    # capabilities
    model_free: bool  # no model forward: a proposal costs microseconds, cheap enough to score every round
    vocab_size: int | None  # context ids must be below it (a model's embedding rows); None: any id
    runs_on_worker: bool  # proposes on the service's model worker thread, waiting sessions as one batch
    learns_from_outputs: bool  # `finish` learns from a released session's output
    proposes_trees: bool  # answers a tree budget with a token tree (else a chain)
    looks_ahead: bool  # `draft_ahead` drafts the next round while the target verifies
    lookahead_hits: int  # proposals answered from a lookahead so far

    def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
        """γ = num_tokens; tree_tokens > 0: a tree of at most that many tokens, no deeper than γ, is
        welcome (drafters that cannot branch ignore it and propose a chain)."""
        ...

    def propose_batch(self, requests: list[tuple[DraftSession, int]]) -> list[Proposal]:
        """`propose` for several distinct sessions at once (runs_on_worker drafters batch their forwards)."""
        ...

    def finish(self, session: DraftSession) -> None:
        """Learn from a released session (learns_from_outputs drafters; the registry calls no other)."""

    def draft_ahead(self, session: DraftSession, preempted: Callable[[], bool]) -> None:
        """Draft the next round ahead (looks_ahead drafters); stop as soon as `preempted()` is true."""

    def close(self) -> None: ...


class ModelFree:
    """Defaults for a drafter without a model: it proposes on the event loop (a thread hop would cost
    more than the work), takes any token id, and neither learns nor drafts ahead unless it says so."""

    device = "cpu"
    model_free = True
    vocab_size: int | None = None
    runs_on_worker = False
    learns_from_outputs = False
    proposes_trees = False  # answers tree_tokens with a token tree
    looks_ahead = False
    lookahead_hits = 0

    def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
        raise NotImplementedError

    def propose_batch(self, requests: list[tuple[DraftSession, int]]) -> list[Proposal]:
        return [self.propose(session, num_tokens) for session, num_tokens in requests]

    def finish(self, session: DraftSession) -> None:
        """Nothing to learn."""

    def draft_ahead(self, session: DraftSession, preempted: Callable[[], bool]) -> None:
        """Nothing to draft ahead."""

    def close(self) -> None:
        """Nothing to free."""


@dataclass(frozen=True)
class ServiceSettings:
    """What the draft service, not a drafter's spec, decides for the drafters it builds."""

    device: str | None = None  # None: the best available
    dtype: str | None = None  # for model drafters whose options name none; None: the model's own


class DrafterOptions(Protocol):
    """A kind's options: a frozen dataclass that raises ValueError when invalid. A field left None
    takes the drafter's default (and is left unset in the protobuf message)."""

    @classmethod
    def parse(cls, args: str) -> Self:
        """From a spec's ARGS, the text after `NAME=KIND:` ("" when there is none)."""
        ...

    @classmethod
    def from_pb(cls, pb: Any) -> Self:
        """From the kind's message in LoadDrafterRequest.options."""
        ...

    def to_pb(self) -> Message: ...

    def build(self, name: str, settings: ServiceSettings) -> Drafter:
        """Load the drafter (may take seconds: the service runs it on its loader thread)."""
        ...


OptionsT = TypeVar("OptionsT", bound=DrafterOptions)


@dataclass(frozen=True)
class Kind(Generic[OptionsT]):
    """A drafter kind, as its module declares it."""

    name: str  # the spec's KIND, and the name of its field in LoadDrafterRequest.options
    enum: DrafterKind  # for DrafterInfo.kind
    usage: str  # its spec syntax, e.g. "NAME=suffix[:DEPTH[:MEMORY_TOKENS|off]]"
    options: type[OptionsT]
    model_free: bool = True  # its drafters run no model: known before one is built (they may run in the controller)


def optional_field(pb: Message, name: str) -> Any:
    """A proto3 `optional` field's value, None when unset."""
    return getattr(pb, name) if pb.HasField(name) else None


def spec_count(value: str) -> int | None:
    """A spec's count argument; "" and 0 take the drafter's default (None), as they always have."""
    if not value:
        return None
    if not value.isdigit():
        raise ValueError(f"{value!r} is not a non-negative integer")
    return int(value) or None
