"""The controller's Prometheus metrics: vLLM's `spec_decode_*` names where one exists, each arm split into
`draft_service`, `drafter` and `gamma` labels (target-only: empty service and drafter, γ 0).

acceptance rate          = rate(spec_decode_num_accepted_tokens) / rate(spec_decode_num_draft_tokens)
acceptance at position i = rate(spec_decode_num_accepted_tokens_per_pos{position="i"}) / rate(spec_decode_num_drafts)
tokens per round         = rate(banditspec_generated_tokens) / rate(spec_decode_num_drafts)
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.controller.arms import Arm

ARM = ["draft_service", "drafter", "gamma"]
NUM_DRAFTS = Counter("spec_decode_num_drafts", "Rounds (one draft + one verification)", ARM)
NUM_DRAFT_TOKENS = Counter("spec_decode_num_draft_tokens", "Draft tokens proposed", ARM)
NUM_ACCEPTED_TOKENS = Counter("spec_decode_num_accepted_tokens", "Draft tokens accepted", ARM)
ACCEPTED_PER_POSITION = Counter(
    "spec_decode_num_accepted_tokens_per_pos", "Draft tokens accepted, by position in the draft (0: first)",
    [*ARM, "position"],
)  # fmt: skip
GENERATED_TOKENS = Counter("banditspec_generated_tokens", "Verified tokens emitted", ARM)
REQUESTS = Counter("banditspec_requests", "Finished generation requests by finish reason", ["finish_reason"])
TARGET_RETRIES = Counter("banditspec_target_retries", "Calls to the target retried after UNAVAILABLE")
DRAFTER_FAILURES = Counter(
    "banditspec_drafter_failures", "Drafters that left a request (failed, too slow, or rejected)", ["service"]
)
DRAFT_SERVICE_WITHDRAWN = Gauge(
    "banditspec_draft_service_withdrawn", "1 while a draft service's circuit breaker withdraws its arms", ["service"]
)
ROUND_SECONDS = Histogram(
    "banditspec_round_seconds",
    "Wall time of a round, RPCs included",
    ARM,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.4, 1.0, 3.0),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "banditspec_time_to_first_token_seconds",
    "From the request's start to its first verified token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 6.0, 12.0, 30.0),
)
FORWARD_SLOWDOWN = Gauge(
    "banditspec_forward_slowdown",
    "How much slower than at start-up the target's batched forwards run now, as the controller's forward model "
    "fits them: part=fixed (a forward of one token per row), part=tokens (each token drafted beyond one per row)",
    ["part"],
)
REQUEST_SECONDS = Histogram(
    "banditspec_request_seconds",
    "Wall time of a finished request",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0),
)


def arm_labels(arm: Arm) -> tuple[str, str, str]:
    return arm.service, arm.drafter, str(arm.gamma)


def record_round(arm: Arm, drafted: int, accepted: int, emitted: int, seconds: float) -> None:
    labels = arm_labels(arm)
    NUM_DRAFTS.labels(*labels).inc()
    NUM_DRAFT_TOKENS.labels(*labels).inc(drafted)
    NUM_ACCEPTED_TOKENS.labels(*labels).inc(accepted)
    for position in range(accepted):
        ACCEPTED_PER_POSITION.labels(*labels, str(position)).inc()
    GENERATED_TOKENS.labels(*labels).inc(emitted)
    ROUND_SECONDS.labels(*labels).observe(seconds)


def record_forward_slowdown(fixed: float, tokens: float) -> None:
    FORWARD_SLOWDOWN.labels("fixed").set(fixed)
    FORWARD_SLOWDOWN.labels("tokens").set(tokens)


def record_request(finish_reason: str, seconds: float, first_token_seconds: float | None) -> None:
    REQUESTS.labels(finish_reason).inc()
    REQUEST_SECONDS.observe(seconds)
    if first_token_seconds is not None:
        TIME_TO_FIRST_TOKEN.observe(first_token_seconds)
