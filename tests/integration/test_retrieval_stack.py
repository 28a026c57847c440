"""Retrieval drafters loaded at runtime into a running draft service: bad datastores are
INVALID_ARGUMENT, and greedy output stays lossless."""

from __future__ import annotations

import grpc
import pytest
from conftest import RPC_TIMEOUT, list_arm_names, reference_greedy, wait_for

from banditspec.training.datastore_build import build_datastore
from banditspec.v1 import draft_pb2, generation_pb2


def test_load_drafter_with_a_bad_datastore_is_invalid_argument(draft_stub, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00" * 64)
    for path, mentions in ((tmp_path / "missing.npz", "no datastore file"), (garbage, "not a readable datastore")):
        request = draft_pb2.LoadDrafterRequest(
            name="bad-rest", retrieval=draft_pb2.RetrievalOptions(datastore_path=str(path))
        )
        with pytest.raises(grpc.RpcError) as info:
            draft_stub.LoadDrafter(request, timeout=RPC_TIMEOUT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert mentions in info.value.details() and str(path) in info.value.details()


def test_greedy_output_through_a_runtime_loaded_retrieval_drafter(
    generation_stub, draft_stub, target_model, tiny_tokenizer, tmp_path
):
    from banditspec.models import vocab_fingerprint

    prompt = [5, 9, 17, 23, 8, 30, 12]
    reference = reference_greedy(target_model, prompt, 24)
    path = tmp_path / "reference.npz"
    # The reference itself, so the drafter's guesses are right; and a decoy that shares its start.
    documents = [prompt + reference, [*prompt[:3], 40, 41, 42]]
    build_datastore(documents, vocab_fingerprint(tiny_tokenizer), "test").save(path)
    name = "rest-e2e"
    arm = f"local/{name}/6"
    response = draft_stub.LoadDrafter(
        draft_pb2.LoadDrafterRequest(name=name, retrieval=draft_pb2.RetrievalOptions(datastore_path=str(path))),
        timeout=RPC_TIMEOUT,
    )
    try:
        assert response.drafter.vocab_fingerprint == vocab_fingerprint(tiny_tokenizer)
        assert response.drafter.model_free and not response.drafter.learns_from_outputs
        assert str(path) in response.drafter.source
        wait_for(lambda: arm in list_arm_names(generation_stub), timeout=20)
        request = generation_pb2.GenerateRequest(max_new_tokens=24, allowed_arms=[arm])
        request.token_ids.ids.extend(prompt)
        result = generation_stub.Generate(request, timeout=RPC_TIMEOUT)
        assert list(result.token_ids) == reference
        (stats,) = [a for a in result.stats.arms if a.arm == arm]
        assert stats.accepted_tokens > 0
    finally:
        draft_stub.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name=name), timeout=RPC_TIMEOUT)
        wait_for(lambda: arm not in list_arm_names(generation_stub), timeout=20)
