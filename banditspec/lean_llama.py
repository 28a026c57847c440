"""A lean forward for Llama-architecture models over per-sequence key/value buffers.

`transformers`' generic forward (mask building, cache objects, output classes) is most of the time of a
small model's one-token step: about 2 ms per token on a CPU core against under 1 ms for the same arithmetic
here. This module runs the model's own modules (norms, projections, MLP, rotary tables) in the Llama order
over a preallocated key/value buffer per sequence, so that:

- a draft model proposes a token per `forward` cheaply (its numerics never affect the output: the target
  verifies every token);
- the target runs the rows of many sessions as one `forward_batch`: every row's tokens go through the
  projections and the MLP as one flat matrix (the bulk of the arithmetic, now shared), and attention runs
  per row against that row's own buffer, under that row's own mask. No row is padded to another's length,
  and a row's mask may be any pattern over its new tokens (a chain today, a token tree later).

Tests hold the logits to those of the `transformers` forward.
"""

from __future__ import annotations

import collections
import heapq
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

# Rotary variants whose tables depend only on the position (no dynamic rescaling at run time).
STATIC_ROPE_TYPES = {"default", "linear", "llama3"}
# Until `calibrate_narrow` measures this CPU, 2 to this many tokens multiply weight × inputsᵀ on a CPU (see
# `LeanLlama._times`): 1 × 3 and 1 × 5 tokens 0.77x and 0.75x the time on the AMD machine (RESULTS 24), while on
# the Intel one 2-4 tokens lost and 8-48 gained (RESULTS 31).
NARROW_ROWS = 6
# The product sizes `calibrate_narrow` times; a product of a size between two runs padded to one of them.
NARROW_SIZES = (*range(1, 17), 20, 24, 28, 32, 40, 48, 56, 64)
# Batched forwards `measure_batches` times at start-up, (rows, tokens per row): short rows as under load
# (one token and a short draft each, from 2 rows up), then rows of 8 tokens up to 128 in all.
POOL_SLOTS = 8  # a pooled model's first slots; they double when all are taken
ROW_IN_SLOT_QUERIES = 7  # a row attended alone costs about as much as 7 padded queries per slot (`slot_width`)
PACKED_BATCH_HINT = 8  # the token count oneDNN lays a packed weight out for; 8 and 64 timed alike for 1-128 tokens
# The token counts `calibrate_narrow` packs float32 weights for through MKL (`mkl_pack`), each a copy of the weights
# kept only where it wins; a count below one pads up to it. On the Intel Xeon 8 and 16 tokens took 0.85x and
# 0.80x oneDNN's packed time (RESULTS 55).
MKL_PACK_SIZES = (8, 16, 24)
BATCH_SHAPES = (
    (2, 1), (4, 1), (8, 1), (16, 1), (4, 2), (8, 2), (16, 2), (2, 4),
    (3, 8), (4, 8), (6, 8), (8, 8), (12, 8), (16, 8),
)  # fmt: skip


