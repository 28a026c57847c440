"""Token trees: the draft as a tree under the last committed token (the root), and its lossless verification.

`parents[i]` is the parent of draft token i: an earlier draft index, or -1 for the root. The target feeds
the root and every node in one row; each node attends to the cached context, the root and its own
ancestors, at position root + depth. The rows of its output line up with the feed: row 0 scores the token
after the root, row i + 1 the token after node i.

Greedy: follow the child holding the target's argmax while there is one; the argmax at the last node
reached is the bonus (or correction) token.
Sampled: at a node with target distribution p, try its children in draft order, accepting child token x
with probability p(x) / (mass of p not yet rejected here); a rejected token leaves p (p(x) = 0). When
every child is rejected, the correction token comes from what is left of p; at a leaf the bonus comes from
p. This draws y ~ p and checks it against the candidates in turn, so the emitted tokens follow the target
for any candidates chosen independently of the draw (a deterministic drafter's among them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from banditspec.errors import InvalidArgument
from banditspec.sampling import argmax_rows


@dataclass(frozen=True)
class TreeVerdict:
    path: list[int]  # the accepted draft indices, root to leaf
    tokens: list[int]  # the path's tokens + the correction or bonus token

    @property
    def accepted(self) -> int:
        return len(self.path)


def check_parents(parents: list[int], draft_count: int) -> None:
    if len(parents) != draft_count:
        raise InvalidArgument(f"{len(parents)} draft parents for {draft_count} draft tokens")
    for index, parent in enumerate(parents):
        if not -1 <= parent < index:
            raise InvalidArgument(
                f"draft_parents[{index}] is {parent}: a parent must be -1 (the root) or an earlier draft index"
            )


def is_chain(parents: list[int]) -> bool:
    """Parents [-1, 0, 1, ...]: each token follows the one before it."""
    return all(parent == index - 1 for index, parent in enumerate(parents))


def depths(parents: list[int]) -> list[int]:
    """Per draft token, its depth below the root (the root's children are at 1)."""
    out: list[int] = []
    for parent in parents:
        out.append(1 if parent < 0 else out[parent] + 1)
    return out


def children(parents: list[int]) -> list[list[int]]:
    """Per feed row (0: the root, i + 1: draft token i), the draft indices of its children in draft order."""
    out: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for index, parent in enumerate(parents):
        out[parent + 1].append(index)
    return out


def feed_positions(parents: list[int], start: int) -> list[int]:
    """Positions of the feed [root, *draft]: the root at `start`, each node at start + depth."""
    return [start, *(start + depth for depth in depths(parents))]


def feed_mask(parents: list[int], start: int, device: torch.device | None = None) -> torch.Tensor:
    """[n + 1, start + n + 1] (True: may attend): every row sees the `start` cached keys, the root, its
    ancestors and itself."""
    size = len(parents) + 1
    own = [[False] * size for _ in range(size)]
    own[0][0] = True
    for index, parent in enumerate(parents):
        row = own[index + 1]
        row[:] = own[parent + 1]
        row[index + 1] = True
    cached = torch.ones(size, start, dtype=torch.bool, device=device)
    return torch.cat([cached, torch.tensor(own, dtype=torch.bool, device=device)], dim=1)


def accept_greedy(target_logits: torch.Tensor, draft_ids: list[int], parents: list[int]) -> TreeVerdict:
    """target_logits: [n + 1, V] over the feed [root, *draft]."""
    best = argmax_rows(target_logits)
    below = children(parents)
    path: list[int] = []
    row = 0
    while True:
        step = next((child for child in below[row] if draft_ids[child] == best[row]), None)
        if step is None:
            break
        path.append(step)
        row = step + 1
    return TreeVerdict(path, [*(draft_ids[node] for node in path), best[row]])


def accept_sampled(
    target_probs: torch.Tensor, draft_ids: list[int], parents: list[int], generator: torch.Generator
) -> TreeVerdict:
    """target_probs: [n + 1, V] over the feed [root, *draft], already through the session's sampling."""
    below = children(parents)
    path: list[int] = []
    row = 0
    while True:
        p = target_probs[row]
        step, rejected = _try_children(p, [draft_ids[child] for child in below[row]], generator)
        if step is None:
            break
        path.append(below[row][step])
        row = below[row][step] + 1
    last = p
    if rejected:
        last = p.clone()
        last[torch.tensor(rejected, device=p.device)] = 0.0
        # Rejecting takes leftover mass > 0; rounding can still leave none, and then p is a safe fallback.
        if float(last.sum()) <= 0:
            last = p
    token = int(torch.multinomial(last / last.sum(), 1, generator=generator))
    return TreeVerdict(path, [*(draft_ids[node] for node in path), token])


def _try_children(p: torch.Tensor, tokens: list[int], generator: torch.Generator) -> tuple[int | None, list[int]]:
    """Which candidate (index into `tokens`) the draw y ~ p lands on, and the tokens rejected before it."""
    if not tokens:
        return None, []
    mass = torch.stack([p.sum(), *p[torch.tensor(tokens, device=p.device)]]).double().tolist()
    left, at_token = mass[0], mass[1:]
    uniforms = torch.rand(len(tokens), generator=generator, device=generator.device).tolist()
    rejected: list[int] = []
    for index, (token, p_token, uniform) in enumerate(zip(tokens, at_token, uniforms, strict=True)):
        if token in rejected:
            continue  # a duplicate of a rejected sibling: p(token) is already 0
        if left > 0 and uniform * left < p_token:
            return index, rejected
        rejected.append(token)
        left -= p_token
    return None, rejected
