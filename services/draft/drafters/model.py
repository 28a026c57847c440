"""A small causal LM as drafter, with its own per-session KV cache.

Greedy requests get a deterministic (argmax) draft that stops early where the drafter is unsure (its
top probability below `min_confidence`, as transformers' assistant_confidence_threshold does): γ is
then a cap, and a verified position the target would likely reject is not paid for. Sampled requests
draw from q after the request's temperature/top-k/top-p, and ship q so the target can apply the
speculative-sampling rule.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from banditspec.lean_decoder import LeanCache, LeanLlama, lean_supported
from banditspec.models import LoadedModel, load_causal_lm
from banditspec.sampling import probabilities
from banditspec.tokens import common_prefix_length
from services.draft.drafters.base import DraftSession, Proposal


@dataclass
class _ModelState:
    cache: DynamicCache | LeanCache
    generator: torch.Generator | None
    cached_ids: list[int] = field(default_factory=list)  # tokens whose keys/values are in the cache


DEFAULT_MIN_CONFIDENCE = 0.4


class ModelDrafter:
    kind = "model"

    def __init__(self, name: str, loaded: LoadedModel, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> None:
        self.name = name
        self.loaded = loaded
        self.min_confidence = min_confidence
        self.vocab_fingerprint = loaded.fingerprint
        self.source = loaded.path + (f" (greedy drafts stop below confidence {min_confidence})" if min_confidence > 0 else "")
        self.device = str(loaded.device)
        # Llama drafts run the lean forward (the same logits, a fraction of the per-token overhead).
        self.decoder: LeanLlama | LoadedModel = (
            LeanLlama(loaded.model, loaded.max_context) if lean_supported(loaded.model) else loaded
        )

    @classmethod
    def load(
        cls, name: str, path: str, device: str | None = None, dtype: str | None = None,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    ) -> ModelDrafter:
        return cls(name, load_causal_lm(path, device=device, dtype=dtype), min_confidence)

    def _state(self, session: DraftSession) -> _ModelState:
        state = session.state.get(self.name)
        if state is None:
            generator = None
            if not session.sampling.greedy:
                # Seeded from the request and the drafter's name: reproducible, independent of other drafters.
                generator = torch.Generator(device=self.loaded.device)
                generator.manual_seed((session.seed ^ zlib.crc32(self.name.encode())) & 0xFFFF_FFFF_FFFF_FFFF)
            state = session.state[self.name] = _ModelState(self.decoder.new_cache(), generator)
        return state

    @torch.inference_mode()
    def propose(self, session: DraftSession, num_tokens: int) -> Proposal:
        context = session.context
        room = self.loaded.max_context - len(context)
        num_tokens = min(num_tokens, room)
        if num_tokens <= 0:
            return Proposal([])
        state = self._state(session)
        # Keep the cached prefix the context still agrees with; feed at least one token for logits.
        keep = min(common_prefix_length(state.cached_ids, context), len(context) - 1)
        if len(state.cached_ids) > keep:
            state.cache.crop(-(len(state.cached_ids) - keep))
        del state.cached_ids[keep:]
        feed = context[keep:]
        sampling = session.sampling
        draft: list[int] = []
        rows: list[torch.Tensor] = []
        for step in range(num_tokens):
            logits = self.decoder.forward(feed, state.cache, last_only=True)[-1]
            state.cached_ids.extend(feed)
            if sampling.greedy:
                token = int(torch.argmax(logits))
                if step > 0 and self.min_confidence > 0 and torch.softmax(logits.float(), -1)[token] < self.min_confidence:
                    break  # the first token is always drafted: the arm was chosen to draft
            else:
                q = probabilities(logits, sampling)
                token = int(torch.multinomial(q, 1, generator=state.generator))
                rows.append(q)
            draft.append(token)
            feed = [token]
        return Proposal(draft, torch.stack(rows) if rows else None)

    def close(self) -> None:
        del self.decoder, self.loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
