"""The draft service's model thread: model drafters' proposals, batched across sessions, and lookahead.

Model forwards run on one worker thread, off the event loop. Proposals for the same drafter that wait
while the worker is busy run together as one `propose_batch` (one batched forward per drafted token), the
way the target batches verifications: no wait timer, so a lone proposal starts at once. Lookahead
(drafting the next round while the target verifies) runs on the same thread and gives way, between
forwards, whenever a proposal is waiting. No gRPC here.

One thread for every forward, as in the target: GNU OpenMP gives each thread that runs a parallel region a
team of its own, and while the teams outnumber the cores none of them spins between regions (an idle
second team beside a forward made it 2.0-2.2x slower, RESULTS 38). Models load on a thread that exits after.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from services.draft.drafters.base import Drafter, DraftSession, Proposal
from services.draft.metrics import BATCH_SIZE

log = structlog.get_logger()

T = TypeVar("T")


@dataclass
class _Waiting:
    drafter: Drafter
    session: DraftSession
    num_tokens: int
    future: Future  # resolves to (proposal, seconds of the batch it ran in)


class ModelWorker:
    def __init__(self, forget_if_retired: Callable[[Drafter, DraftSession], None]) -> None:
        # After a proposal: a drafter swapped out while its proposal waited must leave no state behind.
        self._forget_if_retired = forget_if_retired
        # The only thread of the service to run model forwards, lookahead included (see the module doc).
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="draft-model")
        self._lock = threading.Lock()
        self._pending = 0  # jobs and proposals submitted, not yet finished or cancelled
        self._waiting: dict[int, list[_Waiting]] = {}  # per drafter (by id: a swap keeps the name), in order
        self.batches = self.batched_proposals = 0

    def work_waiting(self) -> bool:
        return self._pending > 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the model thread, after the work already queued there."""
        future = self._count(self._worker.submit(fn, *args))
        return await asyncio.wrap_future(future)

    async def propose(self, drafter: Drafter, session: DraftSession, num_tokens: int) -> tuple[Proposal, float]:
        """The proposal and the seconds of the batch it ran in. A cancelled caller's proposal that has not
        started is dropped from its batch."""
        future: Future = self._count(Future())
        with self._lock:
            queue = self._waiting.setdefault(id(drafter), [])
            queue.append(_Waiting(drafter, session, num_tokens, future))
            start_batch = len(queue) == 1  # else a batch job for this drafter is already queued
        if start_batch:
            self._worker.submit(self._run_batch, id(drafter))
        return await asyncio.wrap_future(future)

    def draft_ahead(self, drafter: Drafter, session: DraftSession) -> None:
        self._worker.submit(self._look_ahead, drafter, session).add_done_callback(_log_failure)

    def shutdown(self) -> None:
        with self._lock:
            self._pending += 1  # stops a running lookahead at its next forward
        self._worker.shutdown(wait=True)

    def _count(self, future: Future) -> Future:
        with self._lock:
            self._pending += 1
        # Registered before the awaiting caller's own callback: the count is down before the caller
        # resumes. Runs on completion and on cancellation alike.
        future.add_done_callback(self._ended)
        return future

    def _ended(self, _future: Future) -> None:
        with self._lock:
            self._pending -= 1

    def _run_batch(self, key: int) -> None:
        with self._lock:
            waiting = self._waiting.pop(key, [])
        batch: list[_Waiting] = []
        later: list[_Waiting] = []
        sessions: set[int] = set()
        for entry in waiting:
            if id(entry.session) in sessions:  # one proposal per session per batch
                later.append(entry)
            elif entry.future.set_running_or_notify_cancel():  # False: its caller was cancelled
                sessions.add(id(entry.session))
                batch.append(entry)
        if later:
            with self._lock:
                queue = self._waiting.setdefault(key, [])
                queue[:0] = later
                if len(queue) == len(later):
                    self._worker.submit(self._run_batch, key)
        if not batch:
            return
        drafter = batch[0].drafter
        start = time.perf_counter()
        try:
            proposals = drafter.propose_batch([(entry.session, entry.num_tokens) for entry in batch])
        except Exception as error:
            for entry in batch:
                entry.future.set_exception(error)
            return
        finally:
            for entry in batch:
                self._forget_if_retired(entry.drafter, entry.session)
        seconds = time.perf_counter() - start
        self.batches += 1
        self.batched_proposals += len(batch)
        BATCH_SIZE.labels(drafter.name).observe(len(batch))
        for entry, proposal in zip(batch, proposals, strict=True):
            entry.future.set_result((proposal, seconds))

    def _look_ahead(self, drafter: Drafter, session: DraftSession) -> None:
        if self.work_waiting():
            return
        drafter.draft_ahead(session, self.work_waiting)


def _log_failure(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("lookahead failed", error=repr(future.exception()))
