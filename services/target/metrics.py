"""The target's Prometheus metrics: each forward (its time, rows and tokens), the sessions it holds and
how many it evicted."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.target.engine import BatchInfo
from services.target.sessions import SessionStore

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


def record_forward(batch: BatchInfo) -> None:
    FORWARD_SECONDS.observe(batch.forward_seconds)
    BATCH_ROWS.observe(batch.rows)
    BATCH_TOKENS.observe(batch.tokens)


class SessionCollector(Collector):
    """Read at scrape time from the engine's session store (None until the model is loaded)."""

    def __init__(self, store: Callable[[], SessionStore | None]) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        store = self.store()
        if store is None:
            return
        yield GaugeMetricFamily("banditspec_target_sessions", "Sessions held (each with its KV cache)", len(store))
        yield CounterMetricFamily(
            "banditspec_target_evictions", "Sessions evicted to make room for others", store.evictions
        )


def watch_sessions(store: Callable[[], SessionStore | None]) -> None:
    REGISTRY.register(SessionCollector(store))
