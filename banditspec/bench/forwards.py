"""The target's forwards during a load-test phase, from its Prometheus metrics: how many ran, how many rows
and tokens each carried, how long each took, and how much of the phase the target spent in them. They say
where a phase's throughput went: rows that missed a forward, forwards slowed by what ran beside them, or a
target left waiting. The controller's metrics add how much slower than at start-up its forward model finds
them, per part: the price it puts on a drafted token under load."""

from __future__ import annotations

import socket
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {  # the prompt tokens of sessions opened and those taken from held prefixes; waits for late rows
    "banditspec_target_prompt_tokens": "prompt_tokens",
    "banditspec_target_prompt_tokens_reused": "reused_tokens",
    "banditspec_target_gather_seconds": "gather_seconds",
    "banditspec_target_gathers_expired": "gathers_expired",
}
HISTOGRAMS = {
    "banditspec_target_forward_seconds": "seconds",
    "banditspec_target_batch_rows": "rows",
    "banditspec_target_batch_tokens": "tokens",
}


@dataclass(frozen=True)
class ForwardTotals:
    """The target's running totals: forwards, the sums of their seconds, rows and tokens, and the prompt
    tokens of the sessions opened, with those reused from held prefixes."""

    forwards: float = 0.0
    seconds: float = 0.0
    rows: float = 0.0
    tokens: float = 0.0
    prompt_tokens: float = 0.0
    reused_tokens: float = 0.0
    gather_seconds: float = 0.0
    gathers_expired: float = 0.0


SLOWDOWN = "banditspec_forward_slowdown"  # the controller's gauge, one sample per part


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def parse_totals(text: str) -> ForwardTotals:
    """Totals from a Prometheus text exposition (zeros before the first forward)."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    forwards = 0.0
    for family in text_string_to_metric_families(text):
        if family.name in COUNTERS:
            counts[COUNTERS[family.name]] = sum(s.value for s in family.samples if s.name.endswith("_total"))
        field = HISTOGRAMS.get(family.name)
        if field is None:
            continue
        for sample in family.samples:
            if sample.name == f"{family.name}_sum":
                sums[field] = sample.value
            elif sample.name == f"{family.name}_count" and field == "seconds":
                forwards = sample.value
    return ForwardTotals(forwards, sums.get("seconds", 0.0), sums.get("rows", 0.0), sums.get("tokens", 0.0), **counts)


def metrics_text(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> str:
    """A service's Prometheus exposition."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
        return response.read().decode()


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> ForwardTotals:
    return parse_totals(metrics_text(port, host, timeout))


def phase_forwards(before: ForwardTotals, after: ForwardTotals, wall_seconds: float) -> dict[str, float]:
    """What the target did between two scrapes: forwards, rows and tokens per forward, ms per forward, busy
    (the share of the phase's wall time inside forwards), the share of the prompt tokens opened that came
    from held prefixes, the share spent waiting for late rows and how many such waits ran out. Empty when no
    forward ran."""
    forwards = after.forwards - before.forwards
    if forwards <= 0:
        return {}
    seconds = after.seconds - before.seconds
    prompts = after.prompt_tokens - before.prompt_tokens
    return {
        "forwards": forwards,
        "rows_per_forward": (after.rows - before.rows) / forwards,
        "tokens_per_forward": (after.tokens - before.tokens) / forwards,
        "ms_per_forward": 1e3 * seconds / forwards,
        "busy": seconds / wall_seconds if wall_seconds > 0 else 0.0,
        "prompt_reused": (after.reused_tokens - before.reused_tokens) / prompts if prompts > 0 else 0.0,
        "gathering": (after.gather_seconds - before.gather_seconds) / wall_seconds if wall_seconds > 0 else 0.0,
        "gathers_expired": after.gathers_expired - before.gathers_expired,
    }


def parse_slowdown(text: str) -> dict[str, float]:
    """The controller's forward slow-downs by part ("fixed", "tokens"); empty where it exports none."""
    return {
        sample.labels["part"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == SLOWDOWN
        for sample in family.samples
        if "part" in sample.labels
    }


def scrape_slowdown(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> dict[str, float]:
    return parse_slowdown(metrics_text(port, host, timeout))
