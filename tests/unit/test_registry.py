"""The drafter kinds' registry (one declaration per kind, round trips between spec, options and protobuf),
and the draft registry's release finish-sync: drafters that learn from outputs see exactly the finished
answer, and nothing out of step with what the service holds."""

from __future__ import annotations

import grpc
import pytest
from conftest import Aborted, ServicerContext

from banditspec.errors import InvalidArgument, SessionReleased
from banditspec.sampling import SamplingParams
from banditspec.v1 import draft_pb2
from services.draft.drafters.base import DraftSession, ModelFree, Proposal, ServiceSettings
from services.draft.drafters.kinds import KINDS
from services.draft.drafters.prompt_lookup import PromptLookupDrafter
from services.draft.registry import MAX_DRAFT_TOKENS, DrafterRegistry
from services.draft.specs import USAGE, DrafterSpec

# Spec strings of every kind, as users type them (the README's and the CLI's examples among them).
SPECS = {
    "prompt_lookup": [
        "pld=prompt_lookup",
        "pld=prompt_lookup:1-3:fixed",
        "pld=prompt_lookup:3",
        "p=prompt_lookup:fixed",
    ],
    "model": [
        "dm=model:pydocs:draft-m@bfloat16~0.3^8",
        "m=model:/x",
        "m=model:~/drafts/d@float32",
        "m=model:/x~0^0",
        "m=model:/x~-1^4",
    ],
    "suffix": ["sfx=suffix", "sfx=suffix:24:off", "sfx=suffix:off", "sfx=suffix:16:5000"],
    "retrieval": ["rest=retrieval:PATH:16", "rest=retrieval:/data/code.npz", "rest=retrieval:a:b"],
}


# the kinds ---------------------------------------------------------------------------------------


def test_every_kind_has_specs_here():
    assert set(SPECS) == set(KINDS)


@pytest.mark.parametrize("text", [text for texts in SPECS.values() for text in texts])
def test_spec_round_trips_through_options_and_protobuf(text):
    spec = DrafterSpec.parse(text)
    kind = KINDS[spec.kind]
    assert isinstance(spec.options, kind.options)
    assert kind.options.parse(text.partition("=")[2].partition(":")[2]) == spec.options
    request = spec.to_pb(replace=True)
    assert request.WhichOneof("options") == spec.kind and request.name == spec.name and request.replace
    wire = draft_pb2.LoadDrafterRequest.FromString(request.SerializeToString())
    assert DrafterSpec.from_pb(wire) == spec
    assert kind.options.from_pb(getattr(wire, spec.kind)) == spec.options


def test_unset_options_stay_unset_on_the_wire():
    request = DrafterSpec.parse("s=suffix").to_pb()
    assert request.WhichOneof("options") == "suffix"  # an all-default message still names the kind
    assert not request.suffix.HasField("max_depth") and not request.suffix.HasField("memory_tokens")
    off = DrafterSpec.parse("s=suffix:off").to_pb()
    assert off.suffix.HasField("memory_tokens") and off.suffix.memory_tokens == 0


def test_kinds_match_the_proto():
    oneof = draft_pb2.LoadDrafterRequest.DESCRIPTOR.oneofs_by_name["options"]
    assert [field.name for field in oneof.fields] == list(KINDS)
    for field in oneof.fields:
        kind = KINDS[field.name]
        assert DrafterSpec.parse(SPECS[kind.name][0]).options.to_pb().DESCRIPTOR is field.message_type
        assert draft_pb2.DrafterKind.Name(kind.enum) == f"DRAFTER_KIND_{kind.name.upper()}"


def test_usage_lists_every_kind():
    for name, kind in KINDS.items():
        assert kind.usage.startswith(f"NAME={name}") and kind.usage in USAGE
    with pytest.raises(ValueError, match="expected NAME=prompt_lookup") as info:
        DrafterSpec.parse("x=nope")
    assert all(kind.usage in str(info.value) for kind in KINDS.values())


@pytest.mark.parametrize("text", ["x", "x=", "=suffix", "x=nope", "x=model", "x=model:", "x=model:@bfloat16"])
def test_bad_specs(text):
    with pytest.raises(ValueError, match="drafter spec"):
        DrafterSpec.parse(text)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (draft_pb2.LoadDrafterRequest(name="x"), "set one of prompt_lookup, model, suffix, retrieval"),
        (draft_pb2.LoadDrafterRequest(suffix=draft_pb2.SuffixOptions()), "needs a name"),
        (draft_pb2.LoadDrafterRequest(name="x", model=draft_pb2.ModelDrafterOptions()), "needs a model path"),
        (
            draft_pb2.LoadDrafterRequest(name="x", model=draft_pb2.ModelDrafterOptions(model_path="m", dtype="")),
            "dtype",
        ),
        (draft_pb2.LoadDrafterRequest(name="x", retrieval=draft_pb2.RetrievalOptions(max_depth=8)), "datastore path"),
        (draft_pb2.LoadDrafterRequest(name="x", suffix=draft_pb2.SuffixOptions(max_depth=0)), r"\[1, 256\]"),
    ],
)
def test_bad_requests(request_, message):
    with pytest.raises(ValueError, match=message):
        DrafterSpec.from_pb(request_)


