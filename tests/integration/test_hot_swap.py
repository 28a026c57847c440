"""Drafters loaded, unloaded and replaced on a running draft service while requests stream through the
controller, on a stack of its own.

A swap costs at most speed: no request fails, every greedy output is token-identical to the target
alone, a replaced drafter's in-flight rounds finish on the old weights and later ones use the new,
an unloaded drafter's arms leave the requests using them, and the controller's arms follow the
drafters (re-listed every 2 s) without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest
from conftest import EOS_ID, RPC_TIMEOUT, TWO_GAMMAS, ServicerContext, local_stack, reference_greedy

from banditspec.v1 import draft_pb2, draft_pb2_grpc, generation_pb2, generation_pb2_grpc

pytestmark = pytest.mark.timeout(300)  # a hung swap fails the test instead of stalling the suite

PROMPTS = [[3, 4, 5, 6, 3, 4, 5], [10, 11, 12, 13, 14], [15, 16], [20]]  # [20] stops at EOS after 21 tokens
MAX_NEW = 48
# For requests that must still be running when a swap lands: about 100 rounds each.
LONG_PROMPTS = [[7, 8, 9, 7, 8, 9, 7, 8, 30, 31, 32, 7, 8], [33]]
LONG = 160

FIXED, UCB, EXP3 = generation_pb2.POLICY_FIXED, generation_pb2.POLICY_UCBSPEC, generation_pb2.POLICY_EXP3SPEC
WAIT = 30.0  # deadline for polled conditions (the controller re-lists drafters every 2 s)


@pytest.fixture(scope="module")
def swap_stack(tiny_models, tmp_path_factory):
    """Drafters: pld; swap (the independent model, replaced by a copy of the target); doomed (the
    noisy copy, unloaded). The model drafters draft ahead, so swaps also meet running lookaheads."""
    drafters = [
        "pld=prompt_lookup:1-3:fixed",
        f"swap=model:{tiny_models.other}^4",
        f"doomed=model:{tiny_models.near}^4",
    ]
    with local_stack(
        tmp_path_factory, "swap-stack", tiny_models.target, drafters, ["--policy", "ucbspec", *TWO_GAMMAS]
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def references(target_model):
    return {
        **{(tuple(p), MAX_NEW): reference_greedy(target_model, p, MAX_NEW) for p in PROMPTS},
        **{(tuple(p), LONG): reference_greedy(target_model, p, LONG) for p in LONG_PROMPTS},
    }


# traffic --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one client sends, over and over."""

    policy: int
    arms: tuple[str, ...] = ()
    stream: bool = True
    long: bool = False
    pinned: bool = False  # stops starting requests at `Traffic.freeze_pinned()`: its arms are about to go


@dataclass
class Outcome:
    client: int
    plan: Plan
    prompt: list[int]
    phase: int  # the traffic phase the request started in
    rounds: list[generation_pb2.RoundUpdate] = field(default_factory=list)
    response: generation_pb2.GenerateResponse | None = None
    error: str = ""

    @property
    def max_new(self) -> int:
        return LONG if self.plan.long else MAX_NEW

    @property
    def done(self) -> bool:
        return self.response is not None or bool(self.error)


