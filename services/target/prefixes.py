"""Prompt prefixes the target already holds: a new session whose prompt starts like a held sequence takes
that sequence's keys and values instead of prefilling them (a chat's system prompt, the earlier turns of a
conversation sent again, a session reopened after a lost verdict).

Two kinds of sequence are held. Open sessions, whose caches hold their context up to the cache's length: the
shared prefix is copied. And released sessions' caches, kept in their pool slots while the pool has others
free (as vLLM keeps freed KV blocks until they are allocated again): a new session takes such a cache over,
cropped to the shared prefix, with no copy. Keys and values at a position depend on the tokens up to it only
(causal attention), so a reused prefix holds what prefilling it would compute, up to the rounding of the
forward's shape, as for any batched forward (docs/design.md, "Exactness" under "Many requests at once").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from banditspec.lean_llama import LeanCache, LeanLlama
from banditspec.tokens import common_prefix_length

MIN_REUSED_TOKENS = 8  # below this a copy saves next to nothing
DEFAULT_RETAINED = 16  # released sessions' caches kept for reuse, at most (fewer while the pool is full)


def _extends(tokens: list[int], held: list[int]) -> bool:
    return common_prefix_length(tokens, held) == len(held)


@dataclass
class PrefixStats:
    """Since start-up: prompt tokens of opened sessions, and those of them taken from held sequences."""

    prompt_tokens: int = 0
    reused_tokens: int = 0


class PrefixReuse:
    """Makes the caches of new sessions on a pooled lean decoder, holding whatever prefix of their prompt is
    already held; keeps released sessions' caches (at most `max_retained`) while their slots are not needed."""

    def __init__(self, decoder: LeanLlama, max_retained: int = DEFAULT_RETAINED) -> None:
        if decoder.pool is None:
            raise ValueError("prefix reuse needs a pooled decoder: its caches are slots of one pool")
        self.decoder = decoder
        self.pool = decoder.pool
        self.max_retained = max_retained
        self._retained: OrderedDict[int, tuple[list[int], LeanCache]] = OrderedDict()  # oldest first
        self._next_key = 0
        self.stats = PrefixStats()

    @property
    def retained(self) -> int:
        """Released caches held for reuse."""
        return len(self._retained)

    def cache_for(self, prompt: list[int], live: Iterable[tuple[list[int], LeanCache]]) -> LeanCache:
        """A cache for a new session that is to hold `prompt`, already holding its longest prefix found in a
        retained cache or in a live one (`live`: each open session's context and cache). Its `length` says
        how much of the prompt it holds."""
        # A comprehension, so that no name of this frame keeps a retained cache alive once it is dropped.
        length, retained_key = max(
            ((common_prefix_length(prompt, entry[0]), key) for key, entry in self._retained.items()), default=(0, None)
        )
        source = None
        for context, held in live:
            shared = common_prefix_length(prompt, context[: held.length])
            if shared > length:  # a retained cache wins ties: it needs no copy
                length, retained_key, source = shared, None, held
        self.stats.prompt_tokens += len(prompt)
        if length < MIN_REUSED_TOKENS:
            return self._new_cache()
        self.stats.reused_tokens += length
        if retained_key is not None:
            _, cache = self._retained.pop(retained_key)
            cache.crop(length)
            return cache
        assert source is not None
        cache = self._new_cache()
        cache.copy_prefix(source, length)
        return cache

    def retain(self, context: list[int], cache: LeanCache) -> None:
        """Keep a released session's cache for reuse; a retained sequence this one extends is dropped."""
        if self.max_retained <= 0 or cache.length < MIN_REUSED_TOKENS:
            return
        tokens = context[: cache.length]
        for key in [key for key, entry in self._retained.items() if _extends(tokens, entry[0])]:
            del self._retained[key]
        self._retained[self._next_key] = (tokens, cache)
        self._next_key += 1
        while len(self._retained) > self.max_retained:
            self._retained.popitem(last=False)

    def clear(self) -> None:
        """Drop every retained cache (a benchmark's fresh start)."""
        self._retained.clear()

    def _new_cache(self) -> LeanCache:
        # Retained caches give their slots back before the pool would grow for a new one.
        while self._retained and not self.pool.has_free_slot():
            self._retained.popitem(last=False)
        return self.decoder.new_cache()
