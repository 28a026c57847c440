"""Drafter specifications, one string per drafter (CLI flags, `drafters load`): NAME=KIND[:ARGS], e.g.

    pld=prompt_lookup:1-3:fixed
    dm=model:pydocs:draft-m@bfloat16~0.3^8
    sfx=suffix:24:off
    rest=retrieval:PATH:16

Each kind's module declares its ARGS (services/draft/drafters/kinds.py lists the kinds; USAGE spells
them out). Here: the generic part, NAME and KIND and the dispatch of ARGS, and the LoadDrafterRequest
round trip, whose `options` field names the kind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from banditspec.v1 import draft_pb2
from services.draft.drafters.base import Drafter, DrafterOptions, ServiceSettings
from services.draft.drafters.kinds import KINDS

# A drafter's name is part of its arms' names (SERVICE/DRAFTER/γ), of logs and of metric labels.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_USAGES = [kind.usage for kind in KINDS.values()]
USAGE = ", ".join(_USAGES[:-1]) + " or " + _USAGES[-1] if len(_USAGES) > 1 else _USAGES[0]


@dataclass(frozen=True)
class DrafterSpec:
    """A drafter to load: its name, its kind, and that kind's options."""

    name: str
    kind: str
    options: DrafterOptions

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a drafter needs a name")
        if not NAME.fullmatch(self.name):
            raise ValueError(
                f"drafter name {self.name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        kind = KINDS.get(self.kind)
        if kind is None:
            raise ValueError(f"unknown drafter kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(self.options, kind.options):
            raise TypeError(f"a {self.kind} drafter takes {kind.options.__name__}, got {type(self.options).__name__}")

    @classmethod
    def parse(cls, text: str) -> DrafterSpec:
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"drafter spec {text!r}: expected {USAGE}")
        kind_name, _, args = rest.partition(":")
        kind = KINDS.get(kind_name)
        if kind is None:
            raise ValueError(f"drafter spec {text!r}: unknown kind {kind_name!r}; expected {USAGE}")
        try:
            options = kind.options.parse(args)
        except ValueError as error:
            raise ValueError(f"drafter spec {text!r}: {error}") from error
        return cls(name, kind_name, options)

    def to_pb(self, replace: bool = False) -> draft_pb2.LoadDrafterRequest:
        # Set by keyword: an all-default options message is still present, and so still names the kind.
        return draft_pb2.LoadDrafterRequest(name=self.name, replace=replace, **{self.kind: self.options.to_pb()})

    @classmethod
    def from_pb(cls, pb: draft_pb2.LoadDrafterRequest) -> DrafterSpec:
        if not pb.name:
            raise ValueError("LoadDrafter needs a name")
        field = pb.WhichOneof("options")
        if field is None:
            raise ValueError(f"LoadDrafter needs the options of its drafter's kind: set one of {', '.join(KINDS)}")
        kind = KINDS.get(field)
        if kind is None:  # a kind in the proto that this service does not register
            raise ValueError(f"this draft service cannot load {field} drafters; it knows {', '.join(KINDS)}")
        try:
            options = kind.options.from_pb(getattr(pb, field))
        except ValueError as error:
            raise ValueError(f"drafter {pb.name!r}: {error}") from error
        return cls(pb.name, field, options)

    def confined(self, roots: Sequence[Path] | None) -> DrafterSpec:
        """This spec with every file it names checked against the model roots (None: the default roots)
        and resolved; OutsideModelRoots (PERMISSION_DENIED) for a file outside them. For LoadDrafter: the
        start-up drafters are the operator's own."""
        if roots is None:
            from banditspec.model_paths import default_model_roots

            roots = default_model_roots()
        confine = getattr(self.options, "confined", None)  # kinds that read files declare it
        return self if confine is None else replace(self, options=confine(roots))

    @property
    def model_free(self) -> bool:
        return KINDS[self.kind].model_free

    def build(self, settings: ServiceSettings) -> Drafter:
        return self.options.build(self.name, settings)
