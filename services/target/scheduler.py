"""Continuous batching for the target: the service's event loop runs the jobs that are ready as one forward.

Handlers submit jobs and await their future. A step is due as soon as a job arrives and runs, on the event
loop's thread, every job waiting then as one forward (within the engine's token budget); jobs that arrive
during a forward join the next one. There is no wait timer for a lone request: a job that finds nothing
running is stepped on the loop's next pass, or at once when no other session is open. Only sessions whose
last verify just finished are waited for, briefly: their next round is on its way through the controller
and a draft service, and a forward that starts without them leaves them to the next one, so the rows split
into groups that alternate (measured: 3.6 of 8 sessions per forward).

Why the loop and not a worker thread: a verify answered by a worker had to hand its job to the worker and
its result back to the loop, two wake-ups of a sleeping thread (0.08 and 0.22 ms of a round's 1.3 ms of
overhead on a 2-core CPU, RESULTS 39). The price is that an RPC arriving during a forward is read when it
ends; the token budget bounds that wait, and a forward is what every RPC here waits for anyway.

The loop's thread is the only one of the process that runs torch once the service is up: each thread that
runs an OpenMP region gets its own team of OpenMP threads, and once the teams together outnumber the cores
GNU OpenMP stops spinning between regions (a forward on a second thread took twice the time, RESULTS 37).
The model loads and is measured on a thread that exits before the first step (`server.py`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from banditspec.errors import SessionLost
from services.target.engine import BatchInfo, Job, TargetEngine
from services.target.threads import ThreadPlan

log = structlog.get_logger()

# How long a forward may wait for sessions on their way back: a share of the last forward, with a cap.
GATHER_SHARE = 0.25
MAX_GATHER_SECONDS = 0.03


class Scheduler:
    """Runs on the event loop that submits to it; every method is called on that loop's thread."""

    def __init__(
        self,
        engine: TargetEngine,
        on_forward: Callable[[BatchInfo], None] | None = None,
        threads: ThreadPlan | None = None,
        on_gather: Callable[[float, bool], None] | None = None,
    ) -> None:
        self.engine = engine
        self.threads = threads  # None: the thread's torch threads for every forward
        self.on_forward = on_forward  # called after every forward that ran (metrics)
        self.on_gather = on_gather  # called after every gather: its seconds, and whether it ran out (metrics)
        self._jobs: list[tuple[Job, asyncio.Future]] = []  # submission order: the budget serves the oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: asyncio.Handle | None = None  # the next step, at once or when a gather ends
        self._gather_until: float | None = None
        self._gather_started = 0.0
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = StepStats()
        self._returning: set[str] = set()  # sessions whose verify just finished: their next round is coming
        self._last_step_seconds = 0.0

    def submit(self, job: Job) -> asyncio.Future:
        """The future resolves to the finished job (its result), or to its error. A caller that cancels it
        drops the job if no step has taken it up; a started one finishes (its session stays consistent)."""
        if self._stopping:
            raise RuntimeError("the scheduler is stopped")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # tools and tests may drive it from one `asyncio.run` after another
            if self._jobs:
                raise RuntimeError("the scheduler has jobs on another event loop")
            self._loop, self._due = loop, None
        future = loop.create_future()
        self._jobs.append((job, future))
        self._idle.clear()
        if self._alone(job):
            self._step()  # nothing to batch it with: answered before the handler awaits, no loop pass
        else:
            self._step_soon()
        return future

    def _alone(self, job: Job) -> bool:
        """No other job waits and no other session is open, so no other row can join its forward."""
        sessions = self.engine.sessions
        others = len(sessions) - (job.session_id in sessions)
        return others == 0 and len(self._jobs) == 1 and self._due is None

    def leaving(self, session_id: str) -> None:
        """No round of the session is coming back (its request ended): a gather waiting for it stops."""
        if session_id not in self._returning:
            return
        self._returning.discard(session_id)
        if self._gather_until is not None and isinstance(self._due, asyncio.TimerHandle):
            self._step_soon()  # step now if it was the last one missing

    def forget(self, session_id: str) -> None:
        """The session ended: no round of it is coming back, and its jobs not yet started are dropped (run
        later, an open would bring the released session back)."""
        self.leaving(session_id)
        dropped = [(job, future) for job, future in self._jobs if job.session_id == session_id and not job.started]
        gone = {id(job) for job, _ in dropped}  # by identity: jobs hold tensors, == would compare them
        self._jobs = [(job, future) for job, future in self._jobs if id(job) not in gone]
        for _, future in dropped:
            _resolve(future, error=SessionLost(f"session {session_id!r} was released"))
        if not self._jobs:
            self._idle.set()

    def pending(self) -> int:
        return len(self._jobs)

    async def close(self) -> None:
        """Refuse new jobs and finish those already submitted."""
        self._stopping = True
        await self._idle.wait()

    def _step_soon(self) -> None:
        """A step on the loop's next pass, unless one is already due then; a step waiting out a gather
        looks again (the job just submitted may be the one it waits for)."""
        if self._due is not None:
            if not isinstance(self._due, asyncio.TimerHandle):
                return
            self._due.cancel()
        assert self._loop is not None
        self._due = self._loop.call_soon(self._step)

    def _step(self) -> None:
        self._due = None
        self._jobs = [(job, future) for job, future in self._jobs if job.started or not future.cancelled()]
        if not self._jobs:
            self._gather_until = None  # the gather ended with its jobs (cancelled, released)
            self._idle.set()
            return
        wait = self._gather()
        if wait > 0:
            assert self._loop is not None
            self._due = self._loop.call_later(wait, self._step)
            return
        jobs = list(self._jobs)
        if self.threads is not None:
            self.threads.apply(len(self.engine.sessions))
        start = time.perf_counter()
        try:
            batch = self.engine.step([job for job, _ in jobs])
            if batch is not None and self.on_forward is not None:
                self.on_forward(batch)
        except Exception as error:  # a bug in a step must not stop the service: fail that step's jobs
            log.exception("target step failed")
            for job, _ in jobs:
                if not job.done:
                    job.fail(error)
        self._last_step_seconds = time.perf_counter() - start
        finished = [(job, future) for job, future in jobs if job.done]
        done = {id(job) for job, _ in finished}
        self._jobs = [(job, future) for job, future in self._jobs if id(job) not in done]
        for job, future in finished:
            if job.error is None:
                self._returning.add(job.session_id)
            else:
                self._returning.discard(job.session_id)
            _resolve(future, job, job.error)
        self.stats.record(jobs=len(jobs), seconds=self._last_step_seconds)
        if self._jobs:
            self._step_soon()
        else:
            self._idle.set()

    def _gather(self) -> float:
        """Seconds to wait, briefly, for the sessions on their way back (see the module doc); 0: step now."""
        queued = {job.session_id for job, _ in self._jobs}
        missing = self._returning - queued
        now = time.perf_counter()
        if missing and not self._stopping:
            if self._gather_until is None:
                self._gather_started = now
                self._gather_until = now + min(MAX_GATHER_SECONDS, GATHER_SHARE * self._last_step_seconds)
            if now < self._gather_until:
                return self._gather_until - now
        if self._gather_until is not None and self.on_gather is not None:
            self.on_gather(now - self._gather_started, bool(missing))
        self._returning -= missing  # late ones are not waited for again until their next verify
        self._gather_until = None
        return 0.0


def _resolve(future: asyncio.Future, result: Job | None = None, error: Exception | None = None) -> None:
    """Answer a job's future unless its caller cancelled it meanwhile."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


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
