"""The target engine: prefill, verify and release sessions on one loaded model. No gRPC here."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from banditspec.errors import InvalidArgument, OutOfRange, OutOfSync
from banditspec.models import LoadedModel
from banditspec.sampling import SamplingParams, probabilities
from banditspec.verify_lengths import padded_length
from services.target.sessions import SessionStore, TargetSession
from services.target.verifier import Verdict, verify_greedy, verify_sampled


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    context_length: int
    compute_seconds: float


class TargetEngine:
    def __init__(self, loaded: LoadedModel, max_sessions: int = 64, verify_lengths: list[int] | None = None) -> None:
        self.loaded = loaded
        self.sessions = SessionStore(max_sessions)
        self.verify_lengths = verify_lengths or []  # see banditspec.verify_lengths

    def _check_ids(self, ids: list[int], what: str) -> None:
        vocab = self.loaded.vocab_size
        if any(not 0 <= token < vocab for token in ids):
            raise InvalidArgument(f"{what} holds a token id outside [0, {vocab})")

    def open(self, session_id: str, context_ids: list[int], sampling: SamplingParams, seed: int) -> float:
        """Prefill a new session (replacing one of the same id); returns compute seconds."""
        if not session_id:
            raise InvalidArgument("session_id is required")
        if not context_ids:
            raise InvalidArgument("context_ids must not be empty")
        if len(context_ids) >= self.loaded.max_context:
            raise OutOfRange(
                f"context of {len(context_ids)} tokens leaves no room in the target's context of {self.loaded.max_context}"
            )
        self._check_ids(context_ids, "context_ids")
        start = time.perf_counter()
        cache = self.loaded.new_cache()
        if len(context_ids) > 1:
            self.loaded.forward(context_ids[:-1], cache)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.loaded.device)
            generator.manual_seed(seed)
        self.sessions.put(session_id, TargetSession(list(context_ids), cache, sampling, generator))
        return self._elapsed(start)

    def verify(
        self,
        session_id: str,
        context_length: int,
        draft_ids: list[int],
        draft_probs: torch.Tensor | None,
        reopen: tuple[list[int], SamplingParams, int] | None = None,
    ) -> VerifyResult:
        """reopen: (context, sampling, seed) to open the session with first if it is not held."""
        if reopen is not None and session_id not in self.sessions:
            self.open(session_id, *reopen)
        session = self.sessions.get(session_id)
        if context_length != len(session.context):
            raise OutOfSync(
                f"session {session_id!r} holds {len(session.context)} tokens, caller expected {context_length}"
            )
        gamma = len(draft_ids)
        if len(session.context) + gamma + 1 > self.loaded.max_context:
            raise OutOfRange(f"context plus draft would exceed the target's context of {self.loaded.max_context}")
        self._check_ids(draft_ids, "draft_ids")
        if draft_probs is not None and draft_probs.shape[0] != gamma:
            raise InvalidArgument(f"{draft_probs.shape[0]} draft distributions for {gamma} draft tokens")
        if draft_probs is not None and session.sampling.greedy:
            draft_probs = None  # greedy verification needs no q
        start = time.perf_counter()
        feed = [session.context[-1], *draft_ids]
        length = min(padded_length(self.verify_lengths, len(feed)), self.loaded.max_context - len(session.context) + 1)
        padding = max(0, length - len(feed))
        # Causal attention: the padding changes no logit before it, and is cropped from the cache below.
        logits = self.loaded.forward(feed + [feed[-1]] * padding, session.cache)[: len(feed)]
        if session.sampling.greedy:
            verdict = verify_greedy(logits, draft_ids)
        else:
            target_probs = probabilities(logits, session.sampling)
            q = None if draft_probs is None else draft_probs.to(target_probs.device)
            assert session.generator is not None  # open() gives every sampling session its generator
            verdict = verify_sampled(target_probs, draft_ids, q, session.generator)
        dropped = gamma - verdict.accepted + padding
        if dropped:
            session.cache.crop(-dropped)
        session.context.extend(verdict.tokens)
        return VerifyResult(verdict, len(session.context), self._elapsed(start))

    def release(self, session_id: str) -> bool:
        return self.sessions.pop(session_id)

    def _elapsed(self, start: float) -> float:
        if self.loaded.device.type == "cuda":
            torch.cuda.synchronize(self.loaded.device)
        return time.perf_counter() - start
