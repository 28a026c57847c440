"""The stack across real network links: each service in its own network namespace, one draft service
behind a link with added latency.

    sudo python -m banditspec.bench.multihost [--model default] [--delay-ms 40] [--requests 8]

Namespaces (`ip netns`) each get a veth pair to the host, which routes between them; the controller
reaches draft service `b` through a TCP proxy on the host that delays every chunk by `--delay-ms` in
each direction (this kernel has no `tc netem`; with it, a qdisc on the link would do the same). Both
draft services host the same drafters, so their arms differ only by the link. The same requests run
twice, each time through fresh draft services and a fresh controller: with the proxy passing traffic
at once, and with the delay. The report gives the share of pulls that went to `b`'s arms in each run; greedy outputs must be
identical. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from banditspec.bench.config import TARGET_ARGS
from banditspec.cli.launcher import wait_healthy
from banditspec.v1 import generation_pb2, generation_pb2_grpc

SUBNET = "10.77"
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """A network namespace with one link to the host: its address, and the host's end of the link."""

    name: str
    namespace: str
    address: str
    gateway: str


@dataclass
class Topology:
    """Namespaces joined through the host, which forwards between them. A context manager: leaving it
    deletes the namespaces (and with them the links) and restores IP forwarding."""

    names: list[str]
    hosts: dict[str, Host] = field(default_factory=dict)
    _forwarding: str = "0"

    def __enter__(self) -> Topology:
        tag = f"bs{os.getpid() % 10000}"
        self._forwarding = FORWARDING.read_text().strip()
        try:
            for index, name in enumerate(self.names, start=1):
                host = Host(name, f"{tag}-{name}", f"{SUBNET}.{index}.2", f"{SUBNET}.{index}.1")
                outside, inside = f"{tag}h{index}", f"{tag}n{index}"
                _ip("netns", "add", host.namespace)
                self.hosts[name] = host
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", host.namespace)
                _ip("addr", "add", f"{host.gateway}/24", "dev", outside)
                _ip("link", "set", outside, "up")
                for command in (
                    ("addr", "add", f"{host.address}/24", "dev", inside),
                    ("link", "set", inside, "up"),
                    ("link", "set", "lo", "up"),
                    ("route", "add", "default", "via", host.gateway),
                ):
                    _ip("netns", "exec", host.namespace, "ip", *command)
            FORWARDING.write_text("1")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        self.hosts.clear()
        with suppress(OSError):
            FORWARDING.write_text(self._forwarding)

    def command(self, name: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[name].namespace, *argv]


def namespaces_unavailable() -> str | None:
    """Why this machine cannot build the topology, or None when it can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    probe = f"bsprobe{os.getpid() % 10000}"
    result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip() or result.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class DelayProxy:
    """A TCP proxy that holds every chunk `delay` seconds before passing it on, in both directions: a
    link's one-way latency (not its bandwidth). Runs its own event loop on a thread."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen, self.upstream = listen, upstream
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)

    def __enter__(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._connection, *self.listen))
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, upstream_writer), self._pump(upstream_reader, client_writer),
            return_exceptions=True,
        )  # fmt: skip

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, data))
        finally:
            queue.put_nowait((0.0, b""))
            await sender
            writer.close()


@dataclass
class Phase:
    delay_ms: float
    pulls: Counter
    outputs: list[list[int]]
    reward_sums: Counter = field(default_factory=Counter)  # arm → Σ tokens/s over its pulled rounds

    def share(self, service: str) -> float:
        drafted = {arm: n for arm, n in self.pulls.items() if arm != "target-only"}
        total = sum(drafted.values())
        return sum(n for arm, n in drafted.items() if arm.startswith(f"{service}/")) / total if total else 0.0

    def mean_reward(self, arm: str) -> float:
        """The arm's verified tokens per second of round wall time, over all its pulls."""
        return self.reward_sums[arm] / self.pulls[arm] if self.pulls[arm] else 0.0


