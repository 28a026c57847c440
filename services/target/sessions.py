"""Per-session context and KV cache of the target, with least-recently-used eviction."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from banditspec.errors import SessionLost
from banditspec.lean_llama import LeanCache
from banditspec.released import ReleasedSessions
from banditspec.sampling import SamplingParams


@dataclass
class TargetSession:
    context: list[int]
    cache: DynamicCache | LeanCache  # LeanCache on a Llama target, whose sessions share forwards
    sampling: SamplingParams
    generator: torch.Generator | None
    # The cache always holds context[:-1]: the last token is fed with the next draft.


class SessionStore:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, TargetSession] = OrderedDict()
        self.evictions = 0  # sessions dropped to make room, since start-up
        self.released = ReleasedSessions()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def put(self, session_id: str, session: TargetSession) -> list[str]:
        """Store a session; returns the ids evicted to make room. A released id is refused."""
        self.released.check(session_id)
        self._sessions.pop(session_id, None)
        self._sessions[session_id] = session
        evicted = []
        while len(self._sessions) > self.max_sessions:
            evicted.append(self._sessions.popitem(last=False)[0])
        self.evictions += len(evicted)
        return evicted

    def get(self, session_id: str) -> TargetSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionLost(f"session {session_id!r} is not held by this target; reopen it with the full context")
        self._sessions.move_to_end(session_id)
        return session

    def held(self) -> list[TargetSession]:
        return list(self._sessions.values())

    def pop(self, session_id: str) -> TargetSession | None:
        """Release a session (held or not): its id is not opened again. Returns it if it was held."""
        self.released.add(session_id)
        return self._sessions.pop(session_id, None)
