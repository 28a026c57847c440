"""Writing a draft overlay: the draft's trained tensors only, beside a record naming its target."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from banditspec.overlays import OVERLAY_JSON, OVERLAY_TENSORS, VOCABULARY_JSON

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def save_overlay(draft: PreTrainedModel, out: Path, record: dict) -> Path:
    """Write the draft's trained tensors (bfloat16) and `record` (must name `target` and `layers`)."""
    from safetensors.torch import save_file

    shared = {id(draft.get_input_embeddings().weight), id(draft.get_output_embeddings().weight)}
    tensors = {
        name: parameter.detach().to("cpu", torch.bfloat16).contiguous()
        for name, parameter in draft.named_parameters()
        if id(parameter) not in shared
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / OVERLAY_TENSORS))
    record = dict(record, sha256=hashlib.sha256((out / OVERLAY_TENSORS).read_bytes()).hexdigest())
    if "vocabulary" in record:  # written beforehand: its digest goes in the record
        digest = hashlib.sha256((out / VOCABULARY_JSON).read_bytes()).hexdigest()
        record["vocabulary"] = dict(record["vocabulary"], sha256=digest)
    (out / OVERLAY_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return out
