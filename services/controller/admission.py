"""Admission control: at most `limit` requests run at once; up to `queue` more wait, in arrival order;
beyond that a request is refused at once with RESOURCE_EXHAUSTED, so an overload shows as a clear status
instead of every request slowing down and every target session being evicted and re-prefilled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from banditspec.errors import ResourceExhausted


class Admission:
    def __init__(self, limit: int, queue: int) -> None:
        if limit < 1 or queue < 0:
            raise ValueError("admission needs limit >= 1 and queue >= 0")
        self.limit = limit
        self.queue = queue
        self._slots = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.running >= self.limit and self.waiting >= self.queue:
            raise ResourceExhausted(
                f"the controller is at capacity: {self.running} requests running (at most {self.limit}) and "
                f"{self.waiting} waiting (at most {self.queue}); retry later"
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
