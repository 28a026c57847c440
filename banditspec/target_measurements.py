"""The target's start-up measurements as its Info reports them, read the same way by the controller and
the load test."""

from __future__ import annotations

from banditspec.v1 import target_pb2


def start_up_batches(pb: target_pb2.TargetInfoResponse) -> dict[tuple[int, int], float]:
    """(rows, tokens) → seconds of the batched forwards the target measured at start-up."""
    rows = list(pb.batch_forward_rows) or [tokens // 8 for tokens in pb.batch_forward_tokens]  # an older target
    return {
        (count, tokens): seconds
        for count, tokens, seconds in zip(rows, pb.batch_forward_tokens, pb.batch_forward_seconds, strict=False)
        if count > 0
    }
