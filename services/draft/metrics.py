"""The draft service's Prometheus metrics: proposals per drafter (time, and how many shared a batched
forward), the sessions it holds, and lookahead hits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.draft.registry import DrafterRegistry

PROPOSAL_SECONDS = Histogram(
    "banditspec_draft_proposal_seconds",
    "Compute time of a proposal (for a batched model drafter: its batch's)",
    ["drafter"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 1.0),
)
BATCH_SIZE = Histogram(
    "banditspec_draft_batch_proposals",
    "Proposals that ran as one batch on the model thread",
    ["drafter"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)


class RegistryCollector(Collector):
    """Read at scrape time: sessions held, and each drafter's lookahead hits."""

    def __init__(self, registry: Callable[[], DrafterRegistry]) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        registry = self.registry()
        yield GaugeMetricFamily("banditspec_draft_sessions", "Sessions held", len(registry.sessions))
        hits = CounterMetricFamily(
            "banditspec_draft_lookahead_hits", "Proposals answered from a lookahead", labels=["drafter"]
        )
        for drafter in registry.drafters.values():
            if drafter.looks_ahead:
                hits.add_metric([drafter.name], drafter.lookahead_hits)
        yield hits


def watch_registry(registry: Callable[[], DrafterRegistry]) -> None:
    REGISTRY.register(RegistryCollector(registry))
