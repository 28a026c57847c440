"""The model drafter kind: a small causal LM with its own per-session KV cache (model_drafter.py).

Spec: NAME=model:PATH[@DTYPE][~MIN_CONFIDENCE][^LOOKAHEAD]. PATH is a model directory or a name such
as pydocs:draft-m; DTYPE defaults to the service's; greedy drafts stop below MIN_CONFIDENCE (default
0.4; ~0: never stop early); LOOKAHEAD greedy tokens are drafted while the target verifies (default
none). A '~' or '^' not followed by a number is part of the path (~/drafts/d).

This module stays free of torch and transformers (seconds to import): the CLI and the controller parse
specs without them. `ModelDrafter` (model_drafter.py) is imported when a drafter is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from banditspec.v1 import draft_pb2
from services.draft.drafters.base import Drafter, Kind, ServiceSettings, optional_field

MAX_LOOKAHEAD_TOKENS = 64


@dataclass(frozen=True)
class ModelDrafterOptions:
    model_path: str
    dtype: str | None = None  # None: the service's
    min_confidence: float | None = None  # 0: never stop early
    lookahead_tokens: int | None = None  # 0: no lookahead
    fetch: bool = True  # may fetch the default model (False for a load over an RPC; not on the wire)

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("a model drafter needs a model path")
        if self.dtype == "":
            raise ValueError("dtype must not be empty; leave it unset for the service's default")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.lookahead_tokens is not None and not 0 <= self.lookahead_tokens <= MAX_LOOKAHEAD_TOKENS:
            raise ValueError(f"lookahead is at most {MAX_LOOKAHEAD_TOKENS} tokens, got {self.lookahead_tokens}")

    @classmethod
    def parse(cls, args: str) -> Self:
        lookahead = None
        head, sep, tokens = args.rpartition("^")
        if sep and tokens.isdigit():
            args, lookahead = head, int(tokens)
        min_confidence = None
        head, sep, confidence = args.rpartition("~")
        if sep and _is_number(confidence):  # a '~' elsewhere (a home-relative path) is part of the path
            args, min_confidence = head, float(confidence)
            if not min_confidence <= 1.0:
                raise ValueError("a confidence threshold is at most 1")
            min_confidence = max(0.0, min_confidence)  # ~0 or below: never stop early
        path, _, dtype = args.partition("@")
        return cls(path, dtype or None, min_confidence, lookahead)

    @classmethod
    def from_pb(cls, pb: draft_pb2.ModelDrafterOptions) -> Self:
        return cls(
            pb.model_path,
            optional_field(pb, "dtype"),
            optional_field(pb, "min_confidence"),
            optional_field(pb, "lookahead_tokens"),
        )

    def to_pb(self) -> draft_pb2.ModelDrafterOptions:
        return draft_pb2.ModelDrafterOptions(
            model_path=self.model_path,
            dtype=self.dtype,
            min_confidence=self.min_confidence,
            lookahead_tokens=self.lookahead_tokens,
        )

    def confined(self, roots: Sequence[Path]) -> Self:
        """These options with the model's path checked against the model roots (OutsideModelRoots
        otherwise): a path becomes its resolved form, so what is loaded is what was checked; a name
        (default, pydocs:..., smollm2:...) stays a name, its directory checked. Nothing is fetched."""
        from banditspec.model_paths import is_model_name, model_location
        from banditspec.security import OutsideModelRoots, confine

        try:
            resolved = confine(model_location(self.model_path), roots)
        except OutsideModelRoots as error:
            raise OutsideModelRoots(self.model_path) from error
        path = self.model_path if is_model_name(self.model_path) else str(resolved)
        return replace(self, model_path=path, fetch=False)

    def build(self, name: str, settings: ServiceSettings) -> Drafter:
        from banditspec.model_paths import resolve_model_path
        from services.draft.drafters.model_drafter import ModelDrafter

        chosen: dict[str, Any] = {}  # unset options keep the drafter's defaults
        if self.min_confidence is not None:
            chosen["min_confidence"] = self.min_confidence
        if self.lookahead_tokens is not None:
            chosen["lookahead"] = self.lookahead_tokens
        path = str(resolve_model_path(self.model_path, fetch=self.fetch))
        return ModelDrafter.load(name, path, device=settings.device, dtype=self.dtype or settings.dtype, **chosen)


KIND = Kind(
    "model",
    draft_pb2.DRAFTER_KIND_MODEL,
    "NAME=model:PATH[@DTYPE][~MIN_CONFIDENCE][^LOOKAHEAD]",
    ModelDrafterOptions,
    model_free=False,
)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


__all__ = [
    "KIND",
    "MAX_LOOKAHEAD_TOKENS",
    "ModelDrafterOptions",
]
