"""How many torch threads a forward runs on: every core while one session is open, fewer under load.

A lone request leaves the machine idle during its forward (its controller waits for the verdict), so the
forward may take every core. With several sessions open the controller works during forwards, and an
OpenMP region spanning every core stalls whenever another process preempts one of its threads (2 cores,
8 clients, target-only: 22.6 tok/s on two threads, 43.7 on one; docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass
class ThreadPlan:
    shared: int  # threads while several sessions are open
    solo: int  # threads while at most one is
    _current: int = 0  # what this plan last set on its thread (torch's setting is per thread)

    @classmethod
    def from_flags(cls, solo: int) -> ThreadPlan:
        """Shared: the process's setting (--threads); solo 0: the same."""
        if solo < 0:
            raise ValueError(f"solo threads must be >= 0, got {solo}")
        shared = torch.get_num_threads()
        return cls(shared, solo or shared)

    @property
    def switches(self) -> bool:
        return self.solo != self.shared

    def threads_for(self, open_sessions: int) -> int:
        return self.solo if open_sessions <= 1 else self.shared

    def apply(self, open_sessions: int) -> None:
        """Before a forward, on the thread that runs it."""
        wanted = self.threads_for(open_sessions)
        if wanted != self._current:
            torch.set_num_threads(wanted)
            self._current = wanted

    def measure(self, open_sessions: int, fn: Callable[[], T]) -> T:
        """Run a start-up measurement on the threads a forward would get with `open_sessions` open."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads_for(open_sessions))
        try:
            return fn()
        finally:
            torch.set_num_threads(before)
