"""The typed gRPC client's pure parts: requests built from keyword arguments, results read back."""

from __future__ import annotations

import pytest

from banditspec.client import Result, build_request, result_from_pb
from banditspec.v1 import generation_pb2


def test_build_request_text_chat_and_token_ids():
    text = build_request("hi", max_new_tokens=5, temperature=0.7, seed=3, stop=["\n"], policy="fixed")
    assert text.text == "hi" and text.max_new_tokens == 5 and text.seed == 3 and list(text.stop) == ["\n"]
    assert text.temperature == pytest.approx(0.7) and text.policy == generation_pb2.POLICY_FIXED
    assert not text.HasField("top_p")
    chat = build_request(messages=[{"role": "user", "content": "hello"}], allowed_arms=["local/pld/6"])
    assert chat.chat.messages[0].content == "hello" and list(chat.allowed_arms) == ["local/pld/6"]
    assert list(build_request([1, 2, 3]).token_ids.ids) == [1, 2, 3]


@pytest.mark.parametrize("kwargs", [{}, {"prompt": "x", "messages": []}, {"prompt": "x", "policy": "best"}])
def test_build_request_refuses_ambiguous_or_unknown(kwargs):
    with pytest.raises(ValueError):
        build_request(**kwargs)


def test_result_from_pb():
    stats = generation_pb2.GenerationStats(rounds=2, generated_tokens=3, policy="ucbspec", seed=9)
    stats.arms.add(arm="local/pld/6", pulls=2, drafted_tokens=6, accepted_tokens=1, mean_reward=4.5)
    pb = generation_pb2.GenerateResponse(
        request_id="r", text="a b c", token_ids=[4, 5, 6], finish_reason=generation_pb2.FINISH_REASON_EOS, stats=stats
    )
    result = result_from_pb(pb)
    assert isinstance(result, Result) and result.finish_reason == "eos" and result.token_ids == [4, 5, 6]
    assert result.stats.seed == 9 and result.stats.arms[0].pulls == 2 and result.stats.arms[0].mean_reward == 4.5
