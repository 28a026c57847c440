"""A small causal LM as drafter, with its own per-session KV cache.

Greedy requests get a deterministic (argmax) draft that stops early where the drafter is unsure (its
top probability below `min_confidence`, as transformers' assistant_confidence_threshold does): γ is
then a cap, and a verified position the target would likely reject is not paid for. Sampled requests
draw from q after the request's temperature/top-k/top-p, and ship q so the target can apply the
speculative-sampling rule.

Lookahead (greedy only): while the target verifies a draft, `draft_ahead` guesses the round's outcome
(every token accepted, then the drafter's own next token as the target's bonus) and drafts the next
round from that guess. When the guess holds, the next proposal is read off without a forward; when it
does not, the usual prefix crop discards it. It runs on an otherwise idle worker, and stops between
forwards as soon as any proposal is waiting (`preempted`).

The model kind (spec, options, builder) is declared in model.py, which imports this module only to
build a drafter: torch and transformers take seconds to import.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from banditspec.lean_llama import Feed, LeanCache, LeanLlama, lean_supported
from banditspec.models import LoadedModel, load_causal_lm
from banditspec.overlays import read_vocabulary
from banditspec.sampling import probabilities
from banditspec.tokens import common_prefix_length
from services.draft.drafters.base import DraftSession, Proposal

DEFAULT_MIN_CONFIDENCE = 0.4
DEFAULT_LOOKAHEAD = 0  # tokens drafted ahead during verification; the spec turns it on per drafter


class _Decoder(Protocol):
    """What drafting needs of a model: the lean decoder and `LoadedModel` each keep their own cache type."""

    def new_cache(self) -> Any: ...

    def forward(self, input_ids: list[int], cache: Any, last_only: bool = False) -> torch.Tensor: ...


@dataclass
class _ModelState:
    cache: DynamicCache | LeanCache
    generator: torch.Generator | None
    cached_ids: list[int] = field(default_factory=list)  # tokens whose keys/values are in the cache
    # After a greedy proposal: its context + draft, and the logits after them when already computed.
    drafted_context: list[int] | None = None
    next_logits: torch.Tensor | None = None
    last_num_tokens: int = 0  # the γ asked last: most likely the next round's too
    # Lookahead: the greedy draft (`ahead`) for the context `cached_ids[:ahead_from]`; the cache holds
    # that context and every token of `ahead` but the last. `ahead_complete`: it stopped where a proposal
    # would (an unsure token), so it needs no continuation.
    ahead: list[int] = field(default_factory=list)
    ahead_from: int = 0
    ahead_complete: bool = False


@dataclass
class _Drafting:
    """One session's proposal while a batch drafts: what it has drafted and what it feeds next."""

    session: DraftSession
    state: _ModelState | None  # None: nothing to draft (no room left in the model's context)
    num_tokens: int
    draft: list[int] = field(default_factory=list)
    probs: list[torch.Tensor] = field(default_factory=list)  # q of each sampled token
    feed: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # after the last token fed
    done: bool = False

    @property
    def cache(self) -> Any:
        assert self.state is not None, "a row with nothing to draft feeds nothing"
        return self.state.cache