class Traffic:
    """One asyncio task per plan, each sending requests back to back until stopped."""

    def __init__(self, stub: generation_pb2_grpc.GenerationServiceStub, plans: list[Plan]) -> None:
        self.stub = stub
        self.plans = plans
        self.outcomes: list[Outcome] = []
        self.last: dict[int, Outcome] = {}
        self.phase = 0
        self.stopping = False
        self.frozen = False
        self.tasks = [asyncio.create_task(self._client(index, plan)) for index, plan in enumerate(plans)]

    async def __aenter__(self) -> Traffic:
        return self

    async def __aexit__(self, *exc) -> None:
        """On a failed assertion: no client outlives the test's event loop."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def mark(self) -> int:
        """Start a new phase: requests started from now on carry its number."""
        self.phase += 1
        return self.phase

    async def warm(self) -> None:
        """Every client has had an answer: traffic flows before anything is swapped."""

        def answered() -> bool:
            for task in self.tasks:
                if task.done():
                    task.result()  # a client that crashed fails the test here
            return all(any(o.done for o in self.outcomes if o.client == i) for i in range(len(self.plans)))

        await eventually(answered)

    async def freeze_pinned(self) -> None:
        """Pinned clients start no new request, and each one's current stream has passed validation
        (it has a round), so its arms may go away under it."""
        self.frozen = True
        pinned = [(i, task) for i, task in enumerate(self.tasks) if self.plans[i].pinned]
        await eventually(lambda: all(task.done() or self.last[i].rounds for i, task in pinned))

    async def stop(self) -> list[Outcome]:
        """Each client finishes one more request, started after this call, then stops."""
        self.stopping = True
        self.mark()
        await asyncio.gather(*self.tasks)
        return self.outcomes

    async def _client(self, index: int, plan: Plan) -> None:
        prompts = LONG_PROMPTS if plan.long else PROMPTS
        for n in itertools.count(index):
            if plan.pinned and self.frozen:
                return
            phase = self.phase
            outcome = Outcome(index, plan, prompts[n % len(prompts)], phase)
            self.outcomes.append(outcome)
            self.last[index] = outcome
            request = generation_pb2.GenerateRequest(
                max_new_tokens=outcome.max_new, policy=plan.policy, allowed_arms=list(plan.arms), seed=n
            )
            request.token_ids.ids.extend(outcome.prompt)
            try:
                if plan.stream:
                    async for message in self.stub.GenerateStream(request, timeout=RPC_TIMEOUT):
                        if message.HasField("round"):
                            outcome.rounds.append(message.round)
                        else:
                            outcome.response = message.final
                else:
                    outcome.response = await self.stub.Generate(request, timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as error:
                outcome.error = f"{error.code().name}: {error.details()}"
            if outcome.response is None and not outcome.error:
                outcome.error = "the stream ended without a final response"
            if self.stopping and phase == self.phase:
                return


async def eventually(predicate, timeout: float = WAIT):
    """Poll predicate (a function or a coroutine function) until truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(0.05)


def problems(outcomes: list[Outcome], references) -> list[str]:
    """Every way a request went wrong: failed, lost tokens, or differs from the target alone."""
    found = []
    for o in outcomes:
        label = f"{o.plan} prompt {o.prompt}"
        if o.error:
            found.append(f"{label}: failed: {o.error}")
            continue
        expected = references[(tuple(o.prompt), o.max_new)]
        finish = generation_pb2.FINISH_REASON_EOS if expected[-1] == EOS_ID else generation_pb2.FINISH_REASON_LENGTH
        stats = o.response.stats
        if list(o.response.token_ids) != expected:
            found.append(f"{label}: output differs from the target alone")
        if o.response.finish_reason != finish:
            found.append(f"{label}: finish reason {generation_pb2.FinishReason.Name(o.response.finish_reason)}")
        if o.plan.stream and [t for r in o.rounds for t in r.token_ids] != expected:
            found.append(f"{label}: the streamed rounds do not add up to the output")
        if sum(a.pulls for a in stats.arms) != stats.rounds:
            found.append(f"{label}: pulls do not add up to the rounds")
    return found


def assert_all_exact(outcomes: list[Outcome], references) -> None:
    assert outcomes
    found = problems(outcomes, references)
    assert not found, f"{len(found)} of {len(outcomes)} requests went wrong:\n" + "\n".join(found)


class Clients:
    """aio stubs for the swap stack's controller and draft service."""

    def __init__(self, stack) -> None:
        self.controller_channel = grpc.aio.insecure_channel(stack.address("controller"))
        self.draft_channel = grpc.aio.insecure_channel(stack.address("draft"))
        self.generation = generation_pb2_grpc.GenerationServiceStub(self.controller_channel)
        self.draft = draft_pb2_grpc.DraftServiceStub(self.draft_channel)

    async def arm_names(self) -> set[str]:
        response = await self.generation.ListArms(generation_pb2.ListArmsRequest(), timeout=RPC_TIMEOUT)
        return {arm.name for arm in response.arms}

    async def has_arms(self, names: set[str]) -> bool:
        return names <= await self.arm_names()

    async def lacks_arms_of(self, drafter: str) -> bool:
        return not any(name.startswith(f"local/{drafter}/") for name in await self.arm_names())

    async def generate(self, prompt: list[int], policy: int, arms: list[str]) -> generation_pb2.GenerateResponse:
        request = generation_pb2.GenerateRequest(max_new_tokens=MAX_NEW, policy=policy, allowed_arms=arms)
        request.token_ids.ids.extend(prompt)
        return await self.generation.Generate(request, timeout=RPC_TIMEOUT)

    async def close(self) -> None:
        await self.controller_channel.close()
        await self.draft_channel.close()


@pytest.fixture
async def clients(swap_stack):
    clients = Clients(swap_stack)
    yield clients
    await clients.close()


def pulls(response: generation_pb2.GenerateResponse) -> dict[str, int]:
    return {arm.arm: arm.pulls for arm in response.stats.arms}


# swaps ----------------------------------------------------------------------------------------


