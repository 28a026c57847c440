"""The bandit policies by name, as users write them, and their values in the API's `Policy` enum.

One table for the CLI's choices, the controller's request validation and the bench.
"""

from __future__ import annotations

from banditspec.v1 import generation_pb2

POLICY_WIRE_VALUES: dict[str, int] = {
    "ucbspec": generation_pb2.POLICY_UCBSPEC,
    "ucbspec-cf": generation_pb2.POLICY_UCBSPEC_COUNTERFACTUAL,
    "exp3spec": generation_pb2.POLICY_EXP3SPEC,
    "fixed": generation_pb2.POLICY_FIXED,
    "uniform": generation_pb2.POLICY_UNIFORM,
}
POLICY_NAMES: dict[int, str] = {value: name for name, value in POLICY_WIRE_VALUES.items()}
# Measured best on the default family; at temperature > 0 it is plain UCBSpec (nothing to score against).
DEFAULT_POLICY = "ucbspec-cf"
# Learns from unpulled arms at temperature 0 (counterfactual scoring of model-free drafts).
COUNTERFACTUAL_POLICIES = frozenset({"ucbspec-cf"})
