"""Model-free drafters in the controller's own process: built from specs (a drafter that runs a model is
refused), synced with only new tokens, scored alternatives as a draft service gives them, a failing
drafter costing only its arms, and learning from finished answers on release."""

from __future__ import annotations

import asyncio

import pytest

from banditspec.sampling import SamplingParams
from services.controller.arms import Arm
from services.controller.clients import DrafterFailed
from services.controller.domain import Deadline
from services.controller.local_drafts import IN_PROCESS, InProcessDrafts
from services.draft.drafters.base import DraftSession, Proposal

REPEATING = [5, 6, 7, 8, 9, 5, 6, 7]  # prompt lookup continues (5, 6, 7) with 8, 9, 5, 6, 7


def session(host: InProcessDrafts, session_id: str = "s"):
    return host.session(session_id, SamplingParams(), seed=1, deadline=Deadline(None, 30.0))


@pytest.fixture
def host():
    drafts = InProcessDrafts(["pld=prompt_lookup:1-3:fixed", "sfx=suffix"])
    asyncio.run(drafts.refresh("any target", 1.0))  # as the controller does before building arms
    yield drafts
    asyncio.run(drafts.close())


def test_arms_name_the_in_process_host_and_its_capabilities(host):
    assert host.name == IN_PROCESS
    assert host.model_free_drafters() == {"pld", "sfx"}
    assert host.learns_from_outputs  # the suffix tree
    arms = host.arms([3], [4], tree_tokens=[8])
    assert Arm.drafted(IN_PROCESS, "pld", 3) in arms and Arm.tree(IN_PROCESS, "sfx", 3, 8) in arms
    assert asyncio.run(host.healthy(1.0))


def test_a_drafter_that_runs_a_model_is_refused(tiny_models):
    with pytest.raises(ValueError, match="runs a model"):
        InProcessDrafts([f"m=model:{tiny_models.target}"])


def test_a_bad_spec_is_refused():
    with pytest.raises(ValueError, match="unknown kind"):
        InProcessDrafts(["x=nonsense"])
    with pytest.raises(ValueError, match="already given"):
        InProcessDrafts(["pld=prompt_lookup", "pld=suffix"])


def test_a_drafter_of_another_vocabulary_is_refused_at_refresh(host):
    host.registry.drafters["pld"].vocab_fingerprint = "another tokenizer"  # e.g. a foreign retrieval datastore
    asyncio.run(host.refresh("the target's", 1.0))
    assert [entry.name for entry in host.drafters] == ["sfx"]
    assert "another tokenizer" in host.refused["pld"]


def test_proposals_sync_only_new_tokens_and_match_the_drafter(host):
    async def run():
        local = session(host)
        first = await local.propose(list(REPEATING), "pld", 3)
        held = host.registry.sessions["s"]
        assert first.token_ids == [8, 9, 5] and first.probs == [] and first.parents is None
        context = [*REPEATING, 8, 9]
        second = await local.propose(context, "pld", 3)
        assert host.registry.sessions["s"] is held and held.context == context  # extended, not reopened
        assert second.token_ids == [5, 6, 7]
        # Alternatives for counterfactual scoring, as the draft service returns them.
        scored = await local.propose(context, "pld", 3, score_drafters=["sfx", "pld", "gone"], score_num_tokens=3)
        assert set(scored.alternatives) == {"sfx"}
        await local.release(None, len(REPEATING))
        assert "s" not in host.registry.sessions

    asyncio.run(run())


def test_an_evicted_session_is_reopened_with_the_whole_context():
    host = InProcessDrafts(["pld=prompt_lookup:1-3:fixed"], max_sessions=1)

    async def run():
        a, b = session(host, "a"), session(host, "b")
        await a.propose(list(REPEATING), "pld", 3)
        await b.propose([1, 2, 3], "pld", 3)  # evicts a
        again = await a.propose([*REPEATING, 8], "pld", 3)
        assert again.token_ids == [9, 5, 6]
        assert host.registry.sessions["a"].context == [*REPEATING, 8]

    asyncio.run(run())
    asyncio.run(host.close())


def test_a_failing_drafter_raises_drafter_failed_and_the_session_recovers(host):
    class Broken:
        def propose(self, session: DraftSession, num_tokens: int, tree_tokens: int = 0) -> Proposal:
            raise RuntimeError("boom")

    async def run():
        local = session(host)
        await local.propose(list(REPEATING), "pld", 3)
        working = host.registry.drafters["pld"]
        host.registry.drafters["pld"] = Broken()  # type: ignore[assignment]
        with pytest.raises(DrafterFailed, match="boom"):
            await local.propose([*REPEATING, 8], "pld", 3)
        host.registry.drafters["pld"] = working
        with pytest.raises(DrafterFailed, match="no drafter named"):
            await local.propose([*REPEATING, 8], "missing", 3)
        recovered = await local.propose([*REPEATING, 8, 9], "pld", 3)
        assert recovered.token_ids == [5, 6, 7]

    asyncio.run(run())


def test_release_teaches_the_suffix_tree_the_finished_answer(host):
    prompt, answer = [40, 41], [50, 51, 52, 53, 54]

    async def run():
        first = session(host, "first")
        assert (await first.propose(list(prompt), "sfx", 4)).token_ids == []  # nothing learned yet
        await first.release([*prompt, *answer], len(prompt))
        second = session(host, "second")
        proposal = await second.propose([*prompt, 50, 51], "sfx", 4)
        assert proposal.token_ids == [52, 53, 54]
        failed = session(host, "failed")
        await failed.propose([60, 61, 62, 63, 64], "sfx", 4)
        await failed.release(None, 2)  # a failed request teaches nothing
        assert (await session(host, "third").propose([70, 62, 63], "sfx", 4)).token_ids == []  # else [64]

    asyncio.run(run())


def test_drafts_to_score_alone_come_as_alternatives(host):
    async def run():
        local = session(host)
        scored = await local.score(list(REPEATING), ["pld", "sfx"], 3, 0)
        assert scored.token_ids == [] and scored.alternatives["pld"] == [8, 9, 5]
        branching = [5, 6, 7, 9, 5, 6, 8, 9, 5, 6]  # (5, 6) goes on with 7 and with 8
        trees = await session(host, "t").score(branching, ["pld"], 3, 8)
        assert trees.alternative_parents["pld"].count(-1) == 2  # two branches at the root
        assert host.registry.sessions["t"].context == branching

    asyncio.run(run())