async def test_replace_model_drafter_under_traffic(clients, references, tiny_models):
    plans = [
        Plan(FIXED, ("local/swap/4",)),
        Plan(FIXED, ("local/swap/4",), stream=False),
        Plan(FIXED, ("local/swap/2",), long=True),
        Plan(UCB, ("local/swap/2", "local/swap/4", "target-only")),
        Plan(UCB),
        Plan(EXP3, stream=False),
    ]
    async with Traffic(clients.generation, plans) as traffic:
        await traffic.warm()
        response = await clients.draft.LoadDrafter(
            draft_pb2.LoadDrafterRequest(
                name="swap",
                replace=True,
                model=draft_pb2.ModelDrafterOptions(model_path=str(tiny_models.target), lookahead_tokens=4),
            ),
            timeout=RPC_TIMEOUT,
        )
        assert response.drafter.source.startswith(str(tiny_models.target))
        swapped = traffic.mark()
        outcomes = await traffic.stop()

    assert_all_exact(outcomes, references)
    # Same name, same arms: the controller has nothing to retire.
    assert {"local/swap/2", "local/swap/4"} <= await clients.arm_names()
    # Requests started after the swap draft with the new weights, a copy of the target: every draft
    # token is accepted (the old weights, an independent model, rarely agree with it).
    fixed = [o for o in outcomes if o.plan.policy == FIXED]
    after = [o.response.stats.arms[0] for o in fixed if o.phase >= swapped]
    assert after and all(arm.drafted_tokens > 0 and arm.accepted_tokens == arm.drafted_tokens for arm in after)
    before = [o.response.stats.arms[0] for o in fixed if o.phase == 0]
    assert sum(arm.accepted_tokens for arm in before) < sum(arm.drafted_tokens for arm in before)


async def test_unload_drafter_under_traffic(clients, references):
    assert {"local/doomed/2", "local/doomed/4"} <= await clients.arm_names()
    plans = [
        # Long streams pinned to the drafter: they are mid-answer when it goes.
        Plan(FIXED, ("local/doomed/2",), long=True, pinned=True),
        Plan(FIXED, ("local/doomed/4",), long=True, pinned=True),
        Plan(UCB, ("local/doomed/4", "local/pld/3", "target-only"), long=True, pinned=True),
        # Every arm: they get the doomed arms until the controller's next refresh.
        Plan(UCB),
        Plan(UCB, stream=False),
        Plan(EXP3),
    ]
    async with Traffic(clients.generation, plans) as traffic:
        await traffic.warm()
        await traffic.freeze_pinned()
        response = await clients.draft.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="doomed"), timeout=RPC_TIMEOUT)
        assert response.unloaded
        await eventually(lambda: clients.lacks_arms_of("doomed"))
        refreshed = traffic.mark()
        outcomes = await traffic.stop()

    assert_all_exact(outcomes, references)
    # A pinned stream lost its drafter mid-answer and finished on the target alone. (A request on a
    # fixed arm pulls no other arm unless that arm's drafter failed.)
    fell_back = [
        o
        for o in outcomes
        if o.plan.pinned and o.plan.policy == FIXED and any(r.arm == "target-only" for r in o.rounds)
    ]
    assert fell_back, "no pinned stream was still drafting with the unloaded drafter when it went"
    # Requests started after the refresh are never offered the unloaded drafter's arms.
    later = [o for o in outcomes if o.phase >= refreshed]
    assert later and not any(a.arm.startswith("local/doomed/") for o in later for a in o.response.stats.arms)


async def test_load_drafter_under_traffic_adds_arms_that_get_pulled(clients, references, tiny_models):
    plans = [Plan(UCB), Plan(UCB, stream=False), Plan(EXP3), Plan(FIXED, ("local/swap/2",)), Plan(UCB, long=True)]
    new_arms = {"local/fresh/2", "local/fresh/4"}
    try:
        async with Traffic(clients.generation, plans) as traffic:
            await traffic.warm()
            response = await clients.draft.LoadDrafter(
                draft_pb2.LoadDrafterRequest(
                    name="fresh", model=draft_pb2.ModelDrafterOptions(model_path=str(tiny_models.near))
                ),
                timeout=RPC_TIMEOUT,
            )
            assert response.drafter.name == "fresh"
            await eventually(lambda: clients.has_arms(new_arms))
            refreshed = traffic.mark()
            outcomes = await traffic.stop()

        assert_all_exact(outcomes, references)
        # Requests over every arm started after the refresh are offered the new arms.
        later = [o for o in outcomes if o.phase >= refreshed and not o.plan.arms]
        assert later and all(new_arms <= {a.arm for a in o.response.stats.arms} for o in later)

        # And the new arms are pulled: alone, and by the bandit beside the target.
        prompt = PROMPTS[0]
        fixed = await clients.generate(prompt, FIXED, ["local/fresh/2"])
        bandit = await clients.generate(prompt, UCB, ["target-only", "local/fresh/4"])
        for result in (fixed, bandit):
            assert list(result.token_ids) == references[(tuple(prompt), MAX_NEW)]
        assert pulls(fixed) == {"local/fresh/2": fixed.stats.rounds}
        assert fixed.stats.arms[0].drafted_tokens > 0
        assert pulls(bandit)["local/fresh/4"] > 0
    finally:
        await clients.draft.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="fresh"), timeout=RPC_TIMEOUT)
    await eventually(lambda: clients.lacks_arms_of("fresh"))


