"""Malformed requests get a clear INVALID_ARGUMENT (or the fitting status), and the services keep
serving afterwards. Every RPC has a deadline."""

from __future__ import annotations

import shutil
import uuid

import grpc
import numpy as np
import pytest
from conftest import RPC_TIMEOUT, reference_greedy

from banditspec.errors import REASON_KEY, SESSION_LOST
from banditspec.v1 import common_pb2, draft_pb2, generation_pb2, target_pb2

GOOD_PROMPT = [10, 11, 12, 13, 14]


def good_request(**fields) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(**{"max_new_tokens": 8, **fields})
    if not request.WhichOneof("prompt"):
        request.token_ids.ids.extend(GOOD_PROMPT)
    return request


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=RPC_TIMEOUT, **kwargs)
        if not hasattr(result, "SerializeToString"):  # a server stream: drain it
            list(result)
    return info.value


@pytest.fixture(scope="module")
def good_output(target_model):
    return reference_greedy(target_model, GOOD_PROMPT, 8)


@pytest.fixture
def still_serves(generation_stub, good_output):
    """After the test's bad requests, a valid request still gets the right answer."""
    yield
    response = generation_stub.Generate(good_request(), timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == good_output


# controller ------------------------------------------------------------------------------------


def token_prompt(ids, **fields):
    request = generation_pb2.GenerateRequest(**fields)
    request.token_ids.SetInParent()
    request.token_ids.ids.extend(ids)
    return request


BAD_REQUESTS = [
    pytest.param(token_prompt([], max_new_tokens=8), "empty", id="empty-token-prompt"),
    pytest.param(generation_pb2.GenerateRequest(text="   ", max_new_tokens=8), "empty", id="blank-text-prompt"),
    pytest.param(generation_pb2.GenerateRequest(max_new_tokens=8), "no prompt", id="no-prompt"),
    pytest.param(good_request(max_new_tokens=-3), "max_new_tokens", id="max-new-tokens-negative"),
    pytest.param(good_request(max_new_tokens=252), "context", id="max-new-tokens-beyond-context"),
    pytest.param(good_request(temperature=-0.5), "temperature", id="negative-temperature"),
    pytest.param(good_request(temperature=float("nan")), "temperature", id="nan-temperature"),
    pytest.param(good_request(temperature=float("inf")), "temperature", id="inf-temperature"),
    pytest.param(good_request(top_p=0.0), "top_p", id="top-p-zero"),
    pytest.param(good_request(top_p=1.5), "top_p", id="top-p-above-one"),
    pytest.param(good_request(top_k=-1), "top_k", id="negative-top-k"),
    pytest.param(good_request(allowed_arms=["local/nope/3"]), "unknown arm", id="unknown-arm"),
    pytest.param(good_request(request_id="r" * 129), "limit is 128", id="request-id-too-long"),
    pytest.param(good_request(stop=["x"] * 17), "limit is 16", id="too-many-stops"),
    pytest.param(good_request(stop=["x" * 257]), "limit is 256", id="stop-too-long"),
    pytest.param(good_request(allowed_arms=["a"] * 257), "limit is 256", id="too-many-allowed-arms"),
    pytest.param(good_request(text="cat " * 3000), "limit is 8192", id="text-too-long"),
    pytest.param(good_request(allowed_arms=["local/pld/3", "local/pld/3"]), "twice", id="duplicate-arm"),
    pytest.param(good_request(policy=99), "policy", id="unknown-policy"),
    pytest.param(token_prompt([1] * 300, max_new_tokens=4), "context", id="prompt-longer-than-context"),
    pytest.param(token_prompt([1] * 256, max_new_tokens=1), "context", id="prompt-fills-context"),
    pytest.param(token_prompt([5, 99999], max_new_tokens=4), "token ids", id="out-of-vocab-prompt"),
    pytest.param(token_prompt([5, -1], max_new_tokens=4), "token ids", id="negative-token-id"),
]


@pytest.mark.parametrize(("bad", "mentions"), BAD_REQUESTS)
@pytest.mark.usefixtures("still_serves")
def test_generate_rejects_bad_input(generation_stub, bad, mentions):
    error = rpc_error(generation_stub.Generate, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert mentions in error.details()


@pytest.mark.parametrize(("bad", "mentions"), BAD_REQUESTS[:6])
@pytest.mark.usefixtures("still_serves")
def test_generate_stream_rejects_bad_input(generation_stub, bad, mentions):
    error = rpc_error(generation_stub.GenerateStream, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert mentions in error.details()


@pytest.mark.usefixtures("still_serves")
def test_chat_prompt_without_chat_template(generation_stub):
    request = generation_pb2.GenerateRequest(max_new_tokens=4)
    request.chat.messages.add(role="user", content="the cat")
    error = rpc_error(generation_stub.Generate, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "chat template" in error.details()


@pytest.mark.usefixtures("still_serves")
def test_chat_prompt_without_content(generation_stub):
    request = generation_pb2.GenerateRequest(max_new_tokens=4)
    request.chat.messages.add(role="user", content="  ")
    error = rpc_error(generation_stub.Generate, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_prompt_plus_max_new_tokens_exactly_filling_the_context_is_served(generation_stub, target_model):
    prompt = [(7 * i) % 50 + 3 for i in range(250)]
    response = generation_stub.Generate(token_prompt(prompt, max_new_tokens=6), timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == reference_greedy(target_model, prompt, 6)


def test_unset_max_new_tokens_takes_the_default_within_the_context(generation_stub, target_model):
    """Unset (0): DEFAULT_MAX_NEW_TOKENS (256), or what the context leaves (251 of the tiny target's 256)."""
    response = generation_stub.Generate(token_prompt(GOOD_PROMPT), timeout=RPC_TIMEOUT)
    assert list(response.token_ids) == reference_greedy(target_model, GOOD_PROMPT, 256 - len(GOOD_PROMPT))


# target service --------------------------------------------------------------------------------


def open_session(target_stub, context=(3, 4, 5), temperature=0.0, seed=0) -> str:
    session = uuid.uuid4().hex
    target_stub.OpenSession(
        target_pb2.OpenSessionRequest(
            session_id=session,
            context_ids=list(context),
            sampling=common_pb2.SamplingParams(temperature=temperature),
            seed=seed,
        ),
        timeout=RPC_TIMEOUT,
    )
    return session


def test_target_verify_unknown_session_is_session_lost(target_stub):
    error = rpc_error(target_stub.Verify, target_pb2.VerifyRequest(session_id="no-such-session", context_length=3))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (REASON_KEY, SESSION_LOST) in tuple(error.trailing_metadata())


def test_target_verify_with_a_stale_context_length_is_session_lost(target_stub):
    session = open_session(target_stub)
    error = rpc_error(target_stub.Verify, target_pb2.VerifyRequest(session_id=session, context_length=7))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (REASON_KEY, SESSION_LOST) in tuple(error.trailing_metadata())
    # The session itself is intact.
    response = target_stub.Verify(target_pb2.VerifyRequest(session_id=session, context_length=3), timeout=RPC_TIMEOUT)
    assert response.context_length == 4 and len(response.token_ids) == 1


def test_target_rejects_out_of_vocab_ids(target_stub, tiny_models):
    vocab = tiny_models.vocab_size
    error = rpc_error(target_stub.OpenSession, target_pb2.OpenSessionRequest(session_id="oov", context_ids=[3, vocab]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    session = open_session(target_stub)
    for bad in ([vocab], [-1], [4, 10**6]):
        error = rpc_error(
            target_stub.Verify, target_pb2.VerifyRequest(session_id=session, context_length=3, draft_ids=bad)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    # Nothing was consumed by the rejected calls.
    response = target_stub.Verify(
        target_pb2.VerifyRequest(session_id=session, context_length=3, draft_ids=[4]), timeout=RPC_TIMEOUT
    )
    assert response.context_length == 3 + len(response.token_ids)


def test_target_rejects_bad_sessions(target_stub):
    cases = [
        (target_pb2.OpenSessionRequest(session_id="", context_ids=[3]), grpc.StatusCode.INVALID_ARGUMENT),
        (target_pb2.OpenSessionRequest(session_id="s", context_ids=[]), grpc.StatusCode.INVALID_ARGUMENT),
        (target_pb2.OpenSessionRequest(session_id="s", context_ids=[3] * 256), grpc.StatusCode.OUT_OF_RANGE),
        (
            target_pb2.OpenSessionRequest(
                session_id="s", context_ids=[3], sampling=common_pb2.SamplingParams(temperature=-1.0)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            target_pb2.OpenSessionRequest(
                session_id="s", context_ids=[3], sampling=common_pb2.SamplingParams(top_p=2.0)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        assert rpc_error(target_stub.OpenSession, request).code() == code, request


def test_target_verify_past_the_context_is_out_of_range(target_stub):
    session = open_session(target_stub, context=[3] * 250)
    error = rpc_error(
        target_stub.Verify, target_pb2.VerifyRequest(session_id=session, context_length=250, draft_ids=[4] * 8)
    )
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE


def dense(probs) -> common_pb2.TokenDistribution:
    return common_pb2.TokenDistribution(probs_f32=np.asarray(probs, dtype="<f4").tobytes())


def test_target_rejects_bad_draft_distributions(target_stub, tiny_models):
    vocab = tiny_models.vocab_size
    session = open_session(target_stub, temperature=1.0, seed=1)
    uniform = np.full(vocab, 1.0 / vocab)
    zero_at_4 = uniform.copy()
    zero_at_4[4] = 0.0
    zero_at_4 /= zero_at_4.sum()
    cases = [
        ([4, 5], [dense(uniform)]),  # one distribution for two tokens
        ([4], [dense(uniform[:-1])]),  # wrong length
        ([4], [dense(uniform * 2)]),  # does not sum to 1
        ([4], [common_pb2.TokenDistribution(token_ids=[4, vocab], probs_f32=np.asarray([0.5, 0.5], "<f4").tobytes())]),
        ([4], [dense(zero_at_4)]),  # the draft token has zero probability under its own q
    ]
    for draft_ids, probs in cases:
        error = rpc_error(
            target_stub.Verify,
            target_pb2.VerifyRequest(session_id=session, context_length=3, draft_ids=draft_ids, draft_probs=probs),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (draft_ids, error.details())
    response = target_stub.Verify(
        target_pb2.VerifyRequest(session_id=session, context_length=3, draft_ids=[4], draft_probs=[dense(uniform)]),
        timeout=RPC_TIMEOUT,
    )
    assert response.context_length == 3 + len(response.token_ids)


def test_target_release_unknown_session(target_stub):
    response = target_stub.ReleaseSession(
        target_pb2.ReleaseSessionRequest(session_id="never-opened"), timeout=RPC_TIMEOUT
    )
    assert response.released is False
    session = open_session(target_stub)
    assert target_stub.ReleaseSession(
        target_pb2.ReleaseSessionRequest(session_id=session), timeout=RPC_TIMEOUT
    ).released
    error = rpc_error(target_stub.Verify, target_pb2.VerifyRequest(session_id=session, context_length=3))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# draft service ---------------------------------------------------------------------------------


def propose(**fields) -> draft_pb2.ProposeRequest:
    defaults = dict(
        session_id=uuid.uuid4().hex, drafter="pld", num_tokens=3, context_length=0, new_context_ids=[3, 4, 3]
    )
    defaults.update(fields)
    return draft_pb2.ProposeRequest(**defaults)


def test_draft_propose_unknown_drafter_is_not_found(draft_stub):
    error = rpc_error(draft_stub.Propose, propose(drafter="no-such-drafter"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-drafter" in error.details()


def test_draft_propose_unknown_session_is_session_lost(draft_stub):
    error = rpc_error(draft_stub.Propose, propose(context_length=5, new_context_ids=[1]))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (REASON_KEY, SESSION_LOST) in tuple(error.trailing_metadata())


def test_draft_propose_bad_requests(draft_stub):
    for request in (
        propose(new_context_ids=[]),  # opening without a context
        propose(session_id=""),
        propose(num_tokens=-1),
        propose(sampling=common_pb2.SamplingParams(temperature=-1.0)),
    ):
        assert rpc_error(draft_stub.Propose, request).code() == grpc.StatusCode.INVALID_ARGUMENT, request
    response = draft_stub.Propose(propose(), timeout=RPC_TIMEOUT)
    assert list(response.draft_ids) == [4, 3]
    assert response.context_length == 3


def test_draft_sessions_sync_incrementally(draft_stub):
    session = uuid.uuid4().hex
    first = draft_stub.Propose(propose(session_id=session, new_context_ids=[3, 4, 5]), timeout=RPC_TIMEOUT)
    assert list(first.draft_ids) == [] and first.context_length == 3
    second = draft_stub.Propose(
        propose(session_id=session, context_length=3, new_context_ids=[3, 4]), timeout=RPC_TIMEOUT
    )
    assert list(second.draft_ids) == [5, 3, 4] and second.context_length == 5
    stale = rpc_error(draft_stub.Propose, propose(session_id=session, context_length=3, new_context_ids=[9]))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    released = draft_stub.ReleaseSession(draft_pb2.ReleaseDraftSessionRequest(session_id=session), timeout=RPC_TIMEOUT)
    assert released.released


def test_draft_rejects_bad_token_ids_and_keeps_the_session(draft_stub, tiny_models):
    session = uuid.uuid4().hex
    draft_stub.Propose(propose(session_id=session, drafter="near", new_context_ids=[3, 4, 5]), timeout=RPC_TIMEOUT)
    vocab = tiny_models.vocab_size
    for request in (
        propose(session_id=session, drafter="near", context_length=3, new_context_ids=[6, -7]),
        propose(session_id=session, drafter="pld", context_length=3, new_context_ids=[-1]),
        propose(session_id=session, drafter="near", context_length=3, new_context_ids=[vocab + 1000]),
        propose(session_id=session, drafter="near", context_length=3, new_context_ids=[6], num_tokens=65),
        propose(session_id=session, drafter="near", context_length=3, new_context_ids=[6], score_drafters=["pld"] * 65),
        propose(drafter="near", new_context_ids=[3, vocab]),  # opening with an id past the model's vocabulary
    ):
        error = rpc_error(draft_stub.Propose, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, error.code(), error.details())
    # Nothing above reached the session: the caller's next round, at the same length, is served.
    response = draft_stub.Propose(
        propose(session_id=session, drafter="near", context_length=3, new_context_ids=[6]), timeout=RPC_TIMEOUT
    )
    assert response.context_length == 4 and all(0 <= t < vocab for t in response.draft_ids)
    # A model-free drafter accepts ids past a model's vocabulary; a model drafter then refuses the session.
    draft_stub.Propose(propose(session_id=session, context_length=4, new_context_ids=[vocab + 5]), timeout=RPC_TIMEOUT)
    error = rpc_error(
        draft_stub.Propose, propose(session_id=session, drafter="near", context_length=5, new_context_ids=[])
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "vocabulary" in error.details()


@pytest.fixture
def weightless_model_dir(tiny_models, tmp_path):
    """A directory with a config and tokenizer but no weights."""
    directory = tmp_path / "weightless"
    shutil.copytree(tiny_models.target, directory)
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    return directory


def drafters(draft_stub) -> set[str]:
    return {d.name for d in draft_stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters}


@pytest.mark.usefixtures("still_serves")
def test_draft_load_drafter_bad_requests(draft_stub, tmp_path):
    before = drafters(draft_stub)
    model = draft_pb2.ModelDrafterOptions
    lookup = draft_pb2.PromptLookupOptions
    cases = [
        draft_pb2.LoadDrafterRequest(name="bad", model=model(model_path=str(tmp_path / "does-not-exist"))),
        draft_pb2.LoadDrafterRequest(name="bad", model=model(model_path=str(tmp_path))),  # no config.json
        draft_pb2.LoadDrafterRequest(name="bad", model=model()),  # no path
        draft_pb2.LoadDrafterRequest(name="bad"),  # no options, so no kind
        draft_pb2.LoadDrafterRequest(prompt_lookup=lookup()),  # no name
        draft_pb2.LoadDrafterRequest(name="bad", prompt_lookup=lookup(min_ngram=3, max_ngram=2)),
        draft_pb2.LoadDrafterRequest(name="bad", prompt_lookup=lookup(min_ngram=2, max_ngram=800)),
        draft_pb2.LoadDrafterRequest(name="bad", prompt_lookup=lookup(min_ngram=0)),  # set: no longer "the default"
        draft_pb2.LoadDrafterRequest(name="bad", suffix=draft_pb2.SuffixOptions(max_depth=2000)),
        draft_pb2.LoadDrafterRequest(name="bad", suffix=draft_pb2.SuffixOptions(memory_tokens=-1)),
        draft_pb2.LoadDrafterRequest(name="bad", retrieval=draft_pb2.RetrievalOptions()),  # no datastore path
        draft_pb2.LoadDrafterRequest(name="bad", model=model(model_path="x", lookahead_tokens=65)),
        draft_pb2.LoadDrafterRequest(name="bad", model=model(model_path="x", min_confidence=-1)),
        draft_pb2.LoadDrafterRequest(name="bad", model=model(model_path=str(tmp_path / "overlay"))),  # no tensors
    ]
    (tmp_path / "overlay").mkdir()
    (tmp_path / "overlay" / "overlay.json").write_text('{"target": "default", "layers": [0]}')
    for request in cases:
        error = rpc_error(draft_stub.LoadDrafter, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (request, error.code(), error.details())
    assert drafters(draft_stub) == before


@pytest.mark.usefixtures("still_serves")
def test_draft_load_drafter_bad_dtype(draft_stub, tiny_models):
    request = draft_pb2.LoadDrafterRequest(
        name="bad", model=draft_pb2.ModelDrafterOptions(model_path=str(tiny_models.target), dtype="float8")
    )
    error = rpc_error(draft_stub.LoadDrafter, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dtype" in error.details()
    assert "bad" not in drafters(draft_stub)


@pytest.mark.usefixtures("still_serves")
def test_draft_load_drafter_without_weights(draft_stub, weightless_model_dir):
    request = draft_pb2.LoadDrafterRequest(
        name="bad", model=draft_pb2.ModelDrafterOptions(model_path=str(weightless_model_dir))
    )
    error = rpc_error(draft_stub.LoadDrafter, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert "bad" not in drafters(draft_stub)


@pytest.mark.usefixtures("still_serves")
def test_draft_unload_unknown_drafter_is_not_found(draft_stub):
    error = rpc_error(draft_stub.UnloadDrafter, draft_pb2.UnloadDrafterRequest(name="no-such-drafter"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
