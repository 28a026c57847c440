"""Request limits and defaults: each limit is INVALID_ARGUMENT naming the limit, checked before tokenising."""

from __future__ import annotations

import pytest

from banditspec.errors import InvalidArgument
from banditspec.v1 import generation_pb2
from services.controller.arms import TARGET_ONLY_ARM, Arm
from services.controller.requests import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_ALLOWED_ARMS,
    MAX_REQUEST_ID_CHARS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEXT_CHARS_PER_TOKEN,
    from_pb,
)

ARMS = [TARGET_ONLY_ARM, Arm.drafted("local", "pld", 3)]


class NoTokenizer:
    def encode(self, text: str) -> list[int]:
        raise AssertionError("tokenised a request that the cheap checks should have refused")


def parse(max_context: int = 1000, **fields):
    pb = generation_pb2.GenerateRequest(**fields)
    if not pb.WhichOneof("prompt"):
        pb.token_ids.ids.extend([5, 6, 7])
    return from_pb(
        pb, tokenizer=NoTokenizer(), vocab_size=50, max_context=max_context, available_arms=ARMS,
        default_policy="ucbspec",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "mentions"),
    [
        ({"request_id": "r" * (MAX_REQUEST_ID_CHARS + 1)}, f"limit is {MAX_REQUEST_ID_CHARS}"),
        ({"stop": ["x"] * (MAX_STOP_STRINGS + 1)}, f"limit is {MAX_STOP_STRINGS}"),
        ({"stop": ["x" * (MAX_STOP_CHARS + 1)]}, f"limit is {MAX_STOP_CHARS}"),
        ({"stop": [""]}, "empty"),
        ({"allowed_arms": [f"a{i}" for i in range(MAX_ALLOWED_ARMS + 1)]}, f"limit is {MAX_ALLOWED_ARMS}"),
        ({"text": "x " * (MAX_TEXT_CHARS_PER_TOKEN * 1000)}, f"limit is {MAX_TEXT_CHARS_PER_TOKEN * 1000}"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_limits_name_themselves(fields, mentions):
    with pytest.raises(InvalidArgument, match=mentions):
        parse(**fields)


def test_limits_themselves_are_allowed():
    request = parse(
        request_id="r" * MAX_REQUEST_ID_CHARS, stop=["x" * MAX_STOP_CHARS] * MAX_STOP_STRINGS, max_new_tokens=4
    )
    assert request.request_id == "r" * MAX_REQUEST_ID_CHARS and len(request.stop) == MAX_STOP_STRINGS


def test_unset_max_new_tokens_takes_the_default_within_the_context():
    assert parse().max_new_tokens == DEFAULT_MAX_NEW_TOKENS
    assert parse(max_context=100).max_new_tokens == 97  # what a 3-token prompt leaves
    assert parse(max_new_tokens=5).max_new_tokens == 5


async def test_tree_arms_come_with_drafters_that_branch():
    from services.controller.clients import DraftClient, DrafterEntry

    client = DraftClient("local", "127.0.0.1:1")  # an aio channel: made on a running loop, never connected
    client.drafters = [DrafterEntry("pld", True, False, proposes_trees=True), DrafterEntry("dm", False, False)]
    names = [arm.name for arm in client.arms([3, 6], [4], [12, 24])]
    assert names == ["local/pld/3", "local/pld/6", "local/pld/6t12", "local/pld/6t24", "local/dm/4"]
    assert [arm.name for arm in client.arms([6], [4])] == ["local/pld/6", "local/dm/4"]  # no budgets: no trees
    await client.close()
