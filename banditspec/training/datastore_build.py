"""Building a retrieval datastore from documents: text files or recorded answers, tokenised."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from banditspec.datastore import MAX_TOKEN_ID, SEPARATOR, Datastore, suffix_array


def build_datastore(sequences: Iterable[list[int]], vocab_fingerprint: str, source: str) -> Datastore:
    """Concatenate the non-empty sequences (one document each) and index them."""
    parts = []
    for sequence in sequences:
        if len(sequence) == 0:
            continue
        document = np.asarray(sequence, dtype=np.int64)
        if document.ndim != 1 or document.min() < 0 or document.max() > MAX_TOKEN_ID:
            raise ValueError("a datastore document must be a flat list of token ids >= 0")
        parts.append(document.astype(np.int32))
        parts.append(np.array([SEPARATOR], dtype=np.int32))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return Datastore(tokens, suffix_array(tokens), vocab_fingerprint, source)


def text_files(paths: Iterable[str | Path], pattern: str = "*.txt") -> list[Path]:
    """The files named, plus those matching `pattern` anywhere under the directories named (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob(pattern) if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"no such file or directory: {path}")
    return files


def recorded_outputs(path: str | Path) -> Iterator[list[int]]:
    """The `token_ids` of each JSON object in a file: JSON lines, or the concatenated (indented)
    responses that `banditspec generate --json` prints."""
    text = Path(path).read_text()
    decoder = json.JSONDecoder()
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON at line {error.lineno}: {error.msg}") from error
        ids = record.get("token_ids") if isinstance(record, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            line = text.count("\n", 0, position) + 1
            raise ValueError(f"{path}: the record ending at line {line} has no top-level token_ids list of ids")
        yield ids
