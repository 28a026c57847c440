"""What one benchmark run measures: the family presets and the resolved configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
SUFFIX = "sfx=suffix:24:off"  # memory off: earlier runs of a prompt by other methods must not leak its answer
# Nor its prefill: a released session's cache kept by the target would spare the next method's run of the same
# prompt its prefill. Sessions open at the same time still share prefixes (a chat's system prompt).
TARGET_ARGS = ("--retained-prefixes", "0")


@dataclass(frozen=True)
class Family:
    model: str
    prompts: Path
    drafters: tuple[str, ...]
    assistant: str | None = None


FAMILIES = {
    # pldf: prompt lookup that always drafts γ, as transformers' does: it wins on copy-heavy answers
    "default": Family(
        "default", BENCHMARKS_DIR / "prompts.json", ("pld=prompt_lookup", "pldf=prompt_lookup:fixed", SUFFIX)
    ),
    "pydocs": Family(
        "pydocs",
        BENCHMARKS_DIR / "pydocs_passages.json",
        ("dm=model:pydocs:draft-m", "ds=model:pydocs:draft-s", "pld=prompt_lookup", SUFFIX),
        assistant="pydocs:draft-m",
    ),
}


class Preset(TypedDict):
    dtypes: list[str]
    max_new_tokens: int
    limit: int | None  # prompts per kind (None: all)
    threads: int | None


# Full run vs --reduced (a smoke run that also feeds the test: 1 prompt per kind, short answers, float32).
# The reduced run uses one torch thread per process: the in-process model and three services on a 2-core
# machine otherwise spin-wait against each other, and a tiny model's call takes ~10x longer.
FULL: Preset = {"dtypes": ["float32", "bfloat16"], "max_new_tokens": 128, "limit": None, "threads": None}
REDUCED: Preset = {"dtypes": ["float32"], "max_new_tokens": 24, "limit": 1, "threads": 1}


@dataclass
class BenchConfig:
    family: str
    model: str
    prompts: Path
    drafters: list[str]
    assistant: str | None
    dtypes: list[str]
    max_new_tokens: int
    limit: int | None
    kinds: list[str] | None
    repeats: int
    policies: list[str]  # adaptive policies measured
    reduced: bool
    out: Path
    device: str
    threads: int | None  # torch threads of this process and the services (None: torch's default)
    seed: int
    timeout: float
    log_dir: Path
    controller_args: list[str] = field(default_factory=list)  # passed to serve-controller
    target_args: list[str] = field(default_factory=list)  # passed to serve-target

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
