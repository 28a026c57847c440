"""Arms: (draft service, drafter, γ), plus the target-only arm γ = 0. A tree arm also has a token budget:
its drafter may propose a token tree of that many tokens, no deeper than γ (named SERVICE/DRAFTER/γtN)."""

from __future__ import annotations

from dataclasses import dataclass

TARGET_ONLY = "target-only"


@dataclass(frozen=True)
class Arm:
    name: str
    service: str = ""
    drafter: str = ""
    gamma: int = 0
    tree_tokens: int = 0  # > 0: a tree of up to this many tokens

    @classmethod
    def drafted(cls, service: str, drafter: str, gamma: int) -> Arm:
        return cls(f"{service}/{drafter}/{gamma}", service, drafter, gamma)

    @classmethod
    def tree(cls, service: str, drafter: str, depth: int, tokens: int) -> Arm:
        return cls(f"{service}/{drafter}/{depth}t{tokens}", service, drafter, depth, tokens)


TARGET_ONLY_ARM = Arm(TARGET_ONLY)


def choose_arms(available: list[Arm], allowed: list[str]) -> list[Arm]:
    """The request's arms, in the order given (warm-up order); every arm when `allowed` is empty."""
    if not allowed:
        return list(available)
    by_name = {arm.name: arm for arm in available}
    unknown = [name for name in allowed if name not in by_name]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(map(repr, unknown))}; available: {', '.join(by_name) or 'none'}")
    if len(set(allowed)) != len(allowed):
        raise ValueError("allowed_arms names an arm twice")
    return [by_name[name] for name in allowed]
