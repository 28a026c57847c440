"""Drafter specifications, one string per drafter (CLI flags, `drafters load`):

    NAME=prompt_lookup[:MIN-MAX][:fixed]
    NAME=model:PATH[@DTYPE][~MIN_CONFIDENCE][^LOOKAHEAD_TOKENS]
    NAME=suffix[:DEPTH[:MEMORY_TOKENS|off]]
    NAME=retrieval:DATASTORE_PATH[:DEPTH]
"""

from __future__ import annotations

from dataclasses import dataclass

from banditspec.v1 import draft_pb2

KINDS = {
    "prompt_lookup": draft_pb2.DRAFTER_KIND_PROMPT_LOOKUP,
    "model": draft_pb2.DRAFTER_KIND_MODEL,
    "suffix": draft_pb2.DRAFTER_KIND_SUFFIX,
    "retrieval": draft_pb2.DRAFTER_KIND_RETRIEVAL,
}
USAGE = (
    "NAME=prompt_lookup[:MIN-MAX][:fixed], NAME=model:PATH[@DTYPE][~MIN_CONFIDENCE][^LOOKAHEAD], NAME=suffix[:DEPTH[:MEMORY_TOKENS|off]] "
    "or NAME=retrieval:DATASTORE_PATH[:DEPTH]"
)
KIND_NAMES = {value: key for key, value in KINDS.items()}
MAX_LOOKAHEAD_TOKENS = 64
MAX_NGRAM = 32  # prompt lookup indexes (max - min + 1) n-grams per context token
MAX_DEPTH = 256  # suffix / retrieval: matching costs up to max_depth steps per token


@dataclass(frozen=True)
class DrafterSpec:
    name: str
    kind: str
    model_path: str = ""
    dtype: str = ""
    min_ngram: int = 0
    max_ngram: int = 0
    fixed_length: bool = False
    datastore_path: str = ""
    max_depth: int = 0
    memory_tokens: int = 0
    min_confidence: float = 0.0  # 0: the drafter's default; negative: never stop early
    lookahead_tokens: int = 0  # 0: the drafter's default; negative: no lookahead

    def __post_init__(self) -> None:
        if not 0 <= self.min_ngram <= MAX_NGRAM or not 0 <= self.max_ngram <= MAX_NGRAM:
            raise ValueError(f"drafter {self.name!r}: n-gram sizes must be in [1, {MAX_NGRAM}]")
        if not -1 <= self.lookahead_tokens <= MAX_LOOKAHEAD_TOKENS:
            raise ValueError(f"drafter {self.name!r}: lookahead is at most {MAX_LOOKAHEAD_TOKENS} tokens, got {self.lookahead_tokens}")
        if not 0 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"drafter {self.name!r}: max_depth must be in [1, {MAX_DEPTH}], got {self.max_depth}")

    @classmethod
    def parse(cls, text: str) -> DrafterSpec:
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"drafter spec {text!r}: expected {USAGE}")
        kind, _, arg = rest.partition(":")
        if kind == "prompt_lookup":
            sizes, _, flag = arg.partition(":")
            if sizes == "fixed" and not flag:
                sizes, flag = "", "fixed"
            if flag not in ("", "fixed"):
                raise ValueError(f"drafter spec {text!r}: unknown prompt_lookup option {flag!r}")
            if not sizes:
                return cls(name, kind, fixed_length=bool(flag))
            low, _, high = sizes.partition("-")
            return cls(name, kind, min_ngram=int(low), max_ngram=int(high or low), fixed_length=bool(flag))
        if kind == "model":
            if not arg:
                raise ValueError(f"drafter spec {text!r}: a model drafter needs a path")
            lookahead = 0  # the drafter's default
            head, sep, tokens = arg.rpartition("^")
            if sep and tokens.isdigit():
                arg, lookahead = head, int(tokens) or -1  # ^0: none (0 itself means "default" on the wire)
            min_confidence = 0.0  # the drafter's default
            head, sep, confidence = arg.rpartition("~")
            if sep and _is_number(confidence):  # a '~' elsewhere (a home-relative path) is part of the path
                arg, min_confidence = head, float(confidence)
                if not min_confidence <= 1.0:
                    raise ValueError(f"drafter spec {text!r}: a confidence threshold is at most 1")
                if min_confidence <= 0.0:
                    min_confidence = -1.0  # ~0: never stop early (0 itself means "default" on the wire)
            path, _, dtype = arg.partition("@")
            if not path:
                raise ValueError(f"drafter spec {text!r}: a model drafter needs a path")
            return cls(
                name, kind, model_path=path, dtype=dtype, min_confidence=min_confidence, lookahead_tokens=lookahead
            )
        if kind == "suffix":
            depth, _, memory = arg.partition(":")
            if depth == "off" and not memory:
                depth, memory = "", "off"
            # off or 0: no learning across requests (0 itself means "default" on the wire)
            remembered = -1 if memory in ("off", "0") else _int(text, memory)
            return cls(name, kind, max_depth=_int(text, depth), memory_tokens=remembered)
        if kind == "retrieval":
            path, _, depth = arg.rpartition(":") if arg.rpartition(":")[2].isdigit() else (arg, "", "")
            if not path:
                raise ValueError(f"drafter spec {text!r}: a retrieval drafter needs a datastore path")
            return cls(name, kind, datastore_path=path, max_depth=_int(text, depth))
        raise ValueError(f"drafter spec {text!r}: unknown kind {kind!r}; expected {USAGE}")

    def to_pb(self, replace: bool = False) -> draft_pb2.LoadDrafterRequest:
        return draft_pb2.LoadDrafterRequest(
            name=self.name,
            kind=KINDS[self.kind],
            model_path=self.model_path,
            dtype=self.dtype,
            min_ngram=self.min_ngram,
            max_ngram=self.max_ngram,
            replace=replace,
            fixed_length=self.fixed_length,
            datastore_path=self.datastore_path,
            max_depth=self.max_depth,
            memory_tokens=self.memory_tokens,
            min_confidence=self.min_confidence,
            lookahead_tokens=self.lookahead_tokens,
        )

    @classmethod
    def from_pb(cls, pb: draft_pb2.LoadDrafterRequest) -> DrafterSpec:
        if pb.kind not in KIND_NAMES:
            raise ValueError(f"LoadDrafter needs a kind, one of {', '.join(draft_pb2.DrafterKind.keys()[1:])}")
        if not pb.name:
            raise ValueError("LoadDrafter needs a name")
        if pb.kind == draft_pb2.DRAFTER_KIND_MODEL and not pb.model_path:
            raise ValueError("a model drafter needs model_path")
        if pb.kind == draft_pb2.DRAFTER_KIND_RETRIEVAL and not pb.datastore_path:
            raise ValueError("a retrieval drafter needs datastore_path")
        if not pb.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be <= 1, got {pb.min_confidence}")
        if pb.memory_tokens < -1:
            raise ValueError("memory_tokens must be >= -1")
        return cls(
            pb.name,
            KIND_NAMES[pb.kind],
            pb.model_path,
            pb.dtype,
            pb.min_ngram,
            pb.max_ngram,
            pb.fixed_length,
            pb.datastore_path,
            pb.max_depth,
            pb.memory_tokens,
            pb.min_confidence,
            pb.lookahead_tokens,
        )


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _int(text: str, value: str) -> int:
    if not value:
        return 0
    if not value.isdigit():
        raise ValueError(f"drafter spec {text!r}: {value!r} is not a non-negative integer")
    return int(value)
