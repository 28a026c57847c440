"""Drafter specifications: `NAME=prompt_lookup[:MIN-MAX][:fixed]` or `NAME=model:PATH[@DTYPE]`."""

from __future__ import annotations

from dataclasses import dataclass

from banditspec.v1 import draft_pb2

KINDS = {
    "prompt_lookup": draft_pb2.DRAFTER_KIND_PROMPT_LOOKUP,
    "model": draft_pb2.DRAFTER_KIND_MODEL,
}
KIND_NAMES = {value: key for key, value in KINDS.items()}


@dataclass(frozen=True)
class DrafterSpec:
    name: str
    kind: str
    model_path: str = ""
    dtype: str = ""
    min_ngram: int = 0
    max_ngram: int = 0
    fixed_length: bool = False

    @classmethod
    def parse(cls, text: str) -> DrafterSpec:
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"drafter spec {text!r}: expected NAME=prompt_lookup[:MIN-MAX][:fixed] or NAME=model:PATH[@DTYPE]")
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
            path, _, dtype = arg.partition("@")
            return cls(name, kind, model_path=path, dtype=dtype)
        raise ValueError(f"drafter spec {text!r}: unknown kind {kind!r}; choose prompt_lookup or model")

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
        )

    @classmethod
    def from_pb(cls, pb: draft_pb2.LoadDrafterRequest) -> DrafterSpec:
        if pb.kind not in KIND_NAMES:
            raise ValueError("LoadDrafter needs kind DRAFTER_KIND_PROMPT_LOOKUP or DRAFTER_KIND_MODEL")
        if not pb.name:
            raise ValueError("LoadDrafter needs a name")
        if pb.kind == draft_pb2.DRAFTER_KIND_MODEL and not pb.model_path:
            raise ValueError("a model drafter needs model_path")
        return cls(pb.name, KIND_NAMES[pb.kind], pb.model_path, pb.dtype, pb.min_ngram, pb.max_ngram, pb.fixed_length)
