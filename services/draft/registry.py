"""The drafters a draft service hosts, and the sessions they share. No gRPC here."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

from banditspec.errors import AlreadyExists, InvalidArgument, NotFound, OutOfSync, SessionLost
from banditspec.released import ReleasedSessions
from banditspec.sampling import SamplingParams
from services.draft.drafters.base import Drafter, DraftSession, Proposal

log = structlog.get_logger()

MAX_DRAFT_TOKENS = 64  # γ beyond this is a client error, and it bounds what a proposal allocates
MAX_TREE_TOKENS = 64  # a token tree's size: bounds what a proposal allocates and the target verifies
MAX_CONTEXT_TOKENS = 1 << 17  # per session: bounds memory and the model-free drafters' indexing time
MAX_SCORED_DRAFTERS = 64


def check_draft_size(num_tokens: int, tree_tokens: int = 0, fields: str = "") -> None:
    """`fields`: the prefix of the request's field names (score_ for the drafts to score)."""
    if not 0 <= num_tokens <= MAX_DRAFT_TOKENS:
        raise InvalidArgument(f"{fields}num_tokens must be in [0, {MAX_DRAFT_TOKENS}], got {num_tokens}")
    if not 0 <= tree_tokens <= MAX_TREE_TOKENS:
        raise InvalidArgument(f"{fields}tree_tokens must be in [0, {MAX_TREE_TOKENS}] (0: a chain), got {tree_tokens}")


def check_proposal_request(
    num_tokens: int, tree_tokens: int, score_drafters: list[str], score_num_tokens: int, score_tree_tokens: int
) -> None:
    """A proposal request's sizes, checked before the session syncs: a rejected one must leave it as it was."""
    check_draft_size(num_tokens, tree_tokens)
    check_draft_size(score_num_tokens, score_tree_tokens, fields="score_")
    if len(score_drafters) > MAX_SCORED_DRAFTERS:
        raise InvalidArgument(f"score_drafters names at most {MAX_SCORED_DRAFTERS} drafters")


