"""Loading Hugging Face causal LMs and identifying their vocabulary."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """float32 on CPU and bfloat16 on CUDA unless asked otherwise."""
    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def vocab_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 over (id, token) pairs: equal fingerprints mean token ids mean the same text."""
    pairs = sorted((index, token) for token, index in tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()[:16]


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as error:
        raise ValueError(f"no usable tokenizer in {path}: {error}") from error


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    max_context: int
    vocab_size: int
    eos_token_ids: list[int]

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.model.config)

    @torch.inference_mode()
    def forward(self, input_ids: list[int], cache: DynamicCache, last_only: bool = False) -> torch.Tensor:
        """Feed tokens after the cached ones; logits [len(input_ids), V] (or [1, V]) as float32."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
        return out.logits[0].float()

    def measure_forwards(self, max_tokens: int = 16, repeats: int = 5, context: int = 256) -> list[float]:
        return measure_forwards(
            self.forward, self.new_cache, self.device, self.max_context, max_tokens, repeats, context
        )


@torch.inference_mode()
def measure_forwards(
    forward: Callable[[list[int], Any], Any],
    new_cache: Callable[[], Any],
    device: torch.device,
    max_context: int,
    max_tokens: int = 16,
    repeats: int = 5,
    context: int = 256,
) -> list[float]:
    """Seconds of a cached forward of k = 1..max_tokens tokens after `context` cached tokens, the fastest
    of `repeats`: the services start side by side, and load on the other cores only ever adds time,
    while the curve's shape (blocked matrix kernels) is a property of the model. Sizes are
    interleaved within each repeat, so drift hits them alike. Also warms up kernels. `forward(ids, cache)`
    and `new_cache()` are those of the path measured (a `LoadedModel`'s or the lean decoder's)."""
    cache = new_cache()
    forward([0] * max(1, min(context, max_context - max_tokens - 1)), cache)
    times: list[list[float]] = [[] for _ in range(max_tokens)]
    for _ in range(repeats):
        for k in range(1, max_tokens + 1):
            start = time.perf_counter()
            forward([0] * k, cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k - 1].append(time.perf_counter() - start)
            cache.crop(-k)
    return [min(t) for t in times]


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def load_causal_lm(path: str | Path, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    path = Path(path)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json)")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        # transformers wraps PreTrainedModel.to in functools.wraps(Module.to), which mypy cannot bind as a method.
        model.to(torch_device)  # type: ignore[arg-type]
        model.eval()
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a causal LM from {path}: {error}") from error
    config = model.config
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        path=str(path),
        device=torch_device,
        dtype=torch_dtype,
        fingerprint=vocab_fingerprint(tokenizer),
        max_context=int(getattr(config, "max_position_embeddings", 2048)),
        vocab_size=int(config.vocab_size),
        eos_token_ids=_eos_ids(model, tokenizer),
    )
