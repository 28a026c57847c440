"""Continuous batching for the target: one worker thread runs the jobs that are ready as one forward.

Callers submit jobs from any thread and wait on a future. The worker takes every job waiting when a
forward ends and runs them together (within the engine's token budget); jobs submitted meanwhile join the
next forward. There is no wait timer: a job that finds the worker idle runs at once, alone, so a lone
request pays nothing for batching. Other engine work (release) runs between forwards on the same thread,
so the engine is only ever touched by one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import structlog

from services.target.engine import Job, TargetEngine

log = structlog.get_logger()


class Scheduler:
    def __init__(self, engine: TargetEngine) -> None:
        self.engine = engine
        self._jobs: list[tuple[Job, Future]] = []  # submission order: the budget serves the oldest first
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...], Future]] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="target-scheduler", daemon=True)
        self._thread.start()

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
                jobs = list(self._jobs)
            for fn, args, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(*args))
                    except Exception as error:
                        future.set_exception(error)
            if not jobs:
                continue
            try:
                self.engine.step([job for job, _ in jobs])
            except Exception as error:  # a bug in a step must not stop the worker: fail that step's jobs
                log.exception("target step failed")
                for job, _ in jobs:
                    if not job.done:
                        job.fail(error)
            finished = [(job, future) for job, future in jobs if job.done]
            if finished:
                with self._wake:
                    done = {id(job) for job, _ in finished}
                    self._jobs = [(job, future) for job, future in self._jobs if id(job) not in done]
                for job, future in finished:
                    if job.error is not None:
                        future.set_exception(job.error)
                    else:
                        future.set_result(job)