async def test_load_drafter_without_options_is_invalid_argument_and_infos_carry_the_flags():
    from services.draft.server import DraftConfig, DraftServicer

    servicer = DraftServicer(DraftConfig(drafters=[]))
    try:
        with pytest.raises(Aborted) as info:
            await servicer.LoadDrafter(draft_pb2.LoadDrafterRequest(name="x"), ServicerContext())
        assert info.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT and "set one of" in info.value.args[1]
        for text in ("pld=prompt_lookup:1-2", "sfx=suffix:8:off"):
            await servicer.LoadDrafter(DrafterSpec.parse(text).to_pb(), ServicerContext())
        listed = await servicer.ListDrafters(draft_pb2.ListDraftersRequest(), ServicerContext())
        flags = {d.name: (d.kind, d.model_free, d.learns_from_outputs) for d in listed.drafters}
        assert flags == {
            "pld": (draft_pb2.DRAFTER_KIND_PROMPT_LOOKUP, True, False),
            "sfx": (draft_pb2.DRAFTER_KIND_SUFFIX, True, True),
        }
    finally:
        servicer.shutdown()


# the draft registry ------------------------------------------------------------------------------


class Recorder(ModelFree):
    """A drafter that records what it was taught."""

    name, kind, vocab_fingerprint, source = "rec", "recorder", "", "test"
    learns_from_outputs = True

    def __init__(self) -> None:
        self.taught: list[tuple[list[int], int]] = []

    def propose(self, session: DraftSession, num_tokens: int) -> Proposal:
        raise NotImplementedError

    def finish(self, session: DraftSession) -> None:
        self.taught.append((list(session.context), session.prompt_length))


@pytest.fixture
def registry():
    registry = DrafterRegistry()
    registry.add(Recorder())
    return registry


def test_whole_finished_context_is_learned_with_its_prompt_boundary(registry):
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    assert registry.release("s", 0, [1, 2, 3, 7, 8], prompt_length=3)
    assert registry.get("rec").taught == [([1, 2, 3, 7, 8], 3)]


def test_incremental_finish_sync_extends_the_held_session(registry):
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    registry.release("s", 3, [9, 9], prompt_length=3)
    assert registry.get("rec").taught == [([1, 2, 3, 9, 9], 3)]


def test_out_of_step_sync_is_not_learned(registry):
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    assert registry.release("s", 5, [9], prompt_length=3)  # released, but not learned from
    assert registry.get("rec").taught == []
    assert "s" not in registry.sessions


def test_only_drafters_that_learn_are_taught(registry):
    class Deaf(Recorder):
        name, learns_from_outputs = "deaf", False

    registry.add(Deaf())
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    registry.release("s", 3, [9], prompt_length=3)
    assert registry.get("rec").taught == [([1, 2, 3, 9], 3)] and registry.get("deaf").taught == []


def test_a_context_never_held_needs_its_prompt_boundary(registry):
    assert not registry.release("x", 0, [1, 2, 3], prompt_length=0)
    assert registry.get("rec").taught == []
    assert not registry.release("x", 0, [1, 2, 3], prompt_length=2)  # nothing held, but learned
    assert registry.get("rec").taught == [([1, 2, 3], 2)]


def test_a_released_session_is_not_opened_again():
    """A propose that arrives after its request's release (on another call) cannot bring the session back."""
    registry = DrafterRegistry()
    registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    assert registry.release("s")
    with pytest.raises(SessionReleased):
        registry.sync("s", 0, [1, 2, 3], SamplingParams(), 0)
    assert "s" not in registry.sessions
    registry.sync("t", 0, [1, 2, 3], SamplingParams(), 0)  # other ids open as before
    assert "t" in registry.sessions


def test_num_tokens_is_bounded():
    registry = DrafterRegistry()
    pld = PromptLookupDrafter("pld")
    registry.add(pld)
    session = registry.sync("s", 0, [1, 2, 1, 2], SamplingParams(), 0)
    with pytest.raises(InvalidArgument):
        registry.propose(pld, session, MAX_DRAFT_TOKENS + 1)
    assert registry.propose(pld, session, MAX_DRAFT_TOKENS)[0].token_ids == [1, 2]


def test_a_rejected_sync_leaves_the_session_as_it_was():
    registry = DrafterRegistry(max_context=8)
    registry.add(PromptLookupDrafter("pld"))
    session = registry.sync("s", 0, [1, 2, 1, 2], SamplingParams(), 0)
    for ids, vocab_size in (([3, -1], None), ([1] * 5, None), ([3, 50], 50), ([3], 3)):
        with pytest.raises(InvalidArgument):
            registry.sync("s", 4, ids, SamplingParams(), 0, vocab_size=vocab_size)
        assert session.context == [1, 2, 1, 2]
    assert registry.sync("s", 4, [3, 49], SamplingParams(), 0, vocab_size=50).context == [1, 2, 1, 2, 3, 49]
    with pytest.raises(InvalidArgument, match="at most 8 tokens"):
        registry.sync("t", 0, list(range(9)), SamplingParams(), 0)


@pytest.mark.parametrize("name", ["a/b", "", "-x", "x y", "tab\t", "é", "x" * 65, "9\x83"])
def test_drafter_names_that_would_break_arm_names_or_logs_are_refused(name):
    with pytest.raises(ValueError):
        DrafterSpec.parse(f"{name}=prompt_lookup")
    with pytest.raises(ValueError):
        DrafterSpec.from_pb(draft_pb2.LoadDrafterRequest(name=name, prompt_lookup=draft_pb2.PromptLookupOptions()))


def test_a_kind_declares_whether_its_drafters_run_a_model():
    """The launcher places drafters by the kind's declaration, before building them: it must match the drafter."""
    assert not KINDS["model"].model_free and not DrafterSpec.parse("m=model:/x").model_free
    for text in ("pld=prompt_lookup", "sfx=suffix"):
        spec = DrafterSpec.parse(text)
        drafter = spec.build(ServiceSettings())
        assert spec.model_free and drafter.model_free and not drafter.runs_on_worker
