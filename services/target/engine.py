"""The target engine: sessions on one loaded model, advanced together one forward at a time. No gRPC here.

Work arrives as jobs: `OpenJob` prefills a new session, `VerifyJob` verifies a draft (reopening a lost
session first when the caller sent its context). `step(jobs)` runs every job that is ready as the rows of
one forward: a verify row feeds the session's last token and the draft, a prefill row a chunk of the
prompt. Rows of a Llama target go through `LeanLlama.forward_batch` (the shared projections and MLP are
most of the arithmetic); other architectures run their rows one after another. Verification and cache
crop are per row, exactly as for a lone session. A draft may be a token tree (`draft_parents`, Llama
targets only): its row carries the tree's mask and positions, and only the accepted path stays cached.
A new session's prompt starts from whatever prefix of it the engine already holds (`prefixes.py`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from banditspec.errors import InvalidArgument, OutOfRange, OutOfSync, ServiceError
from banditspec.lean_llama import Feed, LeanCache, LeanLlama, lean_supported
from banditspec.models import LoadedModel, measure_forwards
from banditspec.sampling import SamplingParams, probabilities
from banditspec.token_tree import accept_greedy, accept_sampled, check_parents, feed_mask, feed_positions, is_chain
from banditspec.verify_lengths import padded_length
from services.target.prefixes import DEFAULT_RETAINED, PrefixReuse
from services.target.sessions import SessionStore, TargetSession
from services.target.verifier import Verdict, verify_greedy, verify_sampled

DEFAULT_MAX_BATCH_TOKENS = 256  # bounds one forward, so a round waits at most that long for a batch
DEFAULT_PREFILL_CHUNK = 64  # prompt tokens per forward while other sessions are waiting


@dataclass(frozen=True)
class BatchInfo:
    """The forward a job's last row ran in."""

    rows: int
    tokens: int  # padding included
    forward_seconds: float
    prefill_rows: int = 0  # of `rows`, those that prefilled a prompt's chunk
    prefill_tokens: int = 0


@dataclass(frozen=True)
class VerifyResult:
    verdict: Verdict
    context_length: int
    compute_seconds: float  # the forwards this job took part in
    batch: BatchInfo


@dataclass
class Job:
    """Work for one session. The engine fills `result` or `error`; `compute_seconds` adds up the
    forwards the job took part in."""

    session_id: str
    session: TargetSession | None = None
    prefill: list[int] = field(default_factory=list)  # prompt tokens still to feed before the job's own
    compute_seconds: float = 0.0
    batch: BatchInfo | None = None
    result: object = None
    error: Exception | None = None
    done: bool = False

    @property
    def started(self) -> bool:
        """A step has taken it up: its session is open (or found)."""
        return self.session is not None

    def fail(self, error: Exception) -> None:
        self.error, self.done = error, True

    def finish(self, result: object) -> None:
        self.result, self.done = result, True


@dataclass
class OpenJob(Job):
    context_ids: list[int] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0


@dataclass
class VerifyJob(Job):
    context_length: int = 0
    draft_ids: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    draft_parents: list[int] | None = None  # a token tree (see banditspec.token_tree); None: a chain
    reopen: tuple[list[int], SamplingParams, int] | None = None  # (context, sampling, seed) if not held
    _checked: bool = False


@dataclass
class _Row:
    job: Job
    tokens: list[int]
    verifies: bool  # a verify feed (else a prefill chunk)
    padding: int = 0


def _tree(job: Job) -> list[int] | None:
    return job.draft_parents if isinstance(job, VerifyJob) else None


