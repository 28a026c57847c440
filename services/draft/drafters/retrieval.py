"""Retrieval drafting (REST, He et al., NAACL 2024): continue the context the way a datastore does.

The longest suffix of the context (max_depth tokens down to min_depth) that occurs in the datastore
picks a set of occurrences; up to `max_occurrences` of them, spread evenly over the suffix-array range,
vote on the continuation. REST builds a trie of the continuations and verifies it as a tree; this
project verifies one sequence per round, so the draft is the trie's most frequent path, followed while
each next token holds at least `min_share` of its parent's occurrences (weak guesses cost a verified
position and are rarely accepted). Model-free and deterministic; the vocabulary fingerprint is the
datastore's, since its token ids are only meaningful under the tokenizer that built it.

Spec: NAME=retrieval:DATASTORE_PATH[:DEPTH] (a datastore built by `banditspec datastore build`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from banditspec.v1 import draft_pb2
from services.draft.drafters.base import (
    Drafter,
    DraftSession,
    Kind,
    ModelFree,
    Proposal,
    ServiceSettings,
    optional_field,
    spec_count,
)

if TYPE_CHECKING:
    from banditspec.datastore import Datastore

DEFAULT_MAX_DEPTH = 16
MAX_DEPTH = 256  # matching costs up to log2(max_depth) datastore lookups, each up to max_depth tokens long


@dataclass(frozen=True)
class RetrievalOptions:
    datastore_path: str
    max_depth: int | None = None

    def __post_init__(self) -> None:
        if not self.datastore_path:
            raise ValueError("a retrieval drafter needs a datastore path")
        if self.max_depth is not None and not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth must be in [1, {MAX_DEPTH}], got {self.max_depth}")

    @classmethod
    def parse(cls, args: str) -> Self:
        # A trailing :DIGITS is the depth; any other colon is part of the path.
        path, _, depth = args.rpartition(":") if args.rpartition(":")[2].isdigit() else (args, "", "")
        return cls(path, spec_count(depth))

    @classmethod
    def from_pb(cls, pb: draft_pb2.RetrievalOptions) -> Self:
        return cls(pb.datastore_path, optional_field(pb, "max_depth"))

    def to_pb(self) -> draft_pb2.RetrievalOptions:
        return draft_pb2.RetrievalOptions(datastore_path=self.datastore_path, max_depth=self.max_depth)

    def confined(self, roots: Sequence[Path]) -> Self:
        """The datastore's path resolved, if it lies inside the model roots (OutsideModelRoots otherwise)."""
        from banditspec.security import confine

        return replace(self, datastore_path=str(confine(self.datastore_path, roots)))

    def build(self, name: str, settings: ServiceSettings) -> Drafter:
        depth = DEFAULT_MAX_DEPTH if self.max_depth is None else self.max_depth
        return RetrievalDrafter.load(name, self.datastore_path, max_depth=depth)


KIND = Kind("retrieval", draft_pb2.DRAFTER_KIND_RETRIEVAL, "NAME=retrieval:DATASTORE_PATH[:DEPTH]", RetrievalOptions)


class RetrievalDrafter(ModelFree):
    kind = KIND.name

    def __init__(
        self,
        name: str,
        datastore: Datastore,
        max_depth: int = DEFAULT_MAX_DEPTH,
        min_depth: int = 2,
        max_occurrences: int = 64,
        min_share: float = 0.3,
        label: str = "",
    ) -> None:
        if not 1 <= min_depth <= max_depth:
            raise ValueError(f"retrieval drafter needs 1 <= min_depth <= max_depth, got {min_depth}, {max_depth}")
        if max_occurrences < 1 or not 0.0 <= min_share <= 1.0:
            raise ValueError("retrieval drafter needs max_occurrences >= 1 and 0 <= min_share <= 1")
        self.name = name
        self.datastore = datastore
        self.max_depth = max_depth
        self.min_depth = min_depth
        self.max_occurrences = max_occurrences
        self.min_share = min_share
        self.vocab_fingerprint = datastore.vocab_fingerprint
        self.source = f"{label or 'datastore'} ({datastore.num_tokens:,} tokens, depth {min_depth}..{max_depth})"

    @classmethod
    def load(cls, name: str, path: str | Path, max_depth: int = DEFAULT_MAX_DEPTH, **options: Any) -> RetrievalDrafter:
        from banditspec.datastore import Datastore

        return cls(name, Datastore.load(path), max_depth=max_depth, label=str(path), **options)

    def _match(self, context: list[int]) -> tuple[int, int, int]:
        """(length, lo, hi) of the longest context suffix in the datastore; length 0 when none.

        Occurrence is monotone in the length (a suffix of an occurring query occurs too), so a binary
        search over lengths needs about log2(max_depth) lookups."""
        best = (0, 0, 0)
        low, high = self.min_depth, min(self.max_depth, len(context))
        while low <= high:
            length = (low + high) // 2
            lo, hi = self.datastore.find(context[-length:])
            if hi > lo:
                best, low = (length, lo, hi), length + 1
            else:
                high = length - 1
        return best

    def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
        # A chain whatever tree_tokens asks: this drafter does not branch.
        # Imported here, not with the module: declaring the kind (spec parsing in the CLI) needs no numpy.
        import numpy as np

        from banditspec.datastore import SEPARATOR

        if num_tokens <= 0:
            return Proposal([])
        length, lo, hi = self._match(session.context)
        if length == 0:
            return Proposal([])
        # Evenly spaced in suffix-array order: the range is sorted by continuation, so the first k
        # would favour small token ids; an even spread keeps each continuation's share.
        picks = np.unique(np.linspace(lo, hi - 1, min(hi - lo, self.max_occurrences)).astype(np.int64))
        starts = self.datastore.suffixes[picks].astype(np.int64) + length
        # Every document ends with a separator, so reading on past one only needs clipping at the end.
        columns = np.minimum(starts[:, None] + np.arange(num_tokens), len(self.datastore.tokens) - 1)
        continuations = self.datastore.tokens[columns]
        draft: list[int] = []
        rows = continuations
        for depth in range(num_tokens):
            values, counts = np.unique(rows[:, depth], return_counts=True)
            best = int(np.argmax(counts))  # ties: the smallest id, so the draft is deterministic
            token = int(values[best])
            if token == SEPARATOR or counts[best] < self.min_share * len(rows):
                break
            draft.append(token)
            rows = rows[rows[:, depth] == token]
        return Proposal(draft)