class ModelDrafter:
    kind = "model"  # the kind model.py declares (it imports this module, not the other way round)
    model_free = False
    runs_on_worker = True  # off the event loop; the sessions waiting for it propose as one batch
    learns_from_outputs = False
    proposes_trees = False

    def __init__(
        self,
        name: str,
        loaded: LoadedModel,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        lookahead: int = DEFAULT_LOOKAHEAD,
    ) -> None:
        self.name = name
        self.loaded = loaded
        self.min_confidence = min_confidence
        self.lookahead = lookahead
        self.looks_ahead = lookahead > 0
        self.lookahead_hits = 0  # proposals answered (at least in part) from a lookahead
        self.proposals = 0
        self.vocab_fingerprint = loaded.fingerprint
        self.vocab_size: int | None = loaded.vocab_size
        notes = [f"greedy drafts stop below confidence {min_confidence}"] if min_confidence > 0 else []
        notes += [f"drafts up to {lookahead} tokens ahead during verification"] if lookahead > 0 else []
        self.device = str(loaded.device)
        # Llama drafts run the lean forward (the same logits, a fraction of the per-token overhead), over
        # the draft's frequent tokens when it ships a vocabulary subset (any other path: the full vocabulary).
        self.decoder: _Decoder = loaded
        if lean_supported(loaded.model):
            vocabulary = read_vocabulary(Path(loaded.path))
            self.decoder = LeanLlama(loaded.model, loaded.max_context, vocabulary)
            self.decoder.calibrate_narrow()  # which product sizes stream the weights once, on this CPU
            if vocabulary is not None:
                notes.append(f"proposes from {len(set(vocabulary))} frequent tokens")
        self.source = loaded.path + (f" ({'; '.join(notes)})" if notes else "")

    @classmethod
    def load(
        cls,
        name: str,
        path: str,
        device: str | None = None,
        dtype: str | None = None,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        lookahead: int = DEFAULT_LOOKAHEAD,
    ) -> ModelDrafter:
        return cls(name, load_causal_lm(path, device=device, dtype=dtype), min_confidence, lookahead)

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

    def _unsure(self, logits: torch.Tensor, token: int) -> bool:
        return self.min_confidence > 0 and float(torch.softmax(logits.float(), -1)[token]) < self.min_confidence

    def _trim(self, state: _ModelState, keep: int) -> None:
        """Keep the first `keep` cached tokens."""
        if len(state.cached_ids) > keep:
            state.cache.crop(-(len(state.cached_ids) - keep))
            del state.cached_ids[keep:]

    def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
        """A chain: tree_tokens is ignored (this drafter does not branch)."""
        return self.propose_batch([(session, num_tokens)])[0]

    @torch.inference_mode()
    def propose_batch(self, requests: list[tuple[DraftSession, int]]) -> list[Proposal]:
        """Proposals for several sessions (each at most once): every drafting step feeds the rows still
        drafting as one batched forward, so N sessions cost about one forward per token, not N."""
        if len({id(session) for session, _ in requests}) != len(requests):
            raise ValueError("a batch of proposals names a session twice")
        rows = [self._begin(session, num_tokens) for session, num_tokens in requests]
        drafting = [row for row in rows if not row.done]
        while drafting:
            if len(drafting) == 1 or not isinstance(self.decoder, LeanLlama):
                logits = [self.decoder.forward(row.feed, row.cache, last_only=True) for row in drafting]
            else:
                feeds = [Feed(row.cache, row.feed, "last") for row in drafting]
                logits = [out for out in self.decoder.forward_batch(feeds) if out is not None]
            for row, row_logits in zip(drafting, logits, strict=True):
                self._advance(row, row_logits[-1])
            drafting = [row for row in drafting if not row.done]
        return [self._finish(row) for row in rows]

    def _begin(self, session: DraftSession, num_tokens: int) -> _Drafting:
        context = session.context
        num_tokens = min(num_tokens, self.loaded.max_context - len(context))
        held = session.state.get(self.name)
        if held is not None:  # nothing to look ahead from until this proposal drafts
            held.drafted_context = held.next_logits = None
        if num_tokens <= 0:
            return _Drafting(session, None, 0, done=True)
        state = self._state(session)
        self.proposals += 1
        state.last_num_tokens = num_tokens
        ahead, state.ahead = state.ahead, []
        if ahead and state.ahead_from == len(context) and state.cached_ids[: len(context)] == context:
            # The lookahead guessed this context: its draft is this proposal's, as far as it goes.
            self.lookahead_hits += 1
            draft = ahead[:num_tokens]
            self._trim(state, len(context) + len(draft) - 1)
            done = len(draft) == num_tokens or state.ahead_complete
            return _Drafting(session, state, num_tokens, draft, feed=[draft[-1]], done=done)
        # Keep the cached prefix the context still agrees with; feed at least one token for logits.
        self._trim(state, min(common_prefix_length(state.cached_ids, context), len(context) - 1))
        return _Drafting(session, state, num_tokens, feed=context[len(state.cached_ids) :])

    def _advance(self, row: _Drafting, logits: torch.Tensor) -> None:
        """The logits after the row's feed: draft one more token, or stop."""
        state = row.state
        assert state is not None
        state.cached_ids.extend(row.feed)
        row.logits = logits
        sampling = row.session.sampling
        if sampling.greedy:
            token = int(torch.argmax(logits))
            if row.draft and self._unsure(logits, token):
                row.done = True  # the first token is always drafted: the arm was chosen to draft
                return
        else:
            q = probabilities(logits, sampling)
            token = int(torch.multinomial(q, 1, generator=state.generator))
            row.probs.append(q)
        row.draft.append(token)
        row.feed = [token]
        row.done = len(row.draft) >= row.num_tokens

    def _finish(self, row: _Drafting) -> Proposal:
        state = row.state
        if state is not None and row.session.sampling.greedy:
            state.drafted_context = row.session.context + row.draft
            # Logits after the whole draft, when drafting computed them (it stopped at an unsure token).
            fed_all = len(state.cached_ids) == len(state.drafted_context)
            state.next_logits = row.logits if fed_all else None
        return Proposal(row.draft, torch.stack(row.probs) if row.probs else None)

    @torch.inference_mode()
    def draft_ahead(self, session: DraftSession, preempted: Callable[[], bool]) -> None:
        """Draft the next round for the guess that this round's draft is accepted whole, the target's bonus
        token being the drafter's own next one. Returns early when `preempted()` turns true."""
        state = session.state.get(self.name)
        if self.lookahead <= 0 or state is None or state.drafted_context is None or preempted():
            return
        drafted, logits = state.drafted_context, state.next_logits
        state.drafted_context = state.next_logits = None
        # As many tokens as the last round asked for: more would be wasted when the next round asks the same,
        # and would more often still be running (holding the GIL and the worker) when that round arrives.
        limit = min(self.lookahead, state.last_num_tokens)
        if len(drafted) + 1 + limit > self.loaded.max_context:
            return
        if logits is None:  # the draft's last token is not fed yet
            unfed = drafted[len(state.cached_ids) :]
            logits = self.decoder.forward(unfed, state.cache, last_only=True)[-1]
            state.cached_ids.extend(unfed)
        feed = [int(torch.argmax(logits))]  # the guessed bonus token
        ahead: list[int] = []
        complete = False
        while len(ahead) < limit and not preempted():
            logits = self.decoder.forward(feed, state.cache, last_only=True)[-1]
            state.cached_ids.extend(feed)
            if not ahead:
                state.ahead_from = len(state.cached_ids)
            token = int(torch.argmax(logits))
            if ahead and self._unsure(logits, token):
                complete = True
                break
            ahead.append(token)
            feed = [token]
        state.ahead, state.ahead_complete = ahead, complete

    def finish(self, session: DraftSession) -> None:
        """Learns nothing across requests."""

    def close(self) -> None:
        del self.decoder, self.loaded
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
