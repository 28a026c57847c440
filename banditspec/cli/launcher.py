"""Start the three services as separate local processes and wait until they are healthy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditspec.channels import open_channel
from banditspec.security import ClientTLS


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    ready_file: Path
    address: str = ""
    http_port: int | None = None  # the controller's OpenAI-compatible HTTP API, when it serves one
    unix_address: str | None = None  # unix:PATH, when it also listens on a Unix socket


# Prompt lookup, and the suffix tree that also learns from earlier answers: together the best arms of
# the default benchmark family (README "Results"); neither costs a model forward.
DEFAULT_DRAFTERS = ("pld=prompt_lookup", "sfx=suffix")


@dataclass
class LocalStack:
    """target + one draft service + controller, each its own process, on loopback. The draft service starts
    with the draft models and takes more at runtime (`banditspec drafters load`); the model-free drafters
    run in the controller unless `model_free_in_controller` is off."""

    model: str = "default"
    drafters: list[str] = field(default_factory=lambda: list(DEFAULT_DRAFTERS))
    controller_port: int = 50050
    extra_target_args: list[str] = field(default_factory=list)
    extra_draft_args: list[str] = field(default_factory=list)
    extra_controller_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    startup_timeout: float = 600.0
    client_tls: ClientTLS | None = None  # for the health checks, when the services serve TLS
    http_port: int | None = None  # the controller's --http-port (0: a free port); None: no HTTP API
    # The controller dials the target and the draft service over Unix sockets (less per-message cost than
    # TCP loopback: RESULTS 19); plaintext stacks only, as TLS would have to name the socket's peer.
    unix_sockets: bool = True
    # Model-free drafters (prompt lookup, suffix tree, retrieval) run in the controller itself: a round on
    # them makes one RPC instead of two (RESULTS 21). Draft models always run in the draft service.
    model_free_in_controller: bool = True
    # The controller and the draft service run this much below the target's CPU priority, so that on shared
    # cores they do not preempt a forward's threads (banditspec.priority; 8 clients, target-only: 67.9 -> 87.3 tok/s).
    nice_beside_target: int = 10
    services: list[Service] = field(default_factory=list)
    _workdir: Path | None = None

    def _dir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="banditspec-stack-"))
        return self._workdir

    def _spawn(self, name: str, args: list[str]) -> Service:
        ready = self._dir() / f"{name}.ready.json"
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "banditspec.cli", *args, "--ready-file", str(ready)]
        if self.log_dir is None:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"{name}.log", "w") as log_file:  # the child keeps its own descriptor
                process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        service = Service(name, process, ready)
        self.services.append(service)
        return service

    def _target_threads(self, service_drafters: list[str]) -> list[str]:
        """The services share this machine. With no drafter in the draft service only the controller works
        beside a forward, and the target takes every core (2-core Intel VM, 8 clients: 1.3-1.5x the tokens/s
        of one thread fewer, RESULTS 27). A drafter there (a draft model's lookahead) drafts beside the
        forward, so then the target leaves it a core."""
        if "--threads" in {arg.split("=", 1)[0] for arg in self.extra_target_args}:
            return []
        cores = os.cpu_count() or 1
        return ["--threads", str(cores if not service_drafters else max(1, cores - 1))]

    def _nice(self, extra_args: list[str]) -> list[str]:
        if not self.nice_beside_target or "--nice" in {arg.split("=", 1)[0] for arg in extra_args}:
            return []
        return ["--nice", str(self.nice_beside_target)]

    def _unix_socket(self, name: str, extra_args: list[str]) -> list[str]:
        if not self.unix_sockets or self.client_tls is not None or "--unix-socket" in extra_args:
            return []
        return ["--unix-socket", str(self._dir() / f"{name}.sock")]

    def _placed_drafters(self) -> tuple[list[str], list[str]]:
        """(the draft service's drafter specs, the controller's)."""
        if not self.model_free_in_controller:
            return list(self.drafters), []
        from services.draft.specs import DrafterSpec

        in_controller = [d for d in self.drafters if DrafterSpec.parse(d).model_free]
        return [d for d in self.drafters if d not in in_controller], in_controller

    def _wait(self, service: Service) -> str:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with status {service.process.returncode} while starting")
            if service.ready_file.exists():
                ready = json.loads(service.ready_file.read_text())
                service.address, service.http_port = ready["address"], ready.get("http_port")
                service.unix_address = ready.get("unix_address")
                wait_healthy(service.address, timeout=30, tls=self.client_tls)
                return service.address
            time.sleep(0.1)
        raise TimeoutError(f"{service.name} did not become ready in {self.startup_timeout:.0f}s")

    def start(self) -> LocalStack:
        service_drafters, controller_drafters = self._placed_drafters()
        try:
            target = self._spawn(
                "target",
                [
                    "serve-target",
                    "--model",
                    self.model,
                    "--port",
                    "0",
                    *self._target_threads(service_drafters),
                    *self._unix_socket("target", self.extra_target_args),
                    *self.extra_target_args,
                ],
            )
            # One at a time: each service times its forwards and products at start-up (the target's choices
            # depend on them), and a neighbour's start-up, all the more a lower-priority one's, disturbs that.
            self._wait(target)
            draft = self._spawn(
                "draft",
                [
                    "serve-draft",
                    "--port",
                    "0",
                    *([f"--drafter={d}" for d in service_drafters] or ["--no-drafters"]),
                    *self._unix_socket("draft", self.extra_draft_args),
                    *self._nice(self.extra_draft_args),
                    *self.extra_draft_args,
                ],
            )
            self._wait(draft)
            controller = self._spawn(
                "controller",
                [
                    "serve-controller",
                    "--target",
                    target.unix_address or target.address,
                    "--draft",
                    f"local={draft.unix_address or draft.address}",
                    "--port",
                    str(self.controller_port),
                    *([] if self.http_port is None else ["--http-port", str(self.http_port)]),
                    *[f"--local-drafter={d}" for d in controller_drafters],
                    *self._nice(self.extra_controller_args),
                    *self.extra_controller_args,
                ],
            )
            self._wait(controller)
        except BaseException:
            self.stop()
            raise
        return self

    def address(self, name: str) -> str:
        return next(s.address for s in self.services if s.name == name)

    def http_url(self) -> str | None:
        """The controller's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1; None without one."""
        controller = next((s for s in self.services if s.name == "controller"), None)
        if controller is None or controller.http_port is None:
            return None
        host = controller.address.rsplit(":", 1)[0]
        return f"http://{host}:{controller.http_port}/v1"

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM each service (controller first), then wait; they drain and exit on their own."""
        for service in reversed(self.services):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in reversed(self.services):
            try:
                service.process.wait(timeout)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        self.services.clear()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_healthy(address: str, timeout: float, tls: ClientTLS | None = None) -> None:
    deadline = time.monotonic() + timeout
    with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} is not SERVING after {timeout:.0f}s")
            time.sleep(0.1)
