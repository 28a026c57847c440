"""Lossless verification of one draft against the target's distributions.

Greedy (temperature 0): accept while the draft equals the target's argmax; emit the argmax at the
first mismatch, or the bonus token after the last position.
Sampled: accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection emit a token
from norm(max(0, p_i - q_i)); if all are accepted emit a bonus token from p_{γ+1}. A deterministic
drafter is a point mass q_i = δ(x_i), which makes the test p_i(x_i) and the residual p_i without x_i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from banditspec.sampling import argmax_rows


@dataclass(frozen=True)
class Verdict:
    accepted: int
    tokens: list[int]  # accepted drafts + the correction or bonus token


def verify_greedy(target_logits: torch.Tensor, draft_ids: list[int]) -> Verdict:
    """target_logits: [γ+1, V], row i scores the token after draft position i-1."""
    best = argmax_rows(target_logits)
    accepted = 0
    while accepted < len(draft_ids) and draft_ids[accepted] == best[accepted]:
        accepted += 1
    return Verdict(accepted, [*draft_ids[:accepted], best[accepted]])


def verify_sampled(
    target_probs: torch.Tensor,
    draft_ids: list[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> Verdict:
    """target_probs: [γ+1, V]; draft_probs: [γ, V] or None for a deterministic draft."""
    gamma = len(draft_ids)
    device = target_probs.device
    positions = torch.arange(gamma, device=device)
    ids = torch.tensor(draft_ids, dtype=torch.long, device=device)
    p_at_draft = target_probs[positions, ids]
    if draft_probs is None:
        accept_prob = p_at_draft
    else:
        q_at_draft = draft_probs[positions, ids]
        if gamma and bool((q_at_draft <= 0).any()):
            raise ValueError("a draft token has zero probability under its own draft distribution")
        accept_prob = torch.clamp(p_at_draft / q_at_draft.clamp_min(1e-30), max=1.0)
    uniforms = torch.rand(gamma, generator=generator, device=generator.device).to(device)
    rejected = (uniforms >= accept_prob).nonzero()
    accepted = int(rejected[0, 0]) if rejected.numel() else gamma
    if accepted == gamma:
        last = target_probs[gamma]
    else:
        p = target_probs[accepted]
        if draft_probs is None:
            residual = p.clone()
            residual[draft_ids[accepted]] = 0.0
        else:
            residual = torch.clamp(p - draft_probs[accepted], min=0.0)
        # p == q leaves no residual mass; rejection then had probability 0, so p is a safe fallback.
        last = residual if float(residual.sum()) > 0 else p
    token = int(torch.multinomial(last / last.sum(), 1, generator=generator))
    return Verdict(accepted, [*draft_ids[:accepted], token])
