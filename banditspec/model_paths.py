"""Model names → model directories: the default checkpoint, the shipped pydocs family and SmolLM2
drafts, draft overlays (assembled on first use), or a path as given."""

from __future__ import annotations

import functools
from pathlib import Path

from banditspec.cache import cache_dir
from banditspec.default_model import default_model_dir, default_model_ready, ensure_default_model
from banditspec.errors import PermissionDenied
from banditspec.overlays import is_overlay, materialize

DEFAULT = "default"
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
PYDOCS_DIR = MODELS_DIR / "pydocs"
SMOLLM2_DRAFTS_DIR = MODELS_DIR / "smollm2"


def default_model_roots() -> list[Path]:
    """Where a draft service loads drafters from when no --model-root is given: the shipped models and
    the model cache (the converted default checkpoint)."""
    return [MODELS_DIR, cache_dir() / "models"]


def is_model_name(path: str | None) -> bool:
    """A name (default, pydocs[:MEMBER], smollm2:DRAFT) rather than a path."""
    return path in (None, "", DEFAULT, "pydocs") or str(path).startswith(("pydocs:", "smollm2:"))


def model_location(path: str | None) -> Path:
    """Where a model name or path lives on disk, without building or converting anything (for checking it
    against the model roots before loading)."""
    if path is None or path in ("", DEFAULT):
        return default_model_dir()
    if path == "pydocs" or path.startswith("pydocs:"):
        return PYDOCS_DIR / (path.partition(":")[2] or "target")
    if path.startswith("smollm2:"):
        return SMOLLM2_DRAFTS_DIR / path.partition(":")[2]
    return Path(path)


def resolve_model_path(path: str | None, fetch: bool = True) -> Path:
    """`default` (or nothing) → the default checkpoint, converted on first use; `pydocs[:MEMBER]` → a
    shipped pydocs model (target, draft-m, draft-s); `smollm2:DRAFT` → a shipped draft for the default
    model; a draft overlay directory → its assembled model (built on first use); else the path as given.
    With fetch=False (a load over an RPC) nothing is downloaded: the default checkpoint must be there."""
    if path is None or path in ("", DEFAULT):
        if not fetch and not default_model_ready():
            raise PermissionDenied(
                "the default model is not on this machine yet, and no model is fetched through an RPC: "
                "start a service with it once (e.g. serve-draft --drafter d=model:default)"
            )
        return ensure_default_model()
    if path == "pydocs" or path.startswith("pydocs:"):
        member = path.partition(":")[2] or "target"
        if not (PYDOCS_DIR / member / "config.json").exists():
            raise ValueError(f"no pydocs model {member!r} in {PYDOCS_DIR}; members: target, draft-m, draft-s")
        return PYDOCS_DIR / member
    if path.startswith("smollm2:"):
        member = path.partition(":")[2]
        if not (SMOLLM2_DRAFTS_DIR / member / "overlay.json").exists():
            shipped = sorted(p.parent.name for p in SMOLLM2_DRAFTS_DIR.glob("*/overlay.json"))
            raise ValueError(
                f"no SmolLM2 draft {member!r} in {SMOLLM2_DRAFTS_DIR}; shipped: {', '.join(shipped) or 'none'}"
            )
        path = str(SMOLLM2_DRAFTS_DIR / member)
    if is_overlay(Path(path)):
        return materialize(Path(path), functools.partial(resolve_model_path, fetch=fetch))
    return Path(path)