@contextmanager
def started(topology: Topology, name: str, argv: list[str], port: int, workdir: Path) -> Iterator[str]:
    """A service inside its namespace, bound to the namespace's address; yields that address."""
    address = f"{topology.hosts[name].address}:{port}"
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)  # a service started again writes it anew
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "banditspec.cli", *argv]
    command += ["--host", topology.hosts[name].address, "--port", str(port), "--ready-file", str(ready)]
    with open(workdir / f"{name}.log", "w") as log:
        process = subprocess.Popen(topology.command(name, command), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 600
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{(workdir / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.1)
        wait_healthy(address, timeout=60)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_requests(
    address: str, prompts: list[list[int]], max_new_tokens: int, policy: int, arms: list[str] | None = None
) -> Phase:
    """`arms`: the requests' allowed arms in warm-up order (the policy breaks ties by it); None: all."""
    pulls: Counter = Counter()
    reward_sums: Counter = Counter()
    outputs = []
    with grpc.insecure_channel(address) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        for prompt in prompts:
            request = generation_pb2.GenerateRequest(
                token_ids=generation_pb2.TokenIds(ids=prompt),
                max_new_tokens=max_new_tokens,
                policy=generation_pb2.Policy.Name(policy),
                allowed_arms=arms or [],
            )
            response = stub.Generate(request, timeout=600)
            outputs.append(list(response.token_ids))
            for arm in response.stats.arms:
                pulls[arm.arm] += arm.pulls
                reward_sums[arm.arm] += arm.mean_reward * arm.pulls
    return Phase(0.0, pulls, outputs, reward_sums)


def compare(
    model: str,
    drafters: list[str],
    prompts: list[list[int]],
    delay_ms: float,
    max_new_tokens: int,
    policy: int,
    controller_args: list[str],
    workdir: Path,
    arms: list[str] | None = None,
) -> tuple[Phase, Phase]:
    """The same requests through a fresh controller each: `b` behind the proxy without, then with, delay."""
    with Topology(["target", "a", "b", "controller"]) as topology:
        service = ["--device", "cpu"]
        drafter_flags = [f"--drafter={spec}" for spec in drafters]
        # Verify padding off: it follows measured timings, and would give the arms another γ each run.
        target_argv = ["serve-target", "--model", model, "--verify-padding", "off", *TARGET_ARGS, *service]
        with started(topology, "target", target_argv, 50051, workdir) as target:
            proxy_listen = (topology.hosts["b"].gateway, 50060)
            upstream = (topology.hosts["b"].address, 50052)
            with DelayProxy(proxy_listen, upstream) as proxy:
                phases = []
                for delay in (0.0, delay_ms):
                    proxy.delay = delay / 1e3
                    # Fresh draft services and controller per run: a drafter that learns from finished
                    # answers (the suffix tree) would otherwise know the second run's answers.
                    with (
                        started(topology, "a", ["serve-draft", *drafter_flags, *service], 50052, workdir) as draft_a,
                        started(topology, "b", ["serve-draft", *drafter_flags, *service], 50052, workdir),
                    ):
                        argv = [
                            "serve-controller", "--target", target, "--draft", f"a={draft_a}",
                            "--draft", f"b={proxy_listen[0]}:{proxy_listen[1]}", *controller_args,
                        ]  # fmt: skip
                        with started(topology, "controller", argv, 50050, workdir) as controller:
                            phase = run_requests(controller, prompts, max_new_tokens, policy, arms)
                    phase.delay_ms = delay
                    phases.append(phase)
    return phases[0], phases[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m banditspec.bench.multihost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--drafter", action="append", help="on both draft services (default: pld and sfx)")
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--policy", default="ucbspec-cf", choices=["ucbspec", "ucbspec-cf", "exp3spec"])
    parser.add_argument("--out", default="results/multihost.json")
    args = parser.parse_args(argv)
    reason = namespaces_unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    from banditspec.bench.config import FAMILIES
    from banditspec.bench.workload import load_prompts, render_prompts
    from banditspec.model_paths import resolve_model_path
    from banditspec.policy_names import POLICY_WIRE_VALUES

    family = FAMILIES["default"]
    model = str(resolve_model_path(args.model))
    prompts = load_prompts(family.prompts)
    render_prompts(prompts, AutoTokenizer.from_pretrained(model))
    ids = [p.ids for p in prompts[: args.requests]]
    drafters = args.drafter or ["pld=prompt_lookup", "sfx=suffix"]
    with tempfile.TemporaryDirectory(prefix="banditspec-multihost-") as workdir:
        plain, delayed = compare(
            model, drafters, ids, args.delay_ms, args.max_new_tokens, POLICY_WIRE_VALUES[args.policy],
            ["--warm-start", "off"], Path(workdir),
        )  # fmt: skip
    result = {
        "command": " ".join(["python -m banditspec.bench.multihost", *(argv if argv is not None else sys.argv[1:])]),
        "delay_ms": args.delay_ms,
        "share_b_without_delay": plain.share("b"),
        "share_b_with_delay": delayed.share("b"),
        "pulls_without_delay": dict(plain.pulls),
        "pulls_with_delay": dict(delayed.pulls),
        "outputs_identical": plain.outputs == delayed.outputs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if result["outputs_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