class KVPool:
    """Keys and values of many sequences in one buffer, [layers, slots, kv_heads, capacity, head_dim]: one slot
    per sequence, the lowest free slot first, so the sequences open at once sit side by side and a batched
    forward attends over a range of slots as one matrix (`LeanLlama._attend_slots`). The capacity is every
    slot's and doubles when a sequence needs more; the slots double when all are taken."""

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, slots: int = 1,
        capacity: int = 256,
    ) -> None:  # fmt: skip
        self.keys = torch.zeros(layers, slots, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self._free = list(range(slots))  # a heap: the lowest free slot first
        # Released slots wait here for the next acquire: a cache may be collected on any thread, also by a
        # garbage collection that runs inside a growth holding the lock, so releasing takes no lock.
        self._returned: collections.deque[int] = collections.deque()
        self._lock = threading.Lock()

    @property
    def slots(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def acquire(self) -> int:
        with self._lock:
            while self._returned:
                heapq.heappush(self._free, self._returned.popleft())
            if not self._free:
                taken = self.slots
                self._grow(taken * 2, self.capacity)
                self._free = list(range(taken, taken * 2))
            return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        self._returned.append(slot)  # atomic

    def has_free_slot(self) -> bool:
        """Whether `acquire` would find a slot without growing the pool."""
        return bool(self._free or self._returned)

    def reserve(self, length: int) -> None:
        capacity = self.capacity
        if length <= capacity:
            return
        while capacity < length:
            capacity *= 2
        with self._lock:
            self._grow(self.slots, capacity)

    @torch.inference_mode()  # buffers grown inside a forward are inference tensors
    def _grow(self, slots: int, capacity: int) -> None:
        for name in ("keys", "values"):
            old = getattr(self, name)
            layers, taken, kv_heads, length, head_dim = old.shape
            grown = old.new_zeros(layers, slots, kv_heads, capacity, head_dim)
            grown[:, :taken, :, :length] = old
            setattr(self, name, grown)


class LeanCache:
    """Keys and values of one sequence: a slot of a `KVPool` (its own pool of one slot unless given one);
    `keys` and `values` are [layers, kv_heads, capacity, head_dim] views of it. The slot returns to the
    pool when the cache is collected."""

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device, capacity: int = 256,
        pool: KVPool | None = None,
    ) -> None:  # fmt: skip
        self.pool = pool or KVPool(layers, kv_heads, head_dim, dtype, device, 1, capacity)
        self.slot = self.pool.acquire()
        weakref.finalize(self, self.pool.release, self.slot)
        self.length = 0

    @property
    def keys(self) -> torch.Tensor:
        return self.pool.keys[:, self.slot]

    @property
    def values(self) -> torch.Tensor:
        return self.pool.values[:, self.slot]

    def reserve(self, length: int) -> None:
        self.pool.reserve(length)

    def crop(self, max_length: int) -> None:
        """`DynamicCache.crop` semantics: keep the first `max_length` positions; a negative value drops that many."""
        if max_length < 0:
            max_length = self.length + max_length
        self.length = max(0, min(self.length, max_length))

    @torch.inference_mode()  # buffers grown inside a forward are inference tensors
    def keep_path(self, start: int, positions: list[int]) -> None:
        """Keep the first `start` positions, then the given positions moved to follow them in order: a verified
        token tree keeps only its accepted path."""
        if positions != list(range(start, start + len(positions))):
            source = torch.tensor(positions, device=self.pool.keys.device)
            for name in ("keys", "values"):
                buffer = getattr(self, name)
                buffer[:, :, start : start + len(positions)] = buffer[:, :, source]
        self.length = start + len(positions)

    @torch.inference_mode()
    def copy_prefix(self, source: LeanCache, length: int) -> None:
        """Hold the first `length` positions of `source` (another sequence sharing those tokens) and nothing after."""
        if length > source.length:
            raise ValueError(f"the source holds {source.length} positions, not {length}")
        self.reserve(length)
        for name in ("keys", "values"):
            getattr(self, name)[:, :, :length] = getattr(source, name)[:, :, :length]
        self.length = length

    def get_seq_length(self) -> int:
        return self.length


def narrow_product(inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """inputs × weightᵀ computed as (weight × inputsᵀ)ᵀ: the BLAS streams the weight once, as for one row.
    One row goes as two, the second zero: a matrix-vector product can stream the weight at half the speed
    of a two-column one (MKL on an AMD EPYC: 2x; RESULTS 37)."""
    if inputs.shape[0] == 1:
        padded = torch.cat([inputs, inputs.new_zeros(inputs.shape)])
        return torch.mm(weight, padded.T).T[:1].contiguous()
    return torch.mm(weight, inputs.T).T.contiguous()


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` reordered once into oneDNN's blocked layout for `packed_product` (what torch's own CPU compiler
    does for linear layers), or None where this build or CPU has no such kernel (a GPU, no bfloat16 support)."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_BATCH_HINT)
    except (RuntimeError, AttributeError):  # a build without the operator, or one that refuses this weight
        return None


def mkl_pack(weight: torch.Tensor, size: int) -> torch.Tensor | None:
    """`weight` packed once by MKL for products of exactly `size` tokens (`mkl_product`), or None where this
    build, device or dtype has no such kernel (MKL packs float32 only)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not torch.backends.mkl.is_available():
        return None
    try:
        return torch.ops.mkl._mkl_reorder_linear_weight(weight.detach(), size)
    except (RuntimeError, AttributeError):  # a build without the operator
        return None


def mkl_product(inputs: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    """inputs × weightᵀ through MKL's packed matrix product; `inputs` must have the `size` rows the weight was
    packed for (other sizes run `F.linear` on `weight`)."""
    return torch.ops.mkl._mkl_linear(inputs, packed, weight, None, size)


def packed_product(inputs: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """inputs × weightᵀ through oneDNN with the weight packed by `pack_weight`: on the AMD EPYC bfloat16 runs
    its dot-product instructions (1-16 tokens 0.5-0.7x the time of the best unpacked product) and float32 its
    blocked kernel (8-24 tokens 0.6x; RESULTS 46)."""
    return torch.ops.mkldnn._linear_pointwise(inputs, packed, None, "none", [], "")


def narrow_table(ratios: dict[int, float]) -> list[bool]:
    """Per token count up to the largest measured size, whether weight × inputsᵀ won (ratio < 1) at the
    smallest measured size at or above it; one token only where one token was measured."""
    sizes = sorted(ratios)
    table = [False] * (sizes[-1] + 1 if sizes else 0)
    if 1 in ratios:
        table[1] = ratios[1] < 1.0
    for count in range(2, len(table)):
        table[count] = ratios[next(size for size in sizes if size >= count)] < 1.0
    return table


def padded_sizes(seconds: dict[int, float]) -> list[int]:
    """Per product size up to the largest measured one, the measured size at or above it that multiplied
    fastest: the product runs there, its extra rows zero. MKL's kernels on the AMD EPYC took longer for 9-15
    tokens than for 16 (11: 1.3x), so a forward of rows of mixed widths paid for its odd total (RESULTS 38)."""
    sizes = sorted(seconds)
    table = list(range(sizes[-1] + 1 if sizes else 0))
    for count in range(1, len(table)):
        table[count] = min((size for size in sizes if size >= count), key=lambda size: (seconds[size], size))
    return table


def lean_supported(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        return False
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_type", "default") in STATIC_ROPE_TYPES


@dataclass
class Feed:
    """One row of a batched forward: tokens fed after those in `cache`, and which logits to return.

    `mask` [len(input_ids), cache.length + len(input_ids)] (True: may attend) replaces the causal chain
    and `positions` the consecutive positions: a token tree sets both (each node sees its ancestors, at
    its depth). None: a chain."""

    cache: LeanCache
    input_ids: list[int]
    logits: Literal["all", "last", "none"] = "all"
    positions: list[int] | None = None
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class _Row:
    """A row inside one pass: its cache, its slice of the flat token axis, where it starts, its mask."""

    cache: LeanCache
    first: int
    last: int
    start: int
    mask: torch.Tensor | None


@dataclass(frozen=True)
class _SlotBatch:
    """A forward's rows as pool slots low..low + span - 1, each slot's queries padded to `width`, keys read up
    to position `end`; per flat token its slot, its position and its row in the padded queries; `blocked`
    [span * kv_heads, groups * width, end] where a query may not look (None: nowhere)."""

    low: int
    span: int
    width: int
    end: int
    slot_of: torch.Tensor
    position_of: torch.Tensor
    query_of: torch.Tensor
    blocked: torch.Tensor | None
    tokens: torch.Tensor | None = None  # the flat tokens of the rows in the slot range (None: every row's)
    alone: list[int] = field(default_factory=list)  # the rows attended row by row
    alone_tokens: torch.Tensor | None = None  # their flat tokens, in row order


def slot_width(counts: list[int], rows: int) -> int:
    """The query width of a slot batch: the rows wider than it go row by row. A width costs every slot in
    the range that many queries; a row alone costs a fixed number of small operations, about as much as
    ROW_IN_SLOT_QUERIES queries (measured on the AMD machine, RESULTS 35)."""
    return min(
        sorted(set(counts)), key=lambda width: rows * width + ROW_IN_SLOT_QUERIES * sum(c > width for c in counts)
    )


class LeanLlama:
    """`new_cache()` and `forward(ids, cache)` with the same meaning as `LoadedModel`'s, for a LlamaForCausalLM;
    `forward_batch` for many sequences at once."""

    def __init__(
        self, model: PreTrainedModel, max_positions: int, vocabulary: list[int] | None = None, pooled: bool = False
    ) -> None:
        """`vocabulary`: compute the output layer over these token ids only (a draft's frequent tokens); every
        other token's logit is -inf, so it is never proposed and has no probability. `pooled`: caches are
        slots of one `KVPool`, so a batched forward attends over them as one matrix (a target's many sessions)."""
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
        self.scale = self.head_dim**-0.5  # Llama attention's scaling
        weight = self.lm_head.weight
        self.dtype, self.device = weight.dtype, weight.device
        # narrow[m]: whether m tokens multiply weight × inputsᵀ (`_times`); calibrate_narrow measures it.
        self.narrow = [1 < m <= NARROW_ROWS for m in range(NARROW_ROWS + 1)] if self.device.type == "cpu" else []
        self.padded_to: list[int] = []  # padded_to[m]: the size m tokens multiply at (`padded_sizes`); none: m
        # packed[m]: whether m tokens multiply a weight packed for oneDNN (`pack_products`); none: not packed.
        self.packed: list[bool] = []
        self.packed_weights: dict[int, torch.Tensor] = {}  # id(weight) → its packed copy
        self.packed_ratios: dict[int, float] = {}  # per size measured, packed ÷ the best unpacked product
        self.mkl_packs: dict[int, dict[int, torch.Tensor]] = {}  # size → id(weight) → its MKL pack (`mkl_pack`)
        self.mkl_ratios: dict[int, float] = {}  # per size packed through MKL, its time ÷ the best other way's
        # Half precision on a CPU (RESULTS 28). float32 keeps the folded products (as fast there, and the path the
        # exactness tests hold to generate()); a GPU keeps them too, unmeasured with the fused kernel.
        self.fused = self.half_vectors = self.dtype != torch.float32 and self.device.type == "cpu"
        with torch.inference_mode():
            positions = torch.arange(max_positions, device=self.device)[None]
            cos, sin = self.decoder.rotary_emb(weight[:1], positions)
        self.cos, self.sin = cos[0], sin[0]  # [positions, head_dim]
        self.max_positions = max_positions
        self.vocab_size = int(weight.shape[0])
        self.vocabulary: torch.Tensor | None = None
        self.head_weight = weight
        if vocabulary is not None:
            if not vocabulary or min(vocabulary) < 0 or max(vocabulary) >= self.vocab_size:
                raise ValueError(f"a vocabulary subset must be ids in [0, {self.vocab_size})")
            self.vocabulary = torch.tensor(sorted(set(vocabulary)), device=self.device)
            self.head_weight = weight.detach()[self.vocabulary].contiguous()
        self.pool = (
            KVPool(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device, POOL_SLOTS)
            if pooled
            else None
        )

    def new_cache(self) -> LeanCache:
        return LeanCache(len(self.layers), self.kv_heads, self.head_dim, self.dtype, self.device, pool=self.pool)

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
        mask = None if count == 1 else self._causal(count, end, start)
        hidden = self._layers(hidden, cos, sin, [_Row(cache, 0, count, start, mask)])
        cache.length = end
        if last_only:
            hidden = hidden[-1:]
        return self._head(self.decoder.norm(hidden))

    @torch.inference_mode()
    def forward_batch(self, feeds: list[Feed]) -> list[torch.Tensor | None]:
        """Feed every row after its cached tokens in one pass; per row the logits it asked for, as float32."""
        counts = [len(feed.input_ids) for feed in feeds]
        starts = [feed.cache.length for feed in feeds]
        bounds: list[tuple[int, int]] = []  # each row's slice of the flat token axis
        offset = 0
        for count in counts:
            bounds.append((offset, offset + count))
            offset += count
        positions: list[int] = []
        masks: list[torch.Tensor | None] = []
        for feed, count, start in zip(feeds, counts, starts, strict=True):
            end = start + count
            if count == 0:
                raise ValueError("a row of a batched forward needs at least one token")
            if end > self.max_positions:
                raise ValueError(f"context of {end} tokens exceeds the model's {self.max_positions} positions")
            feed.cache.reserve(end)
            positions.extend(feed.positions if feed.positions is not None else range(start, end))
            if feed.mask is not None:
                if tuple(feed.mask.shape) != (count, end):
                    raise ValueError(f"a row's mask must be [{count}, {end}], got {list(feed.mask.shape)}")
                masks.append(feed.mask.to(self.device))
            else:  # one query sees every cached key; a block of queries is causal within itself
                masks.append(None if count == 1 else self._causal(count, end, start))
        ids = torch.tensor([token for feed in feeds for token in feed.input_ids], device=self.device)
        at = torch.tensor(positions, device=self.device)
        cos, sin = self.cos[at], self.sin[at]
        hidden = self.decoder.embed_tokens(ids)
        rows = [
            _Row(feed.cache, first, last, start, mask)
            for feed, (first, last), start, mask in zip(feeds, bounds, starts, masks, strict=True)
        ]
        hidden = self._layers(hidden, cos, sin, rows, self._slot_batch(feeds, counts, starts))
        for feed, count, start in zip(feeds, counts, starts, strict=True):
            feed.cache.length = start + count
        return self._logits(feeds, bounds, hidden)

    def _slot_batch(self, feeds: list[Feed], counts: list[int], starts: list[int]) -> _SlotBatch | None:
        """The rows to attend as one range of pool slots, when that applies: chains (a tree's mask and positions
        are per row) of caches in this model's pool, in float32 (half precision keeps the fused per-row kernel),
        their slots at most half empty (a slot in the range but not in the forward is computed and dropped).
        Every slot's queries are padded to one width, so a row much wider than the others (a long draft
        beside one-token rows) goes row by row instead when that costs less (`slot_width`)."""
        pool = self.pool
        if pool is None or self.fused or len(feeds) < 2:
            return None
        if any(feed.cache.pool is not pool or feed.mask is not None or feed.positions is not None for feed in feeds):
            return None
        width = slot_width(counts, len(feeds))
        together = [i for i, count in enumerate(counts) if count <= width]
        slots = [feeds[i].cache.slot for i in together]
        if len(together) < 2 or len(set(slots)) < len(slots):
            return None
        low, span = min(slots), max(slots) - min(slots) + 1
        if span > 2 * len(slots):
            return None
        end = max(starts[i] + counts[i] for i in together)
        offsets = [0]
        for count in counts:
            offsets.append(offsets[-1] + count)
        slot_of: list[int] = []
        position_of: list[int] = []
        query_of: list[int] = []
        tokens: list[int] = []
        limit = torch.full((span, width), end, dtype=torch.long)  # a slot outside the forward: nothing blocked
        for i, slot in zip(together, slots, strict=True):
            start, count = starts[i], counts[i]
            slot_of.extend([slot] * count)
            position_of.extend(range(start, start + count))
            query_of.extend((slot - low) * width + j for j in range(count))
            tokens.extend(range(offsets[i], offsets[i] + count))
            limit[slot - low] = torch.arange(start, start + width)  # query j sees positions up to start + j
        blocked = torch.arange(end)[None, None, :] > limit[:, :, None]  # [span, width, end]
        groups = self.heads // self.kv_heads
        folded = blocked[:, None, None].expand(span, self.kv_heads, groups, width, end)
        alone = [i for i, count in enumerate(counts) if count > width]
        alone_tokens = [t for i in alone for t in range(offsets[i], offsets[i + 1])]
        device = self.device
        return _SlotBatch(
            low, span, width, end,
            torch.tensor(slot_of, device=device), torch.tensor(position_of, device=device),
            torch.tensor(query_of, device=device),
            folded.reshape(span * self.kv_heads, groups * width, end).to(device) if bool(blocked.any()) else None,
            torch.tensor(tokens, device=device) if alone else None,
            alone,
            torch.tensor(alone_tokens, device=device) if alone else None,
        )  # fmt: skip

    def _layers(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rows: list[_Row],
        slots: _SlotBatch | None = None,
    ) -> torch.Tensor:
        """The decoder layers over the flat tokens [total, hidden]: projections and MLP for all rows at once,
        attention against each row's cache (whose new keys and values it writes): per row, or over a range of
        pool slots at once (`slots`)."""
        total = hidden.shape[0]
        # The products run at the calibrated size (`padded_to`): pad the tokens once here, not every product.
        size = self.padded_to[total] if total < len(self.padded_to) else total
        if size > total:
            hidden = torch.cat([hidden, hidden.new_zeros(size - total, hidden.shape[1])])
        groups = self.heads // self.kv_heads
        # A row's mask, tiled for the query heads that share a key head; True where a query may not look.
        blocked = [None if row.mask is None or self.fused else ~row.mask.repeat(groups, 1) for row in rows]
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            projections = (attention.q_proj, attention.k_proj, attention.v_proj)
            query, key, value = (
                self._linear(linear, normed)[:total].view(total, -1, self.head_dim).transpose(0, 1)
                for linear in projections
            )
            query, key = apply_rotary_pos_emb(query, key, cos, sin, unsqueeze_dim=0)  # tables [total, head_dim]
            query = query * self.scale
            if slots is None:
                joined = self._attend_rows(index, query, key, value, rows, blocked)
            elif slots.tokens is None:
                joined = self._attend_slots(index, query, key, value, slots)
            else:  # some rows in the slot range, the wide ones row by row
                assert slots.alone_tokens is not None
                picked = slots.tokens
                together = self._attend_slots(index, query[:, picked], key[:, picked], value[:, picked], slots)
                joined = together.new_empty(total, together.shape[1]).index_copy_(0, picked, together)
                alone = [rows[i] for i in slots.alone]
                apart = self._attend_rows(index, query, key, value, alone, [blocked[i] for i in slots.alone])
                joined.index_copy_(0, slots.alone_tokens, apart)
            if size > total:
                joined = torch.cat([joined, joined.new_zeros(size - total, joined.shape[1])])
            hidden = hidden + self._linear(attention.o_proj, joined)
            normed = layer.post_attention_layernorm(hidden)
            mlp = layer.mlp
            gated = mlp.act_fn(self._linear(mlp.gate_proj, normed)) * self._linear(mlp.up_proj, normed)
            hidden = hidden + self._linear(mlp.down_proj, gated)
        return hidden[:total]

    def _attend_rows(
        self, index: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rows: list[_Row],
        blocked: list[torch.Tensor | None],
    ) -> torch.Tensor:  # fmt: skip
        """Layer `index`'s attention row by row, [total, heads * head_dim]."""
        attended = []
        for row, block in zip(rows, blocked, strict=True):
            count = row.last - row.first
            end = row.start + count
            keys, values = row.cache.pool.keys[index, row.cache.slot], row.cache.pool.values[index, row.cache.slot]
            keys[:, row.start : end] = key[:, row.first : row.last]
            values[:, row.start : end] = value[:, row.first : row.last]
            attended.append(
                self._attend_fused(query[:, row.first : row.last], keys[:, :end], values[:, :end], row.mask)
                if self.fused
                else self._attend(query[:, row.first : row.last], keys[:, :end], values[:, :end], block)
            )
        joined = attended[0] if len(attended) == 1 else torch.cat(attended, dim=1)
        return joined.transpose(0, 1).reshape(joined.shape[1], -1)

    def _attend_slots(
        self, index: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch: _SlotBatch
    ) -> torch.Tensor:
        """Layer `index`'s attention over a range of pool slots as one matrix, [total, heads * head_dim]. Each
        slot's queries are padded to the widest row's; a padded query, a position past a row's own and a slot
        outside the forward are computed and dropped (a row of 8 sessions' single tokens costs two `bmm`s
        instead of sixteen)."""
        assert self.pool is not None
        span, width, end, heads, kv_heads, dim = (
            batch.span,
            batch.width,
            batch.end,
            self.heads,
            self.kv_heads,
            self.head_dim,
        )
        groups = heads // kv_heads
        keys, values = self.pool.keys[index], self.pool.values[index]  # [slots, kv_heads, capacity, head_dim]
        keys[batch.slot_of, :, batch.position_of] = key.transpose(0, 1)
        values[batch.slot_of, :, batch.position_of] = value.transpose(0, 1)
        padded = query.new_zeros(span * width, heads, dim).index_copy_(0, batch.query_of, query.transpose(0, 1))
        # Query head h reads key head h // groups (grouped-query attention): fold each key head's queries.
        folded = padded.view(span, width, kv_heads, groups, dim).permute(0, 2, 3, 1, 4).reshape(-1, groups * width, dim)
        window = slice(batch.low, batch.low + span)
        span_keys = keys[window, :, :end].reshape(span * kv_heads, end, dim)  # a view: no copy
        span_values = values[window, :, :end].reshape(span * kv_heads, end, dim)
        scores = torch.bmm(folded, span_keys.transpose(1, 2))
        if batch.blocked is not None:
            scores.masked_fill_(batch.blocked, -torch.inf)
        attended = torch.bmm(scores.softmax(-1), span_values)  # [span * kv_heads, groups * width, dim]
        attended = attended.view(span, kv_heads, groups, width, dim).permute(0, 3, 1, 2, 4).reshape(span * width, -1)
        return attended.index_select(0, batch.query_of)

    def _linear(self, linear: Any, inputs: torch.Tensor) -> torch.Tensor:
        return self._times(inputs, linear.weight, linear.bias)

    def _times(self, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """`F.linear(inputs, weight, bias)`, but the sizes `narrow` marks go as weight × inputsᵀ: the BLAS then
        streams the weight once instead of repacking it for a matrix product; the sizes `packed` marks
        through oneDNN with the weight packed once; and the sizes `mkl_packs` holds through MKL's packs for
        them. Which sizes gain depends on the CPU (an AMD EPYC: 2-6 tokens
        narrow; an Intel Xeon: 8-48, while 2-4 lost), hence `calibrate_narrow`, which also finds the sizes that
        multiply faster padded with zero rows (`padded_to`)."""
        rows = inputs.shape[0]
        size = self.padded_to[rows] if rows < len(self.padded_to) else rows
        packed = bool(self.packed) and self.packed[min(size, len(self.packed) - 1)]  # beyond: the largest's way
        if rows == 1 and self.half_vectors and not packed:
            out = torch.mv(weight, inputs[0])[None]  # half-precision one-row products: ~2x F.linear's speed
            return out if bias is None else out + bias
        by_mkl = self.mkl_packs.get(size)
        narrow = by_mkl is None and not packed and size < len(self.narrow) and self.narrow[size]
        if size == rows and by_mkl is None and not narrow and not packed:
            return F.linear(inputs, weight, bias)
        if size > rows:  # zero rows: each output row depends on its own input row only
            inputs = torch.cat([inputs, inputs.new_zeros(size - rows, inputs.shape[1])])
        if by_mkl is not None:
            out = mkl_product(inputs, by_mkl[id(weight)], weight, size)
        elif packed:
            out = packed_product(inputs, self.packed_weights[id(weight)])
        else:
            out = narrow_product(inputs, weight) if narrow else F.linear(inputs, weight)
        if size > rows:
            out = out[:rows]
        return out if bias is None else out + bias

    def _weights(self) -> list[torch.Tensor]:
        """Every weight `_times` multiplies: the layers' projections and MLP, and the output layer's."""
        return [
            linear.weight
            for layer in self.layers
            for linear in (
                layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj,
            )
        ] + [self.head_weight]  # fmt: skip

    def pack_products(self, table: list[bool]) -> bool:
        """Multiply the sizes `table` marks through packed weights (packing every weight once, a copy), or none
        of them (dropping the copies) where `table` marks nothing. False where this CPU cannot pack."""
        if not any(table):
            self.packed, self.packed_weights = [], {}
            return True
        if not self._pack_weights():
            return False
        self.packed = list(table)
        return True

    def pack_mkl(self, sizes: list[int]) -> bool:
        """Multiply through MKL packs made for `sizes`, every count up to the largest padded to the next of them
        (what `calibrate_narrow` may choose); False, changing nothing, where this CPU or dtype cannot."""
        packs: dict[int, dict[int, torch.Tensor]] = {}
        for size in sorted(sizes):
            by_weight = self._mkl_packs_for(size)
            if by_weight is None:
                return False
            packs[size] = by_weight
        self.mkl_packs = packs
        self.padded_to = [0] + [min(size for size in packs if size >= count) for count in range(1, max(packs) + 1)]
        return True

    def _mkl_packs_for(self, size: int) -> dict[int, torch.Tensor] | None:
        """id(weight) → its MKL pack for `size` tokens, for every weight `_times` multiplies; None where one
        cannot be made."""
        packs = {}
        for weight in self._weights():
            copy = mkl_pack(weight, size)
            if copy is None:
                return None
            packs[id(weight)] = copy
        return packs

    def _calibrate_mkl(
        self, sizes: list[int], inputs: dict[int, dict[int, torch.Tensor]], repeats: int, fastest: dict[int, float]
    ) -> None:
        """Per size, pack every weight through MKL and time it (the fastest of `repeats`) against `fastest`, the
        best of the other ways, which it then updates; the packs that win are kept (`mkl_packs`). One size's
        packs at a time: each is a copy of the weights."""
        self.mkl_packs, self.mkl_ratios = {}, {}
        weights = self._weights()
        for size in sizes:
            packs = self._mkl_packs_for(size)
            if packs is None:
                return
            seconds = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                for weight in weights[:-1]:  # the layers', as the other ways were timed
                    mkl_product(inputs[size][weight.shape[1]], packs[id(weight)], weight, size)
                seconds = min(seconds, time.perf_counter() - start)
            self.mkl_ratios[size] = seconds / fastest[size]
            if seconds < fastest[size]:
                self.mkl_packs[size], fastest[size] = packs, seconds

    def _pack_weights(self) -> bool:
        """A packed copy of every weight `_times` multiplies, unless already made; False where one cannot be."""
        if not self.packed_weights:
            packed = {}
            for weight in self._weights():
                copy = pack_weight(weight)
                if copy is None:
                    return False
                packed[id(weight)] = copy
            self.packed_weights = packed
        return True

    def _attend(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, blocked: torch.Tensor | None
    ) -> torch.Tensor:
        """One row's attention, [heads, count, head_dim] (query already scaled). The query heads that share a
        key head are folded into one matrix against it, so keys and values are never copied per query head
        (grouped-query attention through `scaled_dot_product_attention` copies them; folding made an 8-row
        forward 0.82x the time), and a row costs a handful of small operations."""
        count = query.shape[1]
        folded = query.reshape(self.kv_heads, -1, self.head_dim)  # [kv_heads, groups * count, head_dim]
        scores = torch.bmm(folded, keys.transpose(1, 2))
        if blocked is not None:
            scores.masked_fill_(blocked, -torch.inf)
        return torch.bmm(scores.softmax(-1), values).view(self.heads, count, self.head_dim)

    def _attend_fused(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One row's attention through `scaled_dot_product_attention` (`mask` True where a query may look): in
        half precision its fused kernel, which accumulates in float32, is 2-3x faster on a CPU than the
        folded products above (bfloat16 matrix products of these small shapes have no fast kernel)."""
        attended = F.scaled_dot_product_attention(
            query[None], keys[None], values[None], attn_mask=mask, scale=1.0, enable_gqa=True
        )
        return attended[0]

    def _head(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits [n, V] as float32, over the vocabulary subset when there is one."""
        if self.vocabulary is None:
            return self._linear(self.lm_head, normed).float()
        logits = torch.full((normed.shape[0], self.vocab_size), -torch.inf, device=self.device)
        logits[:, self.vocabulary] = self._times(normed, self.head_weight).float()
        return logits

    def _causal(self, count: int, end: int, start: int) -> torch.Tensor:
        return torch.ones(count, end, dtype=torch.bool, device=self.device).tril(start)

    def _logits(
        self, feeds: list[Feed], bounds: list[tuple[int, int]], hidden: torch.Tensor
    ) -> list[torch.Tensor | None]:
        """The output layer only on the positions asked for: it is the largest matrix of a small model."""
        wanted: list[int] = []
        for feed, (first, last) in zip(feeds, bounds, strict=True):
            if feed.logits == "all":
                wanted.extend(range(first, last))
            elif feed.logits == "last":
                wanted.append(last - 1)
        if not wanted:
            return [None] * len(feeds)
        picked = hidden if len(wanted) == hidden.shape[0] else hidden[torch.tensor(wanted, device=self.device)]
        logits = self._head(self.decoder.norm(picked))
        out: list[torch.Tensor | None] = []
        row = 0
        for feed, (first, last) in zip(feeds, bounds, strict=True):
            size = {"all": last - first, "last": 1, "none": 0}[feed.logits]
            out.append(logits[row : row + size] if size else None)
            row += size
        return out

    @torch.inference_mode()
    def calibrate_narrow(
        self, sizes: tuple[int, ...] = NARROW_SIZES, repeats: int = 3, pack: bool = True
    ) -> dict[int, float]:
        """On a CPU, choose per product size which way multiplies: weight × inputsᵀ where it beat `F.linear`, and
        packed weights (`pack_products`) where they beat both (the fastest of `repeats`, interleaved), timed
        over every layer's weights so that they stream from memory as in a forward (one matrix alone stays in
        cache and times differently); in float32, MKL's packed product at MKL_PACK_SIZES, kept where it beats
        all three (`_calibrate_mkl`); and per size, the measured size at or above it to pad to
        (`padded_sizes`). Beyond the largest, `F.linear` unpadded, or packed if packed won there.
        `pack` False: no packed copies. Returns each size's time ratio, narrow ÷ linear; a GPU keeps `F.linear`
        and measures nothing."""
        if self.device.type != "cpu":
            return {}
        weights = self._weights()[:-1]  # the layers'; the output layer runs once per forward, on few rows
        can_pack = pack and self._pack_weights()
        generator = torch.Generator().manual_seed(0)  # leaves the global random state alone
        widths = {weight.shape[1] for weight in weights}
        inputs = {
            size: {width: torch.randn(size, width, generator=generator).to(self.dtype) for width in widths}
            for size in sorted(sizes)
        }
        linear = dict.fromkeys(inputs, float("inf"))
        narrow = dict.fromkeys(inputs, float("inf"))
        packed = dict.fromkeys(inputs, float("inf"))
        for _ in range(repeats):  # every size once per pass: a burst of noise spoils one pass, not one size
            for size, by_width in inputs.items():
                start = time.perf_counter()
                for weight in weights:
                    if size == 1 and self.half_vectors:
                        torch.mv(weight, by_width[weight.shape[1]][0])  # what one row runs unpacked
                    else:
                        F.linear(by_width[weight.shape[1]], weight)
                middle = time.perf_counter()
                for weight in weights:
                    narrow_product(by_width[weight.shape[1]], weight)
                linear[size] = min(linear[size], middle - start)
                narrow[size] = min(narrow[size], time.perf_counter() - middle)
                if can_pack:
                    start = time.perf_counter()
                    for weight in weights:
                        packed_product(by_width[weight.shape[1]], self.packed_weights[id(weight)])
                    packed[size] = min(packed[size], time.perf_counter() - start)
        ratios: dict[int, float] = {}
        fastest: dict[int, float] = {}
        for size in inputs:
            ratios[size], fastest[size] = narrow[size] / linear[size], min(narrow[size], linear[size], packed[size])
        self._calibrate_mkl(
            [size for size in MKL_PACK_SIZES if size in inputs] if pack else [], inputs, repeats, fastest
        )
        self.narrow = narrow_table(ratios)
        self.padded_to = padded_sizes(fastest)
        # An MKL pack is kept only where some count runs at its size.
        self.mkl_packs = {size: packs for size, packs in self.mkl_packs.items() if size in self.padded_to}
        self.pack_products(
            [
                count > 0 and packed[self.padded_to[count]] == fastest[self.padded_to[count]]
                for count in range(len(self.padded_to))
            ]
        )
        self.packed_ratios = (
            {size: packed[size] / min(narrow[size], linear[size]) for size in inputs} if can_pack else {}
        )
        return ratios

    @torch.inference_mode()
    def measure_batches(
        self, shapes: tuple[tuple[int, int], ...] = BATCH_SHAPES, context: int = 256, repeats: int = 3
    ) -> dict[tuple[int, int], float]:
        """Seconds of a batched forward of `rows` rows of `row_tokens` tokens after `context` cached tokens each
        (the fastest of `repeats`), keyed (rows, tokens in the forward): the cost of forwards beyond the
        one-row curve, for the reward's model of a shared forward."""
        longest = max(row_tokens for _, row_tokens in shapes)
        context = max(1, min(context, self.max_positions - longest - 1))
        caches = [self.new_cache() for _ in range(max(rows for rows, _ in shapes))]
        for cache in caches:
            self.forward([0] * context, cache)
        out: dict[tuple[int, int], float] = {}
        for rows, row_tokens in shapes:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.forward_batch([Feed(cache, [0] * row_tokens, "all") for cache in caches[:rows]])
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
                for cache in caches[:rows]:
                    cache.crop(-row_tokens)
            out[(rows, rows * row_tokens)] = min(times)
        return out
