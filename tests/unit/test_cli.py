"""The command line's parsing: drafters subcommands take options on either side of the spec, policy
choices come from the one policy table, and the old γ flag still works."""

from __future__ import annotations

import pytest

from banditspec.cli import build_parser
from banditspec.cli.main import _model_free_gammas, main
from banditspec.policy_names import POLICY_WIRE_VALUES


@pytest.mark.parametrize(
    "argv",
    [
        ["drafters", "load", "--draft", "h:1", "x=prompt_lookup"],
        ["drafters", "load", "x=prompt_lookup", "--draft", "h:1"],
    ],
)
def test_drafters_load_takes_options_before_or_after_the_spec(argv):
    args = build_parser().parse_args(argv)
    assert (args.action, args.spec, args.draft, args.replace) == ("load", "x=prompt_lookup", "h:1", False)


def test_drafters_list_needs_no_spec():
    args = build_parser().parse_args(["drafters", "list", "--draft", "h:1"])
    assert (args.action, args.draft) == ("list", "h:1")


def test_policy_choices_are_the_policy_table():
    parser = build_parser()
    for name in POLICY_WIRE_VALUES:
        assert parser.parse_args(["serve-controller", "--policy", name]).policy == name
    with pytest.raises(SystemExit):
        parser.parse_args(["serve-controller", "--policy", "thompson"])


def test_the_old_gamma_flag_is_a_deprecated_alias(capsys):
    parser = build_parser()
    assert _model_free_gammas(parser.parse_args(["serve-controller", "--model-free-gammas", "3,6"])) == "3,6"
    assert _model_free_gammas(parser.parse_args(["serve-controller", "--pld-gammas", "5"])) == "5"
    assert "deprecated" in capsys.readouterr().err


def test_security_flags_build_each_services_settings(tmp_path, monkeypatch):
    from banditspec.cli.main import _client_tls, _server_security
    from banditspec.security import ClientTLS, ServerTLS

    parser = build_parser()
    controller = parser.parse_args(["serve-controller"])
    assert _server_security(controller).max_receive_bytes == 4 * 1024 * 1024  # clients: a few MiB
    assert _server_security(controller).tls is None  # plaintext unless configured
    target = parser.parse_args(["serve-target", "--max-message-mib", "128"])
    assert _server_security(target).max_receive_bytes == 128 * 1024 * 1024
    tls = ["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"]
    draft = parser.parse_args(["serve-draft", "--model-root", "/a", "--model-root=/b", *tls, "--admin-token-file", "t"])
    assert draft.model_root == ["/a", "/b"] and draft.admin_token_file == "t"
    assert _server_security(draft).tls == ServerTLS("c", "k", "ca")
    assert _server_security(draft).max_receive_bytes == 64 * 1024 * 1024
    generate = parser.parse_args(["generate", "hi", "--tls-ca", "ca", "--tls-cert", "c", "--tls-key", "k"])
    assert _client_tls(generate) == ClientTLS("ca", "c", "k")
    assert _client_tls(parser.parse_args(["drafters", "list"])) is None
    assert parser.parse_args(["up", "--model-root", "/m"]).model_root == ["/m"]


def test_every_service_takes_drain_seconds_and_the_controller_a_draft_deadline():
    parser = build_parser()
    for command in ("serve-target", "serve-draft", "serve-controller"):
        assert parser.parse_args([command]).drain_seconds == 10.0
        assert parser.parse_args([command, "--drain-seconds", "2.5"]).drain_seconds == 2.5
    assert parser.parse_args(["serve-controller"]).draft_deadline == 3.0
    assert parser.parse_args(["serve-controller", "--draft-deadline", "0.5"]).draft_deadline == 0.5
    for bad in (["serve-controller", "--draft-deadline", "0"], ["serve-target", "--drain-seconds", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_health_exits_zero_only_when_serving(capsys, monkeypatch):
    """`banditspec health ADDRESS`, the container health check, against an in-process health servicer."""
    # main() configures logging to print to the stderr of the moment, which capsys replaces and then closes
    monkeypatch.setattr("banditspec.logs.configure", lambda *args, **kwargs: None)
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from banditspec.cli.main import main

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        servicer.set("banditspec.v1.TargetService", health_pb2.HealthCheckResponse.NOT_SERVING)
        main(["health", address])
        assert "SERVING" in capsys.readouterr().out
        with pytest.raises(SystemExit, match="NOT_SERVING"):
            main(["health", address, "--service", "banditspec.v1.TargetService"])
        with pytest.raises(SystemExit, match="NOT_FOUND"):
            main(["health", address, "--service", "banditspec.v1.Nothing"])
    finally:
        server.stop(None)
    with pytest.raises(SystemExit, match="unhealthy"):
        main(["health", address, "--timeout", "0.5"])


def test_the_local_stack_runs_model_free_drafters_in_the_controller():
    from banditspec.cli.launcher import LocalStack

    drafters = ["pld=prompt_lookup", "dm=model:/x", "sfx=suffix:24"]
    assert LocalStack(drafters=drafters)._placed_drafters() == (["dm=model:/x"], ["pld=prompt_lookup", "sfx=suffix:24"])
    assert LocalStack(drafters=drafters, model_free_in_controller=False)._placed_drafters() == (drafters, [])
    args = build_parser().parse_args(["demo", "--model-free-in-service"])
    assert args.model_free_in_service


def test_the_local_stack_runs_the_controller_and_the_draft_service_below_the_targets_priority():
    from banditspec.cli.launcher import LocalStack

    assert LocalStack()._nice([]) == ["--nice", "10"]
    assert LocalStack()._nice(["--nice=3"]) == []  # the caller's own choice stands
    assert LocalStack(nice_beside_target=0)._nice([]) == []
    for command in ("serve-target", "serve-draft", "serve-controller"):
        assert build_parser().parse_args([command, "--nice", "7"]).nice == 7
        assert build_parser().parse_args([command]).nice == 0
    with pytest.raises(SystemExit, match="--nice"):
        main(["serve-controller", "--nice", "20"])


def test_the_local_target_takes_every_core_unless_a_drafter_runs_beside_it(monkeypatch):
    from banditspec.cli.launcher import LocalStack

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert LocalStack()._target_threads([]) == ["--threads", "4"]
    assert LocalStack()._target_threads(["dm=model:/x"]) == ["--threads", "3"]
    assert LocalStack(extra_target_args=["--solo-threads=3"])._target_threads([]) == ["--threads", "4"]
    assert LocalStack(extra_target_args=["--threads", "2"])._target_threads([]) == []
    assert LocalStack(extra_target_args=["--threads=2"])._target_threads(["dm=model:/x"]) == []
    target = build_parser().parse_args(["serve-target", "--solo-threads", "2"])
    assert (target.threads, target.solo_threads) == (0, 2)
