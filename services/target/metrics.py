"""The target's Prometheus metrics: each forward (its time, rows and tokens), the sessions it holds, how
many it evicted, and how much of the prompts it opened came from prefixes it held."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.target.engine import BatchInfo, TargetEngine

FORWARD_SECONDS = Histogram(
    "banditspec_target_forward_seconds",
    "Time of one forward (a batch of verify and prefill rows)",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.3, 0.5, 1.0, 3.0),
)
BATCH_ROWS = Histogram(
    "banditspec_target_batch_rows", "Sessions' rows in one forward", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
BATCH_TOKENS = Histogram(
    "banditspec_target_batch_tokens",
    "Tokens in one forward, padding included",
    buckets=(1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512),
)
GATHER_SECONDS = Counter(
    "banditspec_target_gather_seconds", "Time forwards waited for sessions whose next round was on its way"
)
GATHERS_EXPIRED = Counter(
    "banditspec_target_gathers_expired", "Waits that ran out with a session still missing (it joins a later forward)"
)


def record_gather(seconds: float, expired: bool) -> None:
    GATHER_SECONDS.inc(seconds)
    if expired:
        GATHERS_EXPIRED.inc()


def record_forward(batch: BatchInfo) -> None:
    FORWARD_SECONDS.observe(batch.forward_seconds)
    BATCH_ROWS.observe(batch.rows)
    BATCH_TOKENS.observe(batch.tokens)


class SessionCollector(Collector):
    """Read at scrape time from the engine (None until the model is loaded)."""

    def __init__(self, engine: Callable[[], TargetEngine | None]) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self.engine()
        if engine is None:
            return
        store = engine.sessions
        yield GaugeMetricFamily("banditspec_target_sessions", "Sessions held (each with its KV cache)", len(store))
        yield CounterMetricFamily(
            "banditspec_target_evictions", "Sessions evicted to make room for others", store.evictions
        )
        if engine.prefixes is None:
            return
        stats = engine.prefixes.stats
        yield CounterMetricFamily(
            "banditspec_target_prompt_tokens", "Prompt tokens of the sessions opened (their last token excepted)",
            stats.prompt_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "banditspec_target_prompt_tokens_reused",
            "Of those, tokens whose keys and values came from a held prefix instead of a forward",
            stats.reused_tokens,
        )
        yield GaugeMetricFamily(
            "banditspec_target_retained_prefixes", "Released sessions' caches kept for reuse", engine.prefixes.retained
        )


def watch_engine(engine: Callable[[], TargetEngine | None]) -> None:
    REGISTRY.register(SessionCollector(engine))