class TargetEngine:
    def __init__(
        self,
        loaded: LoadedModel,
        max_sessions: int = 64,
        verify_lengths: list[int] | None = None,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        lean: bool = True,
        prefix_reuse: bool = True,
        retained_prefixes: int = DEFAULT_RETAINED,
    ) -> None:
        """`prefix_reuse`: a new prompt starts from the keys and values of a held sequence it starts like
        (`services.target.prefixes`); `retained_prefixes`: released sessions' caches kept for that."""
        if max_batch_tokens < 1 or prefill_chunk < 1:
            raise ValueError("max_batch_tokens and prefill_chunk must be >= 1")
        self.loaded = loaded
        self.sessions = SessionStore(max_sessions)
        self.verify_lengths = verify_lengths or []  # see banditspec.verify_lengths
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.decoder = (
            LeanLlama(loaded.model, loaded.max_context, pooled=True) if lean and lean_supported(loaded.model) else None
        )
        self.prefixes = (
            PrefixReuse(self.decoder, retained_prefixes) if self.decoder is not None and prefix_reuse else None
        )

    def measure_forwards(self) -> list[float]:
        """Seconds of a forward of 1..16 tokens on the path this engine runs (the lean decoder for a Llama
        target, whose curve differs from the generic forward's): what padding and the cost model use."""
        if self.decoder is None:
            return self.loaded.measure_forwards()
        return measure_forwards(
            self.decoder.forward, self.decoder.new_cache, self.loaded.device, self.loaded.max_context
        )

    def warm_up(self) -> None:
        """One forward on a scratch cache, on the thread that will run the forwards: its OpenMP team and
        kernels' buffers are made now rather than in the first request's round."""
        if self.decoder is not None:
            self.decoder.forward([0] * 4, self.decoder.new_cache())
        else:
            self.loaded.forward([0] * 4, self.loaded.new_cache(), last_only=True)

    @property
    def batches_rows(self) -> bool:
        """Whether rows of several sessions share one forward (Llama targets)."""
        return self.decoder is not None

    # one forward ------------------------------------------------------------------------------
    def step(self, jobs: list[Job]) -> BatchInfo | None:
        """Advance the ready jobs by one forward within the token budget; jobs that finish (or fail)
        get `done`. Jobs left out (no budget, or their session already has a row) wait for a later step.
        Returns the forward that ran, if one did."""
        rows: list[_Row] = []
        used = 0
        busy: set[str] = set()
        for job in jobs:
            if job.done or job.session_id in busy:
                continue
            try:
                row = self._plan(job, used, waiting=len(jobs) > 1)
            except (ServiceError, ValueError) as error:
                job.fail(error)
                continue
            if row is None:
                continue
            rows.append(row)
            busy.add(job.session_id)
            used += len(row.tokens)
        if not rows:
            return None
        if len(rows) == 1 and rows[0].verifies:
            self._pad(rows[0])  # a lone verify, chain or tree, runs at the cheapest measured length (CPU kernels)
        start = time.perf_counter()
        try:
            outputs = self._forward(rows)
        except Exception as error:  # a forward that fails fails its rows, not the service
            for row in rows:
                row.job.fail(error)
            return None
        seconds = self._elapsed(start)
        prefills = [len(row.tokens) for row in rows if not row.verifies]
        batch = BatchInfo(len(rows), sum(len(row.tokens) for row in rows), seconds, len(prefills), sum(prefills))
        for row, logits in zip(rows, outputs, strict=True):
            row.job.compute_seconds += seconds
            row.job.batch = batch
            try:
                self._settle(row, logits)
            except (ServiceError, ValueError) as error:
                row.job.fail(error)
        return batch

    def _plan(self, job: Job, used: int, waiting: bool) -> _Row | None:
        """This job's row in the coming forward, or None (finished without one, or no budget left)."""
        if job.session is None:
            self._start(job)
            if job.done:
                return None
        budget = self.max_batch_tokens - used
        if job.prefill:
            limit = min(budget, self.prefill_chunk) if waiting else budget
            return _Row(job, job.prefill[:limit], verifies=False) if limit > 0 else None
        assert isinstance(job, VerifyJob)
        feed = self._verify_feed(job)
        if used and len(feed) > budget:
            return None  # the next forward takes it whole
        return _Row(job, feed, verifies=True)

    def _start(self, job: Job) -> None:
        if isinstance(job, OpenJob):
            self._open(job, job.context_ids, job.sampling, job.seed)
            if not job.prefill:
                job.finish(job.compute_seconds)
            return
        assert isinstance(job, VerifyJob)
        if job.reopen is not None and not self._holds(job.session_id, job.context_length):
            # Not held (restart, eviction), or held at another length (a verdict the caller never got):
            # the caller's full context is the truth.
            self._open(job, *job.reopen)
            return
        job.session = self.sessions.get(job.session_id)

    def _holds(self, session_id: str, context_length: int) -> bool:
        return session_id in self.sessions and len(self.sessions.get(session_id).context) == context_length

    def _open(self, job: Job, context_ids: list[int], sampling: SamplingParams, seed: int) -> None:
        """A new session (replacing one of the same id) whose prompt the next forwards prefill."""
        if not job.session_id:
            raise InvalidArgument("session_id is required")
        if not context_ids:
            raise InvalidArgument("context_ids must not be empty")
        if len(context_ids) >= self.loaded.max_context:
            raise OutOfRange(
                f"context of {len(context_ids)} tokens leaves no room in the target's context of "
                f"{self.loaded.max_context}"
            )
        self._check_ids(context_ids, "context_ids")
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=self.loaded.device)
            generator.manual_seed(seed)
        self.sessions.released.check(job.session_id)  # before a cache is made for it
        # The cache holds the context but its last token, which is fed with the first draft.
        prompt = list(context_ids[:-1])
        cache = self._new_cache(prompt)
        session = TargetSession(list(context_ids), cache, sampling, generator)
        self.sessions.put(job.session_id, session)
        job.session = session
        job.prefill = prompt[cache.get_seq_length() :]

    def _new_cache(self, prompt: list[int]) -> DynamicCache | LeanCache:
        """A cache for a new session, holding already whatever prefix of its prompt another held."""
        if self.prefixes is not None:
            live = ((held.context, held.cache) for held in self.sessions.held() if isinstance(held.cache, LeanCache))
            return self.prefixes.cache_for(prompt, live)
        return self.decoder.new_cache() if self.decoder is not None else self.loaded.new_cache()

    def _verify_feed(self, job: VerifyJob) -> list[int]:
        session = job.session
        assert session is not None
        if not job._checked:
            self._check_verify(job, session)
            job._checked = True
        return [session.context[-1], *job.draft_ids]

    def _check_verify(self, job: VerifyJob, session: TargetSession) -> None:
        if job.context_length != len(session.context):
            raise OutOfSync(
                f"session {job.session_id!r} holds {len(session.context)} tokens, caller expected {job.context_length}"
            )
        gamma = len(job.draft_ids)
        if len(session.context) + gamma + 1 > self.loaded.max_context:
            raise OutOfRange(f"context plus draft would exceed the target's context of {self.loaded.max_context}")
        self._check_ids(job.draft_ids, "draft_ids")
        if job.draft_parents is not None:
            self._check_tree(job)
        if job.draft_probs is not None and job.draft_probs.shape[0] != gamma:
            raise InvalidArgument(f"{job.draft_probs.shape[0]} draft distributions for {gamma} draft tokens")
        if job.draft_probs is not None and session.sampling.greedy:
            job.draft_probs = None  # greedy verification needs no q

    def _check_tree(self, job: VerifyJob) -> None:
        parents = job.draft_parents
        assert parents is not None
        check_parents(parents, len(job.draft_ids))
        if is_chain(parents):
            job.draft_parents = None  # the chain path, as if no parents were sent
            return
        if job.draft_probs is not None:
            raise InvalidArgument(
                "draft_probs must be empty for a token tree: its tokens are verified as deterministic candidates"
            )
        if self.decoder is None:
            raise InvalidArgument("token trees need a Llama-architecture target")

    def _pad(self, row: _Row) -> None:
        session = row.job.session
        assert session is not None
        length = min(
            padded_length(self.verify_lengths, len(row.tokens)), self.loaded.max_context - len(session.context) + 1
        )
        row.padding = max(0, length - len(row.tokens))
        # The padding comes after every real token and none sees it (causal attention; in a tree, padding
        # nodes hang off the root), so it changes no logit before it, and is dropped from the cache after.
        row.tokens = row.tokens + [row.tokens[-1]] * row.padding

    def _forward(self, rows: list[_Row]) -> list[torch.Tensor | None]:
        if self.decoder is not None:
            return self.decoder.forward_batch([self._feed(row) for row in rows])
        outputs: list[torch.Tensor | None] = []
        for row in rows:
            session = row.job.session
            assert session is not None
            logits = self.loaded.forward(row.tokens, session.cache, last_only=not row.verifies)  # type: ignore[arg-type]
            outputs.append(logits if row.verifies else None)
        return outputs

    def _feed(self, row: _Row) -> Feed:
        session = row.job.session
        assert session is not None and isinstance(session.cache, LeanCache)
        if not row.verifies:
            return Feed(session.cache, row.tokens, "none")
        parents = _tree(row.job)
        if parents is None:
            return Feed(session.cache, row.tokens, "all")
        parents = parents + [-1] * row.padding
        start = session.cache.length
        mask = feed_mask(parents, start, self.loaded.device)
        return Feed(session.cache, row.tokens, "all", positions=feed_positions(parents, start), mask=mask)

    def _settle(self, row: _Row, logits: torch.Tensor | None) -> None:
        job = row.job
        if not row.verifies:
            del job.prefill[: len(row.tokens)]
            if not job.prefill and isinstance(job, OpenJob):
                job.finish(job.compute_seconds)
            return
        assert isinstance(job, VerifyJob) and job.session is not None and logits is not None
        session = job.session
        logits = logits[: len(row.tokens) - row.padding]
        if job.draft_parents is not None:
            verdict = self._settle_tree(row, session, logits)
        else:
            if session.sampling.greedy:
                verdict = verify_greedy(logits, job.draft_ids)
            else:
                target_probs = probabilities(logits, session.sampling)
                q = None if job.draft_probs is None else job.draft_probs.to(target_probs.device)
                assert session.generator is not None  # every sampling session gets its generator at open
                verdict = verify_sampled(target_probs, job.draft_ids, q, session.generator)
            dropped = len(job.draft_ids) - verdict.accepted + row.padding
            if dropped:
                session.cache.crop(-dropped)
        session.context.extend(verdict.tokens)
        assert job.batch is not None
        job.finish(VerifyResult(verdict, len(session.context), job.compute_seconds, job.batch))

    def _settle_tree(self, row: _Row, session: TargetSession, logits: torch.Tensor) -> Verdict:
        """The tree's verdict; the cache keeps the root and the accepted path right after the context."""
        job = row.job
        assert isinstance(job, VerifyJob)
        parents = job.draft_parents
        assert parents is not None and isinstance(session.cache, LeanCache)
        if session.sampling.greedy:
            tree = accept_greedy(logits, job.draft_ids, parents)
        else:
            assert session.generator is not None
            tree = accept_sampled(probabilities(logits, session.sampling), job.draft_ids, parents, session.generator)
        root = session.cache.length - len(job.draft_ids) - 1 - row.padding
        session.cache.keep_path(root, [root, *(root + 1 + node for node in tree.path)])
        return Verdict(tree.accepted, tree.tokens)

    # the same work for one caller at a time (tests, tools) --------------------------------------
    def run(self, job: Job) -> Job:
        while not job.done:
            self.step([job])
        if job.error is not None:
            raise job.error
        return job

    def open(self, session_id: str, context_ids: list[int], sampling: SamplingParams, seed: int) -> float:
        """Prefill a new session; returns compute seconds."""
        job = self.run(OpenJob(session_id, context_ids=context_ids, sampling=sampling, seed=seed))
        return job.compute_seconds

    def verify(
        self,
        session_id: str,
        context_length: int,
        draft_ids: list[int],
        draft_probs: torch.Tensor | None,
        reopen: tuple[list[int], SamplingParams, int] | None = None,
        draft_parents: list[int] | None = None,
    ) -> VerifyResult:
        job = self.run(VerifyJob(session_id, context_length=context_length, draft_ids=draft_ids,
                                 draft_probs=draft_probs, draft_parents=draft_parents, reopen=reopen))  # fmt: skip
        assert isinstance(job.result, VerifyResult)
        return job.result

    def release(self, session_id: str) -> bool:
        session = self.sessions.pop(session_id)
        if session is not None and self.prefixes is not None and isinstance(session.cache, LeanCache):
            self.prefixes.retain(session.context, session.cache)
        return session is not None

    def _check_ids(self, ids: list[int], what: str) -> None:
        vocab = self.loaded.vocab_size
        if any(not 0 <= token < vocab for token in ids):
            raise InvalidArgument(f"{what} holds a token id outside [0, {vocab})")

    def _elapsed(self, start: float) -> float:
        if self.loaded.device.type == "cuda":
            torch.cuda.synchronize(self.loaded.device)
        return time.perf_counter() - start
