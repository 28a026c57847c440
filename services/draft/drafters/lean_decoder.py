"""A lean incremental forward for small Llama-architecture drafts.

A draft model proposes one token per forward, and for a 1-2-layer draft the work of `transformers`' generic
forward (mask building, cache objects, output classes) is most of its time: about 2 ms per token on a CPU
core against under 1 ms for the same arithmetic here. This module runs the model's own modules (norms,
projections, MLP, rotary tables) in the Llama order over a preallocated per-session key/value buffer.
It is used for drafts only: a draft's numerics never affect the output (the target verifies every
token), and a test holds its logits to those of the `transformers` forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

# Rotary variants whose tables depend only on the position (no dynamic rescaling at run time).
STATIC_ROPE_TYPES = {"default", "linear", "llama3"}


class LeanCache:
    """Keys and values of one sequence, [layers, kv_heads, capacity, head_dim], grown by doubling."""

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, capacity: int = 256
    ) -> None:
        self.keys = torch.zeros(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    def reserve(self, length: int) -> None:
        capacity = self.keys.shape[2]
        if length <= capacity:
            return
        while capacity < length:
            capacity *= 2
        for name in ("keys", "values"):
            old = getattr(self, name)
            grown = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
            grown[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, grown)

    def crop(self, max_length: int) -> None:
        """`DynamicCache.crop` semantics: keep the first `max_length` positions; a negative value drops that many."""
        if max_length < 0:
            max_length = self.length + max_length
        self.length = max(0, min(self.length, max_length))

    def get_seq_length(self) -> int:
        return self.length


def lean_supported(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        return False
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type", "default") in STATIC_ROPE_TYPES


class LeanLlama:
    """`new_cache()` and `forward(ids, cache)` with the same meaning as `LoadedModel`'s, for a LlamaForCausalLM."""

    def __init__(self, model: PreTrainedModel, max_positions: int) -> None:
        if not lean_supported(model):
            raise ValueError("the lean decoder supports Llama models with static rotary embeddings only")
        config = model.config
        # A LlamaModel and its head; nn.Module's __getattr__ would type every submodule as Tensor | Module.
        self.decoder: Any = model.model
        self.lm_head: Any = model.lm_head
        self.layers: list[Any] = list(self.decoder.layers)
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        weight = self.lm_head.weight
        self.dtype, self.device = weight.dtype, weight.device
        with torch.inference_mode():
            positions = torch.arange(max_positions, device=self.device)[None]
            cos, sin = self.decoder.rotary_emb(weight[:1], positions)
        self.cos, self.sin = cos[0], sin[0]  # [positions, head_dim]
        self.max_positions = max_positions

    def new_cache(self) -> LeanCache:
        return LeanCache(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device)

    @torch.inference_mode()
    def forward(self, input_ids: list[int], cache: LeanCache, last_only: bool = False) -> torch.Tensor:
        """Feed tokens after the cached ones; logits [len(input_ids), V] (or [1, V]) as float32."""
        count, start = len(input_ids), cache.length
        end = start + count
        if end > self.max_positions:
            raise ValueError(f"context of {end} tokens exceeds the model's {self.max_positions} positions")
        cache.reserve(end)
        hidden = self.decoder.embed_tokens(torch.tensor(input_ids, device=self.device))
        cos, sin = self.cos[start:end], self.sin[start:end]
        # One query sees every cached key; a block of queries is causal within itself.
        mask = None if count == 1 else torch.ones(count, end, dtype=torch.bool, device=self.device).tril(start)
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            query = attention.q_proj(normed).view(count, self.heads, self.head_dim).transpose(0, 1)
            key = attention.k_proj(normed).view(count, self.kv_heads, self.head_dim).transpose(0, 1)
            value = attention.v_proj(normed).view(count, self.kv_heads, self.head_dim).transpose(0, 1)
            query, key = apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=0)  # tables [count, head_dim]
            cache.keys[index, :, start:end] = key
            cache.values[index, :, start:end] = value
            attended = F.scaled_dot_product_attention(
                query,
                cache.keys[index, :, :end],
                cache.values[index, :, :end],
                attn_mask=mask,
                enable_gqa=self.kv_heads != self.heads,
            )
            hidden = hidden + attention.o_proj(attended.transpose(0, 1).reshape(count, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        cache.length = end
        if last_only:
            hidden = hidden[-1:]
        return self.lm_head(self.decoder.norm(hidden)).float()
