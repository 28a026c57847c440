"""The deployment files' command lines, run here (this machine has no Docker engine and no cluster): each
service's command, taken from docker/compose.yaml, from it with the TLS override, and from the Kubernetes
TLS overlay, runs as a process, with free loopback ports for the containers' fixed ones and this machine's
paths for the image's (/app/models, /cache/models, /models, /run/secrets/*, /etc/banditspec/tls/*). Every
service reaches SERVING, each health check (compose's, or the overlay's exec probes) passes, the controller
offers both draft services' arms and serves a request on a draft model, and its metrics port answers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
import yaml

from banditspec.cache import cache_dir
from banditspec.channels import open_channel
from banditspec.cli.main import build_parser
from banditspec.model_paths import MODELS_DIR
from banditspec.security import ClientTLS, bearer_metadata
from banditspec.v1 import draft_pb2, draft_pb2_grpc, generation_pb2, generation_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("target", "draft-a", "draft-b", "controller")
ADMIN_TOKEN, API_KEY = "admin-token-for-the-test", "api-key-for-the-test"
SERVICE_PORTS = {"target": 50051, "draft-a": 50052, "draft-b": 50052, "controller": 50050}  # in the containers
SECRETS_ENV = {"BANDITSPEC_ADMIN_TOKEN": ADMIN_TOKEN, "BANDITSPEC_API_KEY": API_KEY}


class Service(NamedTuple):
    argv: list[str]  # the command line after `banditspec`
    checks: list[list[str]]  # health checks: `banditspec health ...` command lines after `banditspec`
    env: dict[str, str]  # the Kubernetes Secrets' environment variables


def compose_layout(override: str | None) -> dict[str, Service]:
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    if override:
        for name, changes in yaml.safe_load((ROOT / "docker" / override).read_text())["services"].items():
            services[name] = {**services[name], **changes}
    layout = {}
    for name in SERVICES:
        check = services[name]["healthcheck"]["test"]
        assert check[:3] == ["CMD", "banditspec", "health"]
        layout[name] = Service(services[name]["command"], [check[2:]], {})
    return layout


def kubernetes_layout(overlay: str) -> dict[str, Service]:
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_deploy_files import LAYOUTS, containers

    layout = {}
    for name, _, container in containers(LAYOUTS[overlay]):
        checks = []
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[0] == "banditspec"
            checks.append(command[1:])
        env = {variable["name"]: SECRETS_ENV[variable["name"]] for variable in container.get("env", [])}
        layout[name] = Service(container["args"], checks, env)
    return layout


LAYOUTS = {
    "compose": lambda: compose_layout(None),
    "compose-secure": lambda: compose_layout("compose.secure.yaml"),
    "kubernetes-tls": lambda: kubernetes_layout("tls"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def localize(argv: list, addresses: dict[str, str], ports: dict[str, int], tmp: Path) -> list[str]:
    """A container's command line for this machine: loopback, its free ports, real paths."""
    out: list[str] = []
    for arg in map(str, argv):
        if out and out[-1] in ports:
            arg = str(ports[out[-1]])
        flag, equals, _ = arg.partition("=")
        if equals and flag in ports:
            arg = f"{flag}={ports[flag]}"
        arg = "127.0.0.1" if arg == "0.0.0.0" else arg.replace("=0.0.0.0", "=127.0.0.1")
        arg = arg.replace("--device=cuda", "--device=cpu")  # the Kubernetes target's GPU; none here
        arg = re.sub(r"\b(target|draft-a|draft-b):\d+", lambda m: addresses[m.group(1)], arg)
        arg = arg.replace("/app/models", str(MODELS_DIR)).replace("/cache/models", str(cache_dir() / "models"))
        arg = re.sub(r"(?<![\w/])/models\b", str(tmp / "models"), arg)
        out.append(arg.replace("/run/secrets/", f"{tmp}/secrets/").replace("/etc/banditspec/tls/", f"{tmp}/secrets/"))
    return out


