"""TokenDistribution on the wire: float32 bytes, sparse when most of the vocabulary has zero mass."""

from __future__ import annotations

import numpy as np
import torch

from banditspec.v1 import common_pb2

# Sparse costs 8 bytes per kept token against 4 per vocabulary entry dense.
_SPARSE_BELOW = 0.45


def encode(probs: torch.Tensor) -> common_pb2.TokenDistribution:
    """One row of probabilities [V] → TokenDistribution."""
    row = probs.detach().to("cpu", torch.float32)
    support = torch.nonzero(row, as_tuple=True)[0]
    if support.numel() < _SPARSE_BELOW * row.numel():
        return common_pb2.TokenDistribution(
            token_ids=support.tolist(), probs_f32=row[support].numpy().astype("<f4").tobytes()
        )
    return common_pb2.TokenDistribution(probs_f32=row.numpy().astype("<f4").tobytes())


def decode(pb: common_pb2.TokenDistribution, vocab_size: int) -> torch.Tensor:
    """TokenDistribution → dense float32 [vocab_size]. Raises ValueError on malformed input."""
    values = np.frombuffer(pb.probs_f32, dtype="<f4")
    if pb.token_ids:
        if len(pb.token_ids) != len(values):
            raise ValueError(f"sparse distribution has {len(pb.token_ids)} ids but {len(values)} probabilities")
        ids = np.asarray(pb.token_ids, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"distribution names a token outside the vocabulary of {vocab_size}")
        dense = np.zeros(vocab_size, dtype=np.float32)
        dense[ids] = values
    else:
        if len(values) != vocab_size:
            raise ValueError(f"dense distribution has {len(values)} entries, vocabulary has {vocab_size}")
        dense = values.astype(np.float32)
    if not np.all(np.isfinite(dense)) or dense.min() < 0 or abs(float(dense.sum()) - 1.0) > 1e-3:
        raise ValueError("draft distribution must be finite, non-negative and sum to 1")
    return torch.from_numpy(dense)