# the CLI --------------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "banditspec.cli", "drafters", *args], capture_output=True, text=True, timeout=RPC_TIMEOUT
    )


async def test_cli_loads_replaces_lists_and_unloads(swap_stack, clients, references, tiny_models):
    address = swap_stack.address("draft")
    loaded = cli("load", "cli=prompt_lookup:1-2", "--draft", address)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("loaded cli in ")
    listed = cli("list", "--draft", address)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()}
    assert rows["cli"][1] == "DRAFTER_KIND_PROMPT_LOOKUP"
    assert {"pld", "swap", "cli"} <= set(rows)

    again = cli("load", "cli=prompt_lookup", "--draft", address)
    assert again.returncode != 0 and "ALREADY_EXISTS" in again.stderr
    # Replaced by a model drafter: another kind, so other γ values, other arms.
    replaced = cli("load", f"cli=model:{tiny_models.near}", "--replace", "--draft", address)
    assert replaced.returncode == 0, replaced.stderr
    await eventually(lambda: clients.has_arms({"local/cli/2", "local/cli/4"}))
    assert not {"local/cli/3", "local/cli/6"} & await clients.arm_names()
    response = await clients.generate(PROMPTS[1], FIXED, ["local/cli/2"])
    assert list(response.token_ids) == references[(tuple(PROMPTS[1]), MAX_NEW)]
    assert response.stats.arms[0].pulls > 0

    unloaded = cli("unload", "cli", "--draft", address)
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.strip() == "unloaded cli"
    assert "cli" not in {line.split()[0] for line in cli("list", "--draft", address).stdout.splitlines()}
    missing = cli("unload", "cli", "--draft", address)
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr
    await eventually(lambda: clients.lacks_arms_of("cli"))


# the draft service, in process ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["replace", "unload-then-load"])
async def test_successor_does_not_inherit_state_of_a_proposal_still_queued(tiny_models, target_model, how):
    """A proposal of the old drafter that waited on the model worker while the drafter was swapped
    runs after the swap cleared the sessions' state: what it leaves behind must not reach the new
    drafter of that name (a KV cache of other weights, giving it wrong drafts for the session)."""
    from services.draft.server import DraftConfig, DraftServicer
    from services.draft.specs import DrafterSpec

    servicer = DraftServicer(DraftConfig(drafters=[], device="cpu", dtype="float32"))
    context = ServicerContext()
    prompt = PROMPTS[0]

    def propose(context_length: int, new_ids: list[int]) -> draft_pb2.ProposeRequest:
        return draft_pb2.ProposeRequest(
            session_id="s", drafter="swap", num_tokens=4, context_length=context_length, new_context_ids=new_ids
        )

    gate = threading.Event()  # holds the model worker, as a busy one would
    try:
        old, _ = await servicer.load(DrafterSpec.parse(f"swap=model:{tiny_models.other}^4"))
        await servicer.Propose(propose(0, prompt), context)
        holding = asyncio.create_task(servicer.models.run(gate.wait))
        await asyncio.sleep(0)  # the hold is on the model thread before the proposal queues
        queued = asyncio.create_task(servicer.Propose(propose(len(prompt), []), context))
        successor = DrafterSpec.parse(f"swap=model:{tiny_models.target}~-1^4")  # always 4 tokens: compare whole drafts
        if how == "replace":
            swap = asyncio.create_task(servicer.load(successor, replace=True))
        else:
            swap = asyncio.create_task(servicer.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="swap"), context))
        await eventually(lambda: servicer.registry.drafters.get("swap") is not old)
        gate.set()
        await queued
        await swap
        if how != "replace":
            await servicer.load(successor)

        # The successor is a copy of the target: from a clean state it drafts the target's tokens.
        response = await servicer.Propose(propose(len(prompt), []), context)
        assert list(response.draft_ids) == reference_greedy(target_model, prompt, 4)
    finally:
        gate.set()
        await holding
        servicer.shutdown()