def make_secrets(directory: Path) -> None:
    """What docs/deploy.md tells an operator to make, from a throwaway CA: docker/secrets/'s files, and the
    keys of the Kubernetes Secret banditspec-tls."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("target", "draft-a", "draft-b", "controller", "localhost", "127.0.0.1")
    client = ca.issue_cert("banditspec-controller")
    for blob, names in (
        (ca.cert_pem, ("ca.pem", "ca.crt")),
        (server.cert_chain_pems[0], ("server.pem", "tls.crt")),
        (server.private_key_pem, ("server.key", "tls.key")),
        (client.cert_chain_pems[0], ("client.pem", "client.crt")),
        (client.private_key_pem, ("client.key",)),
    ):
        for name in names:
            blob.write_to_path(str(directory / name))
    (directory / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (directory / "api-key").write_text(API_KEY + "\n")
    for path in directory.iterdir():
        path.chmod(0o600)


def banditspec(argv: list[str], log: Path, secrets_env: dict[str, str]) -> subprocess.Popen:
    env = {name: value for name, value in os.environ.items() if name not in SECRETS_ENV}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **secrets_env)
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "banditspec.cli", *argv], stdout=out, stderr=out, env=env)


def wait_ready(name: str, process: subprocess.Popen, ready: Path, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{name} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deployment_commands_serve_and_their_health_checks_pass(layout, tmp_path):
    services = LAYOUTS[layout]()
    (tmp_path / "secrets").mkdir()
    (tmp_path / "models").mkdir()
    make_secrets(tmp_path / "secrets")
    ports = {name: {"--port": free_port(), "--metrics-port": free_port()} for name in SERVICES}
    addresses = {name: f"127.0.0.1:{ports[name]['--port']}" for name in SERVICES}
    processes: list[subprocess.Popen] = []
    try:
        for group in (("target", "draft-a", "draft-b"), ("controller",)):
            started = []
            for name in group:
                argv = localize(services[name].argv, addresses, ports[name], tmp_path)
                if name == "target":
                    argv += ["--threads", "1"]
                ready, log = tmp_path / f"{name}.ready", tmp_path / f"{name}.log"
                process = banditspec([*argv, "--ready-file", str(ready)], log, services[name].env)
                processes.append(process)
                started.append((name, process, ready, log))
            for item in started:
                wait_ready(*item)
        for name in SERVICES:
            for check in services[name].checks:
                argv = localize(check, addresses, ports[name], tmp_path)
                assert argv[0] == "health" and argv[1] == f"127.0.0.1:{SERVICE_PORTS[name]}", argv
                argv[1] = addresses[name]  # the check's 127.0.0.1:PORT is the container's own port
                result = subprocess.run(
                    [sys.executable, "-m", "banditspec.cli", *argv], capture_output=True, text=True, timeout=60
                )
                assert result.returncode == 0 and "SERVING" in result.stdout, (name, check, result.stderr)

        controller = build_parser().parse_args(
            localize(services["controller"].argv, addresses, ports["controller"], tmp_path)
        )
        secure = controller.tls_cert is not None
        assert secure == (layout != "compose")
        tls = ClientTLS(ca=str(tmp_path / "secrets" / "ca.pem")) if secure else None
        metadata = bearer_metadata(API_KEY if secure else None)
        with open_channel(addresses["controller"], tls) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            arms = [a.name for a in stub.ListArms(generation_pb2.ListArmsRequest(), timeout=60, metadata=metadata).arms]
            assert any(arm.startswith("a/pld/") for arm in arms) and any(arm.startswith("b/dm/") for arm in arms)
            arm = next(arm for arm in arms if arm.startswith("b/dm/"))
            request = generation_pb2.GenerateRequest(
                text="The :mod:`json` module", max_new_tokens=16, policy=generation_pb2.POLICY_FIXED, allowed_arms=[arm]
            )
            response = stub.Generate(request, timeout=120, metadata=metadata)
            assert response.stats.generated_tokens == 16
            assert [a.arm for a in response.stats.arms if a.pulls] == [arm]
            if secure:  # the API key is required
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Generate(request, timeout=60)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        if secure:  # admin RPCs on a draft service: refused without the admin token, allowed with it
            client = ClientTLS(*(str(tmp_path / "secrets" / name) for name in ("ca.pem", "client.pem", "client.key")))
            with open_channel(addresses["draft-a"], client) as channel:
                draft = draft_pb2_grpc.DraftServiceStub(channel)
                unload = draft_pb2.UnloadDrafterRequest(name="nothing")
                with pytest.raises(grpc.RpcError) as refused:
                    draft.UnloadDrafter(unload, timeout=60)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as missing:
                    draft.UnloadDrafter(unload, timeout=60, metadata=bearer_metadata(ADMIN_TOKEN))
                assert missing.value.code() == grpc.StatusCode.NOT_FOUND, missing.value.details()
        with urllib.request.urlopen(f"http://127.0.0.1:{controller.metrics_port}/metrics", timeout=10) as page:
            service, drafter, gamma = arm.split("/")
            labels = f'draft_service="{service}",drafter="{drafter}",gamma="{gamma}"'
            assert f"spec_decode_num_drafts_total{{{labels}}}" in page.read().decode()
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
