"""Prompt lookup (n-gram) drafting: continue the context the way its latest earlier match continued.

Model-free and deterministic. The draft is as long as the evidence: a match of n < max_ngram tokens
proposes at most max(1, 2(n - 1)) tokens, a match of max_ngram tokens up to γ. Verifying a token the
target rejects is not free (on a CPU each extra position costs ~13% of a step), and short matches
are right less often; replaying this project's benchmark outputs, the cap gave ~6% more tokens/s
than always proposing γ (`scaled=False` turns it off). An incremental index maps each n-gram to the
position after its latest occurrence, so a round costs O(new tokens), not O(context).

Asked for a token tree, it merges the continuations of several distinct matches into a trie, best
first: for the longest matching n-gram its occurrences latest first, then the shorter n-grams' (each
capped as above). The index links each occurrence to the n-gram's previous one, for that walk.

Spec: NAME=prompt_lookup[:MIN-MAX][:fixed] (MIN alone means MIN-MIN; fixed turns the cap off).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from banditspec.v1 import draft_pb2
from services.draft.drafters.base import (
    Drafter,
    DraftSession,
    Kind,
    ModelFree,
    Proposal,
    ServiceSettings,
    merge_paths,
    optional_field,
)

DEFAULT_MIN_NGRAM = 2
DEFAULT_MAX_NGRAM = 4
MAX_NGRAM = 32  # the index holds (max - min + 1) n-grams per context token
MAX_TREE_MATCHES = 32  # occurrences a tree walks at most (repetitive text repeats one continuation)


@dataclass(frozen=True)
class PromptLookupOptions:
    min_ngram: int | None = None
    max_ngram: int | None = None
    fixed_length: bool = False  # always up to γ tokens, however short the match

    def __post_init__(self) -> None:
        for size in (self.min_ngram, self.max_ngram):
            if size is not None and not 1 <= size <= MAX_NGRAM:
                raise ValueError(f"n-gram sizes must be in [1, {MAX_NGRAM}], got {size}")
        if not self.low <= self.high:
            raise ValueError(f"need min_ngram <= max_ngram, got {self.low}, {self.high}")

    @property
    def low(self) -> int:
        return DEFAULT_MIN_NGRAM if self.min_ngram is None else self.min_ngram

    @property
    def high(self) -> int:
        return DEFAULT_MAX_NGRAM if self.max_ngram is None else self.max_ngram

    @classmethod
    def parse(cls, args: str) -> Self:
        sizes, _, flag = args.partition(":")
        if sizes == "fixed" and not flag:
            sizes, flag = "", "fixed"
        if flag not in ("", "fixed"):
            raise ValueError(f"unknown prompt_lookup option {flag!r}")
        if not sizes:
            return cls(fixed_length=bool(flag))
        low, _, high = sizes.partition("-")
        # A size of 0 takes the default, as it always has.
        return cls(int(low) or None, int(high or low) or None, fixed_length=bool(flag))

    @classmethod
    def from_pb(cls, pb: draft_pb2.PromptLookupOptions) -> Self:
        return cls(optional_field(pb, "min_ngram"), optional_field(pb, "max_ngram"), pb.fixed_length)

    def to_pb(self) -> draft_pb2.PromptLookupOptions:
        return draft_pb2.PromptLookupOptions(
            min_ngram=self.min_ngram, max_ngram=self.max_ngram, fixed_length=self.fixed_length
        )

    def build(self, name: str, settings: ServiceSettings) -> Drafter:
        return PromptLookupDrafter(name, self.low, self.high, scaled=not self.fixed_length)


KIND = Kind(
    "prompt_lookup", draft_pb2.DRAFTER_KIND_PROMPT_LOOKUP, "NAME=prompt_lookup[:MIN-MAX][:fixed]", PromptLookupOptions
)


@dataclass
class _NgramIndex:
    # ngram → index just past its latest occurrence that has at least one following token
    follow: dict[tuple[int, ...], int] = field(default_factory=dict)
    indexed_until: int = 0  # n-grams ending before this index are in `follow`
    # per n-gram size (n - min_ngram): for the occurrence ending at `end`, at [end], the index just past
    # the n-gram's previous occurrence, or -1
    earlier: list[list[int]] = field(default_factory=list)


class PromptLookupDrafter(ModelFree):
    kind = KIND.name
    vocab_fingerprint = ""
    proposes_trees = True  # the continuations of several matches

    def __init__(
        self,
        name: str = "pld",
        min_ngram: int = DEFAULT_MIN_NGRAM,
        max_ngram: int = DEFAULT_MAX_NGRAM,
        scaled: bool = True,
    ) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.name = name
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self.scaled = scaled
        self.source = f"ngram {min_ngram}..{max_ngram}" + (", length scaled by match" if scaled else "")

    def _index(self, session: DraftSession) -> _NgramIndex:
        index = session.state.get(self.name)
        if index is None:
            index = session.state[self.name] = _NgramIndex()
        context = session.context
        # Index n-grams that end at positions < len-1 (they have a following token); the suffix itself
        # is the query, so it must not match itself.
        stop = len(context) - 1
        if not index.earlier:
            index.earlier = [[] for _ in range(self.min_ngram, self.max_ngram + 1)]
        for end in range(index.indexed_until, stop):
            for n, earlier in enumerate(index.earlier, self.min_ngram):
                if end + 1 - n >= 0:
                    ngram = tuple(context[end + 1 - n : end + 1])
                    earlier.append(index.follow.get(ngram, -1))
                    index.follow[ngram] = end + 1
                else:
                    earlier.append(-1)
        index.indexed_until = max(index.indexed_until, stop)
        return index

    def _length(self, n: int, num_tokens: int) -> int:
        """How many tokens a match of n tokens may propose."""
        if self.scaled and n < self.max_ngram:
            return min(num_tokens, max(1, 2 * (n - 1)))
        return num_tokens

    def _continuations(self, context: list[int], index: _NgramIndex, num_tokens: int) -> Iterator[list[int]]:
        """The continuations of distinct matches, best first (longest n-gram, then latest occurrence)."""
        seen: set[int] = set()  # a longer n-gram's occurrence is also a shorter one's
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            start = index.follow.get(tuple(context[-n:]), -1)
            earlier = index.earlier[n - self.min_ngram]
            while start >= 0 and len(seen) < MAX_TREE_MATCHES:
                if start not in seen:
                    seen.add(start)
                    yield context[start : start + self._length(n, num_tokens)]
                start = earlier[start - 1]

    def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
        if num_tokens <= 0:
            return Proposal([])
        context = session.context
        index = self._index(session)
        if tree_tokens > 0:
            return merge_paths(self._continuations(context, index, num_tokens), tree_tokens, num_tokens)
        for n in range(min(self.max_ngram, len(context) - 1), self.min_ngram - 1, -1):
            start = index.follow.get(tuple(context[-n:]))
            if start is not None:
                return Proposal(context[start : start + self._length(n, num_tokens)])
        return Proposal([])
