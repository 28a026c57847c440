"""docker/compose.yaml's stack without Docker (this machine has no Docker engine): each service's command,
taken from the compose file (and from the TLS override), runs as a process here, with free loopback ports
for the containers' fixed ones and this machine's paths for the image's (/app/models, /cache/models,
/run/secrets/*). Every service reaches SERVING, each compose health check command passes, the controller
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

import grpc
import pytest
import yaml

from banditspec.cache import cache_dir
from banditspec.channels import open_channel
from banditspec.model_paths import MODELS_DIR
from banditspec.security import ClientTLS, bearer_metadata
from banditspec.v1 import generation_pb2, generation_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("target", "draft-a", "draft-b", "controller")


def compose_services(override: str | None) -> dict:
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    if override:
        for name, changes in yaml.safe_load((ROOT / "docker" / override).read_text())["services"].items():
            services[name] = {**services[name], **changes}
    return services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def localize(argv: list, addresses: dict[str, str], ports: dict[str, int], secrets: Path) -> list[str]:
    """A container's command line for this machine: loopback, its free port, real paths."""
    out: list[str] = []
    for arg in map(str, argv):
        if out and out[-1] in ("--port", "--metrics-port"):
            arg = str(ports[out[-1]])
        arg = "127.0.0.1" if arg == "0.0.0.0" else arg
        arg = re.sub(r"\b(target|draft-a|draft-b):\d+", lambda m: addresses[m.group(1)], arg)
        arg = arg.replace("/app/models", str(MODELS_DIR)).replace("/cache/models", str(cache_dir() / "models"))
        out.append(arg.replace("/run/secrets/", f"{secrets}/"))
    return out


def make_secrets(directory: Path) -> None:
    """What docs/deploy.md tells an operator to put in docker/secrets/, from a throwaway CA."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("target", "draft-a", "draft-b", "controller", "localhost", "127.0.0.1")
    client = ca.issue_cert("banditspec-controller")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(directory / "server.pem"))
    server.private_key_pem.write_to_path(str(directory / "server.key"))
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client.key"))
    (directory / "admin-token").write_text("admin-token-for-the-test\n")
    (directory / "api-key").write_text("api-key-for-the-test\n")
    for path in directory.iterdir():
        path.chmod(0o600)


def banditspec(argv: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "banditspec.cli", *argv], stdout=out, stderr=out, env=env)


def wait_ready(name: str, process: subprocess.Popen, ready: Path, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{name} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


@pytest.mark.parametrize("override", [None, "compose.secure.yaml"], ids=["plaintext", "secure"])
def test_compose_commands_serve_and_their_health_checks_pass(override, tmp_path):
    services = compose_services(override)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    if override:
        make_secrets(secrets)
    ports = {name: {"--port": free_port(), "--metrics-port": free_port()} for name in SERVICES}
    addresses = {name: f"127.0.0.1:{ports[name]['--port']}" for name in SERVICES}
    processes: list[subprocess.Popen] = []
    try:
        for group in (("target", "draft-a", "draft-b"), ("controller",)):
            started = []
            for name in group:
                argv = localize(services[name]["command"], addresses, ports[name], secrets)
                if name == "target":
                    argv += ["--threads", "1"]
                ready, log = tmp_path / f"{name}.ready", tmp_path / f"{name}.log"
                process = banditspec([*argv, "--ready-file", str(ready)], log)
                processes.append(process)
                started.append((name, process, ready, log))
            for item in started:
                wait_ready(*item)
        for name in SERVICES:  # the compose health check: CMD banditspec health 127.0.0.1:PORT ...
            check = services[name]["healthcheck"]["test"]
            assert check[:3] == ["CMD", "banditspec", "health"]
            argv = localize(check[2:], addresses, ports[name], secrets)
            argv[1] = addresses[name]  # the check's 127.0.0.1:PORT is the container's own port
            result = subprocess.run(
                [sys.executable, "-m", "banditspec.cli", *argv], capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0 and "SERVING" in result.stdout, (name, result.stderr)

        tls = ClientTLS(ca=str(secrets / "ca.pem")) if override else None
        metadata = bearer_metadata("api-key-for-the-test" if override else None)
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
            if override:  # the API key is required
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Generate(request, timeout=60)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metrics_port = ports["controller"]["--metrics-port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
            assert f'spec_decode_num_drafts_total{{arm="{arm}"}}' in page.read().decode()
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
