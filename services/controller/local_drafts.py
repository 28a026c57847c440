"""Model-free drafters in the controller's own process (`--local-drafter`).

A round on a draft service's arm makes two gRPC exchanges, Propose then Verify, and after the idle of a
target forward each costs about 0.8 ms here (RESULTS 19) while prompt lookup or the suffix tree proposes in
microseconds. Hosted beside the round loop, their rounds make one exchange, the Verify, and their proposals
never wait on a network or another request's model forward. Draft models stay in draft services: a forward
on the event loop would stall every request.

The drafters are the draft service's own (`services.draft`), behind the same registry: sessions, syncing,
scoring alternatives and learning from finished answers work as there. Learning runs on a thread, as in
the service. Each controller replica learns only from the answers it returned.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import structlog

from banditspec import distributions
from banditspec.errors import SessionLost
from banditspec.sampling import SamplingParams
from services.controller.clients import DrafterEntry, DrafterFailed, DraftHost
from services.controller.domain import Deadline, Proposal
from services.draft.drafters.base import Drafter, DraftSession, ServiceSettings
from services.draft.registry import DrafterRegistry, check_proposal_request
from services.draft.specs import DrafterSpec

log = structlog.get_logger()

IN_PROCESS = "inproc"  # the host name in its arms' names: inproc/pld/6


class InProcessDrafts(DraftHost):
    """Model-free drafters built from specs at start-up; a spec of a drafter that runs a model is refused."""

    free_to_ask = True

    def __init__(self, specs: list[str], max_sessions: int = 256, name: str = IN_PROCESS) -> None:
        super().__init__(name, "in-process")
        self.registry = DrafterRegistry(max_sessions)
        self.learner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-draft-learner")
        for text in specs:
            drafter = build_model_free(text)
            if drafter.name in self.registry.drafters:
                raise ValueError(f"--local-drafter {text!r}: a drafter named {drafter.name!r} is already given")
            self.registry.add(drafter)

    async def healthy(self, timeout: float) -> bool:
        return True

    async def refresh(self, target_fingerprint: str, timeout: float) -> None:
        """The drafters are fixed at start-up; as for a draft service, one whose ids mean other text (a
        retrieval datastore of another tokenizer) is refused."""
        listed = [
            (DrafterEntry(d.name, d.model_free, d.learns_from_outputs, d.proposes_trees), d.vocab_fingerprint)
            for d in self.registry.drafters.values()
        ]
        self.take(listed, target_fingerprint)

    def session(self, session_id: str, sampling: SamplingParams, seed: int, deadline: Deadline) -> LocalSession:
        return LocalSession(self, session_id, sampling, seed)

    async def close(self) -> None:
        self.learner.shutdown(wait=True)
        for drafter in self.registry.drafters.values():
            drafter.close()


def build_model_free(text: str) -> Drafter:
    """A drafter from its spec; ValueError for a bad spec or one whose drafter runs a model."""
    spec = DrafterSpec.parse(text)
    if not spec.model_free:
        raise ValueError(
            f"--local-drafter {text!r}: a {spec.kind} drafter runs a model; host it in a draft service "
            "(only model-free drafters run in the controller)"
        )
    drafter = spec.build(ServiceSettings(device="cpu"))
    if not drafter.model_free or drafter.runs_on_worker:  # the kind's declaration and its drafter disagree
        drafter.close()
        raise ValueError(f"--local-drafter {text!r}: its drafter is not model-free")
    return drafter


class LocalSession:
    """One request's session with the in-process drafters; like a draft service's session, it is synced
    with only the tokens it has not seen."""

    def __init__(self, client: InProcessDrafts, session_id: str, sampling: SamplingParams, seed: int) -> None:
        self._client = client
        self.session_id = session_id
        self.sampling = sampling
        self.seed = seed
        self.synced: int | None = None  # context tokens the registry's session holds; None: never opened

    @property
    def client(self) -> InProcessDrafts:
        return self._client

    async def propose(
        self,
        context: list[int],
        drafter: str,
        num_tokens: int,
        score_drafters: list[str] | None = None,
        score_num_tokens: int = 0,
        tree_tokens: int = 0,
        score_tree_tokens: int = 0,
    ) -> Proposal:
        """As `DraftSession.propose`, without a network: a drafter that raises costs its arms the request."""
        registry = self._client.registry
        try:
            entry = registry.get(drafter)
            check_proposal_request(num_tokens, tree_tokens, score_drafters or [], score_num_tokens, score_tree_tokens)
            session = self._sync(context)
            proposal, seconds = registry.propose(entry, session, num_tokens, tree_tokens)
            alternatives = registry.alternatives(
                session, score_drafters or [], score_num_tokens, score_tree_tokens, drafter, tree_tokens
            )
        except Exception as error:  # a drafter's bug must not fail the request: its arms leave it
            log.exception("in-process drafter failed", drafter=drafter)
            self.synced = None  # reopen with the full context next time
            raise DrafterFailed(f"in-process drafter {drafter!r} failed: {error!r}") from error
        probs = [] if proposal.probs is None else [distributions.encode(row) for row in proposal.probs]
        return Proposal(
            token_ids=proposal.token_ids,
            probs=probs,
            compute_seconds=seconds,
            alternatives={name: p.token_ids for name, p in alternatives},
            parents=proposal.parents,
            alternative_parents={name: p.parents for name, p in alternatives if p.parents},
        )

    async def score(self, context: list[int], drafters: list[str], num_tokens: int, tree_tokens: int) -> Proposal:
        """The drafts of `drafters` for counterfactual scoring, in a round that played another host's arm or
        target-only: microseconds, no RPC. Scoring is optional, so a failure gives no drafts."""
        registry = self._client.registry
        try:
            session = self._sync(context)
            found = registry.alternatives(session, drafters, num_tokens, tree_tokens, asked="", asked_tree_tokens=0)
        except Exception:
            log.exception("in-process drafts to score failed")
            self.synced = None
            return Proposal([])
        return Proposal(
            [],
            alternatives={name: p.token_ids for name, p in found},
            alternative_parents={name: p.parents for name, p in found if p.parents},
        )

    def _sync(self, context: list[int]) -> DraftSession:
        """The registry's session brought up to `context`; reopened whole if it was evicted (LRU)."""
        registry = self._client.registry
        synced = self.synced or 0
        try:
            session = registry.sync(self.session_id, synced, context[synced:], self.sampling, self.seed)
        except SessionLost:
            session = registry.sync(self.session_id, 0, context, self.sampling, self.seed)
        self.synced = len(context)
        return session

    async def release(self, answer: list[int] | None, prompt_length: int) -> None:
        """Free the session; drafters that learn from outputs learn the finished `answer` on the learner
        thread, and the release returns once they have (so a client's next request draws on it)."""
        if answer is None or not self._client.learns_from_outputs or len(answer) <= prompt_length:
            self._client.registry.release(self.session_id, learn=lambda task: None)  # a failed request teaches nothing
            return
        learning: list[asyncio.Future] = []
        self._client.registry.release(
            self.session_id,
            0,
            list(answer),  # the whole context: context_length 0
            prompt_length,
            learn=lambda task: learning.append(asyncio.wrap_future(self._client.learner.submit(task))),
        )
        for future in learning:
            try:
                await future
            except Exception:  # learning is best effort: it must not fail the release
                log.exception("learning from a finished output failed", session_id=self.session_id)
