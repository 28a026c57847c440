"""Ids of sessions released lately, so that a round still on its way cannot bring one back.

A request's rounds and its release travel on different calls; when a service stalls, it may serve the
release first. A round that (re)opens the session after that would hold its memory until eviction, as
nobody releases it again. Session ids are made once per request, so an id once released is refused.
"""

from __future__ import annotations

from collections import OrderedDict

from banditspec.errors import SessionReleased

REMEMBERED = 65536  # ids kept: many minutes of requests, a few MiB


class ReleasedSessions:
    def __init__(self, remembered: int = REMEMBERED) -> None:
        self.remembered = remembered
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, session_id: str) -> None:
        self._ids[session_id] = None
        self._ids.move_to_end(session_id)
        while len(self._ids) > self.remembered:
            self._ids.popitem(last=False)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._ids

    def check(self, session_id: str) -> None:
        """Raises SessionReleased for an id released lately."""
        if session_id in self._ids:
            raise SessionReleased(f"session {session_id!r} was released; a new request needs a new session id")
