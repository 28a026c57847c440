"""Continuous batching for the target: one worker thread runs the jobs that are ready as one forward.

Callers submit jobs from any thread and wait on a future. The worker takes every job waiting when a
forward ends and runs them together (within the engine's token budget); jobs submitted meanwhile join the
next forward. There is no wait timer for a lone request: a job that finds the worker idle runs at once.
Only sessions whose last verify just finished are waited for, briefly: their next round is on its way
through the controller and a draft service, and a forward that starts without them leaves them to the
next one, so the rows split into groups that alternate (measured: 3.6 of 8 sessions per forward). Other engine work (release) runs between forwards on the same thread,
so the engine is only ever touched by one thread.

That thread is also the only one of the process to run torch: the target loads and measures its model
there (`call`, before `attach`). Each thread that runs an OpenMP region gets its own team of OpenMP
threads, and once the teams together outnumber the cores GNU OpenMP stops spinning between regions: on
a 2-core AMD EPYC a forward on a second thread took twice the time it took on the first (RESULTS 37).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import structlog

from banditspec.errors import SessionLost
from services.target.engine import BatchInfo, Job, TargetEngine
from services.target.threads import ThreadPlan

log = structlog.get_logger()

# How long a forward may wait for sessions on their way back: a share of the last forward, with a cap.
GATHER_SHARE = 0.25
MAX_GATHER_SECONDS = 0.03


class Scheduler:
    def __init__(
        self,
        engine: TargetEngine | None = None,
        on_forward: Callable[[BatchInfo], None] | None = None,
        threads: ThreadPlan | None = None,
    ) -> None:
        self._engine = engine  # None until `attach`: only `call`s run before
        self.threads = threads  # None: the process's torch threads for every forward
        self.on_forward = on_forward  # called after every forward that ran (metrics)
        self._jobs: list[tuple[Job, Future]] = []  # submission order: the budget serves the oldest first
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...], Future]] = []
        self._wake = threading.Condition()
        self._stopping = False
        self.stats = StepStats()
        self._returning: set[str] = set()  # sessions whose verify just finished: their next round is coming
        self._last_step_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="target-scheduler", daemon=True)
        self._thread.start()

    @property
    def engine(self) -> TargetEngine:
        if self._engine is None:
            raise RuntimeError("the scheduler has no engine yet")
        return self._engine

    def attach(self, engine: TargetEngine, threads: ThreadPlan | None = None) -> None:
        """The engine its jobs run on, built (by a `call`) on its thread."""
        self._engine, self.threads = engine, threads

    def submit(self, job: Job) -> Future:
        """The future resolves to the finished job (its result), or to its error."""
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            self._jobs.append((job, future))
            self._wake.notify()
        return future

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the worker, between forwards."""
        future: Future = Future()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the scheduler is stopped")
            self._calls.append((fn, args, future))
            self._wake.notify()
        return future

    def forget(self, session_id: str) -> None:
        """The session ended: no round of it is coming back, and its jobs not yet started are dropped (run
        later, an open would bring the released session back)."""
        with self._wake:
            self._returning.discard(session_id)
            dropped = [(job, future) for job, future in self._jobs if job.session_id == session_id and not job.started]
            gone = {id(job) for job, _ in dropped}  # by identity: jobs hold tensors, == would compare them
            self._jobs = [(job, future) for job, future in self._jobs if id(job) not in gone]
        for _, future in dropped:
            _resolve(future, error=SessionLost(f"session {session_id!r} was released"))

    def pending(self) -> int:
        with self._wake:
            return len(self._jobs)

    def close(self) -> None:
        """Finish the work already submitted, then stop the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._jobs and not self._calls and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._jobs and not self._calls:
                    return
                calls, self._calls = self._calls, []
                # A caller that gave up (cancelled its call) cancels the job's future: a job not yet
                # started is dropped; a started one finishes (its session stays consistent) unanswered.
                self._jobs = [(job, future) for job, future in self._jobs if job.started or not future.cancelled()]
                if self._jobs and not calls:
                    self._gather()
                jobs = list(self._jobs)
            for fn, args, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except Exception as error:
                        future.set_exception(error)
            if not jobs:
                continue
            if self.threads is not None:
                self.threads.apply(len(self.engine.sessions))
            start = time.perf_counter()
            try:
                batch = self.engine.step([job for job, _ in jobs])
                if batch is not None and self.on_forward is not None:
                    self.on_forward(batch)
            except Exception as error:  # a bug in a step must not stop the worker: fail that step's jobs
                log.exception("target step failed")
                for job, _ in jobs:
                    if not job.done:
                        job.fail(error)
            self._last_step_seconds = time.perf_counter() - start
            self.stats.record(jobs=len(jobs), seconds=self._last_step_seconds)
            finished = [(job, future) for job, future in jobs if job.done]
            if finished:
                with self._wake:
                    done = {id(job) for job, _ in finished}
                    self._jobs = [(job, future) for job, future in self._jobs if id(job) not in done]
                    for job, _ in finished:
                        if job.error is None:
                            self._returning.add(job.session_id)
                        else:
                            self._returning.discard(job.session_id)
                for job, future in finished:
                    _resolve(future, job, job.error)

    def _gather(self) -> None:
        """With the lock held: wait, briefly, for the sessions on their way back (see the module doc)."""
        deadline = time.perf_counter() + min(MAX_GATHER_SECONDS, GATHER_SHARE * self._last_step_seconds)
        while not self._stopping:
            queued = {job.session_id for job, _ in self._jobs}
            missing = self._returning - queued
            left = deadline - time.perf_counter()
            if not missing or left <= 0:
                self._returning -= missing  # late ones are not waited for again until their next verify
                return
            self._wake.wait(left)


def _resolve(future: Future, result: Any = None, error: Exception | None = None) -> None:
    """Answer a job's future unless its caller cancelled it meanwhile (which must not stop the worker)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class StepStats:
    """Forwards run, the jobs waiting at each, and the time spent, logged every `interval` seconds."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.since = time.perf_counter()
        self.steps = self.jobs = 0
        self.busy = 0.0

    def record(self, jobs: int, seconds: float) -> None:
        self.steps += 1
        self.jobs += jobs
        self.busy += seconds
        now = time.perf_counter()
        if now - self.since >= self.interval:
            log.info(
                "target steps",
                steps=self.steps,
                jobs_per_step=round(self.jobs / self.steps, 2),
                busy=round(self.busy / (now - self.since), 3),
                ms_per_step=round(1e3 * self.busy / self.steps, 1),
            )
            self.since, self.steps, self.jobs, self.busy = now, 0, 0, 0.0