class DrafterRegistry:
    def __init__(self, max_sessions: int = 256, max_context: int = MAX_CONTEXT_TOKENS) -> None:
        self.max_sessions = max_sessions
        self.max_context = max_context
        self.drafters: dict[str, Drafter] = {}
        self.sessions: OrderedDict[str, DraftSession] = OrderedDict()
        self.released = ReleasedSessions()

    # drafters -----------------------------------------------------------------------------------
    def add(self, drafter: Drafter, replace: bool = False) -> Drafter | None:
        """Register a drafter; with replace, returns the one it swapped out (to be closed by the caller)."""
        old = self.drafters.get(drafter.name)
        if old is not None and not replace:
            raise AlreadyExists(f"drafter {drafter.name!r} is already loaded; pass replace to swap it")
        self.drafters[drafter.name] = drafter
        if old is not None:
            self._forget_state(drafter.name)
        return old

    def remove(self, name: str) -> Drafter:
        drafter = self.drafters.pop(name, None)
        if drafter is None:
            raise NotFound(f"no drafter named {name!r}; loaded: {', '.join(sorted(self.drafters)) or 'none'}")
        self._forget_state(name)
        return drafter

    def get(self, name: str) -> Drafter:
        drafter = self.drafters.get(name)
        if drafter is None:
            raise NotFound(f"no drafter named {name!r}; loaded: {', '.join(sorted(self.drafters)) or 'none'}")
        return drafter

    def _forget_state(self, name: str) -> None:
        for session in self.sessions.values():
            session.state.pop(name, None)

    def forget_if_retired(self, drafter: Drafter, session: DraftSession) -> None:
        """After a proposal: a drafter replaced or unloaded while it waited for (or ran on) the model
        worker may have left state under its name after `_forget_state`; drop it, so that a successor
        of the same name does not inherit it (a KV cache of other weights)."""
        if self.drafters.get(drafter.name) is not drafter:
            session.state.pop(drafter.name, None)

    # sessions -----------------------------------------------------------------------------------
    def sync(
        self,
        session_id: str,
        context_length: int,
        new_ids: list[int],
        sampling: SamplingParams,
        seed: int,
        vocab_size: int | None = None,
    ) -> DraftSession:
        """Bring a session's context up to date; context_length 0 (re)opens it. Checks everything before
        changing anything, so a rejected request leaves the session as it was. `vocab_size`: the ids the
        drafter about to run accepts (a model's embedding rows), held tokens included."""
        if not session_id:
            raise InvalidArgument("session_id is required")
        held = self.sessions.get(session_id) if context_length else None
        top = self._check_ids(new_ids, len(held.context) if held else 0, vocab_size, held.max_token_id if held else -1)
        if context_length == 0:
            if not new_ids:
                raise InvalidArgument("opening a session needs its context in new_context_ids")
            self.released.check(session_id)
            opened = DraftSession(list(new_ids), sampling, seed, prompt_length=len(new_ids), max_token_id=top)
            self.sessions.pop(session_id, None)
            self.sessions[session_id] = opened
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
            return opened
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionLost(f"session {session_id!r} is not held by this draft service; resend the full context")
        if context_length != len(session.context):
            raise OutOfSync(
                f"session {session_id!r} holds {len(session.context)} tokens, caller expected {context_length}"
            )
        self.sessions.move_to_end(session_id)
        session.context.extend(new_ids)
        session.max_token_id = top
        return session

    def _check_ids(self, new_ids: list[int], held: int, vocab_size: int | None, held_max: int) -> int:
        """Raises InvalidArgument for a context that would be too long or hold a bad id; returns its largest id."""
        if held + len(new_ids) > self.max_context:
            total = held + len(new_ids)
            raise InvalidArgument(f"a session's context is at most {self.max_context} tokens, got {total}")
        if new_ids and min(new_ids) < 0:
            raise InvalidArgument(f"token ids must be >= 0, got {min(new_ids)}")
        top = max(held_max, max(new_ids, default=-1))
        if vocab_size is not None and top >= vocab_size:
            raise InvalidArgument(f"token id {top} is outside the drafter's vocabulary of {vocab_size}")
        return top

    def propose(
        self, drafter: Drafter, session: DraftSession, num_tokens: int, tree_tokens: int = 0
    ) -> tuple[Proposal, float]:
        """Returns the proposal and its compute seconds; tree_tokens > 0 welcomes a token tree."""
        check_draft_size(num_tokens, tree_tokens)
        start = time.perf_counter()
        # Only a tree request passes tree_tokens, so drafters written before trees keep working.
        if tree_tokens:
            proposal = drafter.propose(session, num_tokens, tree_tokens=tree_tokens)
        else:
            proposal = drafter.propose(session, num_tokens)
        return proposal, time.perf_counter() - start

    def alternatives(
        self,
        session: DraftSession,
        names: list[str],
        num_tokens: int,
        tree_tokens: int,
        asked: str,
        asked_tree_tokens: int,
    ) -> list[tuple[str, Proposal]]:
        """Drafts of other model-free drafters for the same context, for counterfactual scoring: trees from
        those that branch when `tree_tokens` asks, else chains. Skips names that are gone or not model-free
        (a model forward per round would cost what scoring saves), and the `asked` drafter unless a larger
        tree of it is asked for than it just proposed."""
        found = []
        for name in dict.fromkeys(names):
            drafter = self.drafters.get(name)
            if drafter is None or not drafter.model_free:
                continue
            tree = tree_tokens if drafter.proposes_trees else 0
            if name == asked and tree <= asked_tree_tokens:
                continue
            try:
                proposal, _ = self.propose(drafter, session, num_tokens, tree)
            except Exception:  # scoring is optional: it must never fail the proposal that was asked for
                log.exception("alternative draft failed", drafter=name)
                continue
            found.append((name, proposal))
        return found

    def release(
        self,
        session_id: str,
        context_length: int = 0,
        new_ids: list[int] | None = None,
        prompt_length: int = 0,
        learn: Callable[[Callable[[], None]], object] = lambda task: task(),
    ) -> bool:
        """Drop a session; with new_ids, first bring it up to date so learning drafters see the whole answer.
        Learning drafters' `finish` calls run through `learn` (inline by default; the service hands them to a
        thread, so that a long answer's insertion does not stall other sessions' rounds)."""
        held = self.sessions.get(session_id)
        self._check_ids(new_ids or [], len(held.context) if held and context_length else 0, None, -1)
        session = self.sessions.pop(session_id, None)
        self.released.add(session_id)
        released = session is not None
        if not new_ids:
            learn_from = session
        elif context_length == 0 and 0 < prompt_length < len(new_ids):  # the whole finished context
            learn_from = DraftSession(list(new_ids), SamplingParams(), 0, prompt_length=prompt_length)
        elif session is not None and context_length == len(session.context):
            session.context.extend(new_ids)
            learn_from = session
        else:  # out of step with what this service holds: learning from it could teach a wrong answer
            learn_from = None
        if learn_from is None:
            return released
        session = learn_from
        if prompt_length > 0:
            session.prompt_length = min(prompt_length, len(session.context))
        finishes = [drafter.finish for drafter in self.drafters.values() if drafter.learns_from_outputs]
        if finishes:

            def learn_all() -> None:
                for finish in finishes:
                    finish(session)

            learn(learn_all)
        return released
