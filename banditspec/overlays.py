"""Drafts that reuse their target's embedding, shipped as an overlay of their own tensors only.

A draft built from some of its target's layers keeps the target's (frozen, tied) embedding: for SmolLM2
that is 49,152 × 576 weights, 57 MB in bfloat16, against ~7 MB per trained layer. The overlay directory
holds `overlay.json` (the target, which of its layers the draft started from, the training record) and
`overlay.safetensors` (the trained layers and final norm). The first use assembles an ordinary Hugging Face
model directory in the cache, keyed by the overlay's SHA-256, so every loader sees a plain model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import torch

from banditspec.cache import cache_dir

if TYPE_CHECKING:  # transformers loads lazily, inside the functions that need it
    from transformers import PreTrainedModel

OVERLAY_JSON = "overlay.json"
OVERLAY_TENSORS = "overlay.safetensors"
# A draft's output-layer subset (token ids, JSON), when it proposes from its frequent tokens only.
VOCABULARY_JSON = "vocabulary.json"

log = structlog.get_logger()


def is_overlay(path: Path) -> bool:
    return (path / OVERLAY_JSON).exists() and not (path / "config.json").exists()


def draft_from_target_layers(target: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A model of the target's architecture with only `layers` (copied, trainable); embedding frozen."""
    from transformers import AutoModelForCausalLM

    count = target.config.num_hidden_layers
    if not layers or any(not 0 <= index < count for index in layers):
        raise ValueError(f"layers must be indices of the target's {count} layers, got {layers}")
    config = target.config.__class__.from_dict(target.config.to_dict())
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [target.config.layer_types[index] for index in layers]
    draft = AutoModelForCausalLM.from_config(config, dtype=target.dtype)
    source = target.state_dict()
    state = {key: value for key, value in source.items() if not key.startswith("model.layers.")}
    for new, old in enumerate(layers):
        prefix = f"model.layers.{old}."
        state.update(
            {
                f"model.layers.{new}." + key[len(prefix) :]: value
                for key, value in source.items()
                if key.startswith(prefix)
            }
        )
    draft.load_state_dict(state, strict=False)
    draft.tie_weights()
    draft.get_input_embeddings().requires_grad_(False)
    draft.get_output_embeddings().requires_grad_(False)
    return draft


def materialize(overlay: Path, resolve_target: Callable[[str], Path]) -> Path:
    """The assembled model directory for `overlay`, built on first use; `resolve_target` finds the
    directory of the target the overlay names (a function, so this module needs no model registry)."""
    try:
        record = json.loads((overlay / OVERLAY_JSON).read_text())
        digest = hashlib.sha256((overlay / OVERLAY_TENSORS).read_bytes()).hexdigest()
    except (OSError, ValueError) as error:
        raise ValueError(f"{overlay} is not a valid draft overlay: {error!r}") from error
    missing = [key for key in ("target", "layers") if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(f"{overlay / OVERLAY_JSON} lacks {', '.join(missing)}: not a valid draft overlay")
    if digest != record.get("sha256"):
        raise ValueError(f"{overlay / OVERLAY_TENSORS} does not match the SHA-256 in {OVERLAY_JSON}")
    vocabulary = record.get("vocabulary")
    if vocabulary is not None:
        try:
            vocabulary_digest = hashlib.sha256((overlay / VOCABULARY_JSON).read_bytes()).hexdigest()
        except OSError as error:
            raise ValueError(f"{overlay} names a vocabulary subset but has no {VOCABULARY_JSON}") from error
        if vocabulary_digest != vocabulary.get("sha256"):
            raise ValueError(f"{overlay / VOCABULARY_JSON} does not match the SHA-256 in {OVERLAY_JSON}")
        digest = hashlib.sha256((digest + vocabulary_digest).encode()).hexdigest()
    out = cache_dir() / "drafts" / f"{overlay.name}-{digest[:12]}"
    if (out / "config.json").exists():
        return out
    _assemble(overlay, record, out, resolve_target(record["target"]))
    return out


def read_vocabulary(model_dir: Path) -> list[int] | None:
    """A model directory's output-layer subset, when it has one (drafts assembled from such an overlay)."""
    path = model_dir / VOCABULARY_JSON
    if not path.exists():
        return None
    try:
        ids = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a valid vocabulary subset: {error!r}") from error
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"{path} must be a non-empty JSON list of token ids")
    return ids


def _assemble(overlay: Path, record: dict, out: Path, target_dir: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from banditspec.models import vocab_fingerprint

    tokenizer = AutoTokenizer.from_pretrained(str(target_dir))
    if record.get("vocab_fingerprint") not in (None, vocab_fingerprint(tokenizer)):
        raise ValueError(f"the overlay {overlay} was trained for another vocabulary than {target_dir}'s")
    target = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32)
    draft = draft_from_target_layers(target, list(record["layers"]))
    tensors = {name: value.float() for name, value in load_file(str(overlay / OVERLAY_TENSORS)).items()}
    missing, unexpected = draft.load_state_dict(tensors, strict=False)
    trained = {name for name, _ in draft.named_parameters() if "embed_tokens" not in name and "lm_head" not in name}
    if unexpected or trained & set(missing):
        raise ValueError(
            f"overlay {overlay} does not fit its target: missing {sorted(trained & set(missing))}, "
            f"unexpected {sorted(unexpected)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staging = Path(tmp) / out.name
        draft.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        shutil.copy(overlay / OVERLAY_JSON, staging / OVERLAY_JSON)
        if (overlay / VOCABULARY_JSON).exists():
            shutil.copy(overlay / VOCABULARY_JSON, staging / VOCABULARY_JSON)
        if (out / "config.json").exists():  # another process assembled it meanwhile
            return
        if out.exists():  # not a draft (a complete one has its config): safe to replace
            shutil.rmtree(out)
        try:
            staging.rename(out)  # atomic: a half-written draft never looks complete
        except OSError:
            if not (out / "config.json").exists():
                raise
            return  # another process won the race
    log.info("draft assembled from overlay", overlay=str(overlay), path=str(out))
