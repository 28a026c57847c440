"""A token datastore for retrieval drafting (REST): documents of token ids and their suffix array.

Documents are concatenated with a separator (-1) after each one, so a query of real tokens never
matches across a document boundary and every continuation ends at a separator. The suffix array
orders all suffixes lexicographically (the separator sorts before every token, and a suffix that is
a prefix of another sorts first); it is built with numpy by prefix doubling, O(n log² n).

A datastore is saved as one `.npz` file (no pickle) with the vocabulary fingerprint of the tokenizer
that built it: its token ids mean nothing under any other vocabulary.
"""

from __future__ import annotations

import bisect
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEPARATOR = -1
FORMAT_VERSION = 1
MAX_TOKEN_ID = np.iinfo(np.int32).max


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of `tokens` in lexicographic order (int32 or int64)."""
    n = len(tokens)
    index_dtype = np.int32 if n < MAX_TOKEN_ID else np.int64
    if n == 0:
        return np.zeros(0, dtype=index_dtype)
    # Dense ranks of single tokens, then of 2, 4, 8, ... token prefixes: sort by (rank of the first
    # half, rank of the second half), where a second half past the end ranks below everything.
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64)
    order = np.argsort(rank)
    span = 1
    while True:
        distinct = int(rank.max()) + 1
        if distinct == n:
            break
        second = np.zeros(n, dtype=np.int64)
        second[: n - span] = rank[span:] + 1
        key = rank * (distinct + 1) + second  # < n (n + 1): fits int64 for any realistic n
        order = np.argsort(key)
        sorted_key = key[order]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.concatenate(([0], np.cumsum(sorted_key[1:] != sorted_key[:-1])))
        span *= 2
        if span >= n:
            break
    return order.astype(index_dtype)


@dataclass(frozen=True)
class Datastore:
    tokens: np.ndarray  # int32; every document followed by SEPARATOR
    suffixes: np.ndarray  # the suffix array of `tokens`
    vocab_fingerprint: str
    source: str = ""

    @property
    def num_tokens(self) -> int:
        """Document tokens, separators not counted."""
        return len(self.tokens) - self.num_documents

    @property
    def num_documents(self) -> int:
        return int(np.count_nonzero(self.tokens == SEPARATOR))

    def find(self, query: list[int]) -> tuple[int, int]:
        """The range [lo, hi) of the suffix array whose suffixes start with `query` (empty: lo == hi).

        A binary search comparing `len(query)`-token slices: O(len(query) log n)."""
        query = list(query)
        if not query:
            return 0, len(self.suffixes)
        width = len(query)
        tokens = self.tokens

        def prefix(start) -> list[int]:
            return tokens[start : start + width].tolist()

        lo = bisect.bisect_left(self.suffixes, query, key=prefix)
        hi = bisect.bisect_right(self.suffixes, query, lo, key=prefix)
        return lo, hi

    def occurrences(self, query: list[int]) -> np.ndarray:
        """Start positions of every occurrence of `query`, in suffix-array order."""
        lo, hi = self.find(query)
        return self.suffixes[lo:hi]

    def save(self, path: str | Path) -> None:
        """Write one `.npz` file (atomically: a half-written file never has the final name)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as file:
            np.savez(
                file,
                format_version=np.array(FORMAT_VERSION, dtype=np.int32),
                tokens=self.tokens,
                suffixes=self.suffixes,
                vocab_fingerprint=np.array(self.vocab_fingerprint),
                source=np.array(self.source),
            )
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> Datastore:
        """Read a file written by `save`; a missing or malformed file raises ValueError saying which."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no datastore file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["format_version"])
                tokens, suffixes = data["tokens"], data["suffixes"]
                fingerprint, source = str(data["vocab_fingerprint"]), str(data["source"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(
                f"{path} is not a readable datastore (.npz from `banditspec datastore build`): {error}"
            ) from error
        problem = _check(version, tokens, suffixes)
        if problem:
            raise ValueError(f"{path} is not a valid datastore: {problem}")
        return cls(tokens, suffixes, fingerprint, source)


def _check(version: int, tokens: np.ndarray, suffixes: np.ndarray) -> str:
    if version != FORMAT_VERSION:
        return f"format version {version}, expected {FORMAT_VERSION}"
    if tokens.ndim != 1 or tokens.dtype != np.int32:
        return f"tokens must be a 1-D int32 array, got {tokens.dtype} {tokens.shape}"
    if suffixes.ndim != 1 or suffixes.dtype not in (np.int32, np.int64) or len(suffixes) != len(tokens):
        return f"suffix array must be 1-D int32/int64 of {len(tokens)} entries, got {suffixes.dtype} {suffixes.shape}"
    if len(tokens):
        if tokens[-1] != SEPARATOR or tokens.min() < SEPARATOR:
            return "tokens must be ids >= 0 with a separator (-1) after each document"
        if suffixes.min() < 0 or suffixes.max() >= len(tokens):
            return "suffix array entries out of range"
    return ""
