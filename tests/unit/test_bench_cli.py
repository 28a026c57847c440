"""`banditspec bench` options that decide what a run measures."""

from __future__ import annotations

import pytest

from banditspec.bench.cli import ADAPTIVE_POLICIES, parse_args


def test_every_adaptive_policy_is_measured_unless_told_otherwise():
    assert parse_args(["--device", "cpu"]).policies == ADAPTIVE_POLICIES
    assert parse_args(["--device", "cpu", "--policies", "ucbspec-cf, exp3spec"]).policies == ["ucbspec-cf", "exp3spec"]


def test_an_unknown_policy_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--policies", "ucbspec-cf,thompson"])
    assert "unknown --policies thompson" in capsys.readouterr().err


def test_service_arguments_pass_through_to_the_stack():
    config = parse_args(
        ["--device", "cpu", "--target-arg=--solo-threads=1", "--controller-arg=--model-free-gammas=3,6"]
    )
    assert config.target_args == ["--solo-threads=1"] and config.controller_args == ["--model-free-gammas=3,6"]
