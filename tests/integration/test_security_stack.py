"""A stack that is safe to put on a network, as real processes: TLS everywhere, mutual TLS between the
controller and the services, an API key on the controller, an admin token on the draft service, drafter
files confined to the model roots, and message limits. Plus a draft service bound to 0.0.0.0 without an
admin token, which refuses admin RPCs and says how to enable them.

Certificates come from a throwaway CA (trustme): the servers' name 127.0.0.1 and localhost, and one
client certificate that the controller and the tests present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from conftest import CPU_ARGS, RPC_TIMEOUT, local_stack, reference_greedy
from grpc_health.v1 import health_pb2, health_pb2_grpc

from banditspec.channels import open_channel
from banditspec.security import ADMIN_TOKEN_ENV, API_KEY_ENV, ClientTLS, bearer_metadata
from banditspec.v1 import draft_pb2, draft_pb2_grpc, generation_pb2, generation_pb2_grpc

pytestmark = pytest.mark.timeout(300)

ADMIN_TOKEN = "admin-7f3c9a"
API_KEY = "key-51be02"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA nobody trusts
    other_cert: Path  # a client certificate it signed
    other_key: Path

    @property
    def client(self) -> ClientTLS:
        return ClientTLS(str(self.ca), str(self.client_cert), str(self.client_key))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("banditspec-client")
    stranger = other.issue_cert("stranger")
    paths = {
        "ca": (ca.cert_pem, "ca.pem"),
        "server_cert": (server.cert_chain_pems[0], "server.pem"),
        "server_key": (server.private_key_pem, "server.key"),
        "client_cert": (client.cert_chain_pems[0], "client.pem"),
        "client_key": (client.private_key_pem, "client.key"),
        "other_ca": (other.cert_pem, "other-ca.pem"),
        "other_cert": (stranger.cert_chain_pems[0], "other.pem"),
        "other_key": (stranger.private_key_pem, "other.key"),
    }
    for blob, name in paths.values():
        blob.write_to_path(str(directory / name))
    return Certs(**{field: directory / name for field, (_, name) in paths.items()})


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("secrets")
    (directory / "admin-token").write_text(ADMIN_TOKEN + "\n")
    (directory / "api-key").write_text(API_KEY + "\n")
    for name in ("admin-token", "api-key"):
        (directory / name).chmod(0o600)
    return directory


@pytest.fixture(scope="module")
def secure_stack(tiny_models, tmp_path_factory, certs, secrets_dir):
    """Target and draft service: TLS, client certificates required. Controller: TLS (clients bring an API
    key, no certificate), mutual TLS towards the services. The draft service has an admin token."""
    mutual = [
        f"--tls-cert={certs.server_cert}",
        f"--tls-key={certs.server_key}",
        f"--tls-client-ca={certs.ca}",
    ]
    controller_args = [
        f"--tls-cert={certs.server_cert}",
        f"--tls-key={certs.server_key}",
        f"--api-key-file={secrets_dir / 'api-key'}",
        f"--upstream-tls-ca={certs.ca}",
        f"--upstream-tls-cert={certs.client_cert}",
        f"--upstream-tls-key={certs.client_key}",
        "--policy=ucbspec",
    ]
    with local_stack(
        tmp_path_factory,
        "secure-stack",
        tiny_models.target,
        ["pld=prompt_lookup:1-3:fixed"],
        controller_args,
        service_args=mutual,
        draft_args=[f"--admin-token-file={secrets_dir / 'admin-token'}"],
        client_tls=certs.client,  # the health checks while it starts
    ) as stack:
        yield stack


def controller_stub(stack, certs: Certs, tls: ClientTLS | None = None):
    channel = open_channel(stack.address("controller"), tls or ClientTLS(str(certs.ca)))
    return channel, generation_pb2_grpc.GenerationServiceStub(channel)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=RPC_TIMEOUT, **kwargs)
    return caught.value


# TLS -------------------------------------------------------------------------------------------


def test_a_generation_runs_over_tls_end_to_end(secure_stack, certs, target_model):
    """Client → controller over TLS with the API key; controller → target and draft over mutual TLS."""
    prompt = [3, 4, 5, 6, 3, 4, 5]
    channel, stub = controller_stub(secure_stack, certs)
    with channel:
        request = generation_pb2.GenerateRequest(max_new_tokens=24)
        request.token_ids.ids.extend(prompt)
        response = stub.Generate(request, timeout=RPC_TIMEOUT, metadata=bearer_metadata(API_KEY))
    assert list(response.token_ids) == reference_greedy(target_model, prompt, 24)
    assert any(arm.arm.startswith("local/pld/") for arm in response.stats.arms)  # the draft service took part


def test_plaintext_clients_are_refused(secure_stack):
    for service in ("controller", "target", "draft"):
        with grpc.insecure_channel(secure_stack.address(service)) as channel:
            error = rpc_error(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest())
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (service, error)


def test_the_services_require_a_client_certificate_from_their_ca(secure_stack, certs):
    draft = secure_stack.address("draft")
    no_cert = ClientTLS(str(certs.ca))
    strangers = ClientTLS(str(certs.ca), str(certs.other_cert), str(certs.other_key))
    for tls in (no_cert, strangers):
        with open_channel(draft, tls) as channel:
            stub = draft_pb2_grpc.DraftServiceStub(channel)
            error = rpc_error(stub.ListDrafters, draft_pb2.ListDraftersRequest())
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    with open_channel(draft, certs.client) as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        assert "pld" in {
            d.name for d in stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters
        }


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(secure_stack, certs):
    _, stub = controller_stub(secure_stack, certs, ClientTLS(str(certs.other_ca)))
    error = rpc_error(stub.ListArms, generation_pb2.ListArmsRequest(), metadata=bearer_metadata(API_KEY))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


# credentials ---------------------------------------------------------------------------------


def test_client_rpcs_need_the_api_key_and_probes_do_not(secure_stack, certs):
    channel, stub = controller_stub(secure_stack, certs)
    with channel:
        missing = rpc_error(stub.ListArms, generation_pb2.ListArmsRequest())
        assert missing.code() == grpc.StatusCode.UNAUTHENTICATED
        wrong = rpc_error(stub.ListArms, generation_pb2.ListArmsRequest(), metadata=bearer_metadata("wrong-key-93"))
        assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "wrong-key-93" not in wrong.details() and API_KEY not in wrong.details()
        stream = stub.GenerateStream(generation_pb2.GenerateRequest(text="the cat", max_new_tokens=4), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        arms = stub.ListArms(generation_pb2.ListArmsRequest(), timeout=RPC_TIMEOUT, metadata=bearer_metadata(API_KEY))
        assert arms.arms
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_admin_rpcs_need_the_admin_token(secure_stack, certs):
    with open_channel(secure_stack.address("draft"), certs.client) as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        load = draft_pb2.LoadDrafterRequest(name="adm", prompt_lookup=draft_pb2.PromptLookupOptions())
        unload = draft_pb2.UnloadDrafterRequest(name="pld")
        for call, request in ((stub.LoadDrafter, load), (stub.UnloadDrafter, unload)):
            assert rpc_error(call, request).code() == grpc.StatusCode.UNAUTHENTICATED
            wrong = rpc_error(call, request, metadata=bearer_metadata("not-the-token"))
            assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
            assert API_KEY not in wrong.details() and ADMIN_TOKEN not in wrong.details()
        # the API key is the controller's, not an admin token
        assert rpc_error(stub.LoadDrafter, load, metadata=bearer_metadata(API_KEY)).code() == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        response = stub.LoadDrafter(load, timeout=RPC_TIMEOUT, metadata=bearer_metadata(ADMIN_TOKEN))
        assert response.drafter.name == "adm"
        stub.UnloadDrafter(
            draft_pb2.UnloadDrafterRequest(name="adm"), timeout=RPC_TIMEOUT, metadata=bearer_metadata(ADMIN_TOKEN)
        )
        names = {d.name for d in stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters}
        assert names == {"pld"}


def test_the_drafters_command_speaks_tls_and_sends_the_admin_token(secure_stack, certs, secrets_dir):
    tls = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    address = ["--draft", secure_stack.address("draft")]

    def drafters(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "banditspec.cli", "drafters", *args, *address, *tls],
            capture_output=True,
            text=True,
            timeout=RPC_TIMEOUT,
            env={k: v for k, v in os.environ.items() if k not in (ADMIN_TOKEN_ENV, API_KEY_ENV)} | env,
        )

    refused = drafters("load", "cli=prompt_lookup", env={})
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
    loaded = drafters("load", "cli=prompt_lookup", env={ADMIN_TOKEN_ENV: ADMIN_TOKEN})
    assert loaded.returncode == 0, loaded.stderr
    unloaded = drafters("unload", "cli", "--admin-token-file", str(secrets_dir / "admin-token"), env={})
    assert unloaded.returncode == 0, unloaded.stderr
    assert ADMIN_TOKEN not in loaded.stdout + loaded.stderr + unloaded.stdout + unloaded.stderr


def test_the_generate_command_speaks_tls_and_sends_the_api_key(secure_stack, certs, secrets_dir):
    command = [sys.executable, "-m", "banditspec.cli", "generate", "the cat sat", "--max-new-tokens", "4", "--json"]
    command += ["--controller", secure_stack.address("controller"), "--tls-ca", str(certs.ca)]
    env = {k: v for k, v in os.environ.items() if k not in (ADMIN_TOKEN_ENV, API_KEY_ENV)}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=RPC_TIMEOUT, env=env)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr
    answered = subprocess.run(
        [*command, "--api-key-file", str(secrets_dir / "api-key")],
        capture_output=True,
        text=True,
        timeout=RPC_TIMEOUT,
        env=env,
    )
    assert answered.returncode == 0, answered.stderr
    assert len(json.loads(answered.stdout)["token_ids"]) == 4


# model roots -----------------------------------------------------------------------------------


def test_load_drafter_reads_only_inside_the_model_roots(secure_stack, certs, tiny_models, tmp_path):
    outside = Path(tempfile.mkdtemp(prefix="banditspec-outside-"))  # neither pytest's tmp nor the tiny models
    try:
        shutil.copytree(tiny_models.near, outside / "model")  # a loadable model, in the wrong place
        (tmp_path / "escape").symlink_to(outside / "model")  # inside a root, pointing out of it
        with open_channel(secure_stack.address("draft"), certs.client) as channel:
            stub = draft_pb2_grpc.DraftServiceStub(channel)
            admin = bearer_metadata(ADMIN_TOKEN)

            def load(path: Path | str) -> grpc.RpcError:
                request = draft_pb2.LoadDrafterRequest(
                    name="m", model=draft_pb2.ModelDrafterOptions(model_path=str(path))
                )
                return rpc_error(stub.LoadDrafter, request, metadata=admin)

            refusals = {
                path: load(path)
                for path in (outside / "model", outside / "no-such-model", tmp_path / "escape", "/etc", "org/hub-model")
            }
            for path, error in refusals.items():
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (path, error.details())
            # one message for every refusal, whether or not the path exists: only the echoed path differs
            assert len({error.details().replace(repr(str(path)), "PATH") for path, error in refusals.items()}) == 1
            assert "--model-root" in refusals["/etc"].details()

            datastore = draft_pb2.LoadDrafterRequest(
                name="r", retrieval=draft_pb2.RetrievalOptions(datastore_path=str(outside / "store.npz"))
            )
            assert rpc_error(stub.LoadDrafter, datastore, metadata=admin).code() == grpc.StatusCode.PERMISSION_DENIED

            # inside a root (beside the target checkpoint): loads
            inside = draft_pb2.LoadDrafterRequest(
                name="near", model=draft_pb2.ModelDrafterOptions(model_path=str(tiny_models.near))
            )
            assert stub.LoadDrafter(inside, timeout=RPC_TIMEOUT, metadata=admin).drafter.name == "near"
            stub.UnloadDrafter(draft_pb2.UnloadDrafterRequest(name="near"), timeout=RPC_TIMEOUT, metadata=admin)
    finally:
        shutil.rmtree(outside, ignore_errors=True)


# limits ----------------------------------------------------------------------------------------


def test_an_oversize_request_is_resource_exhausted(secure_stack, certs):
    channel, stub = controller_stub(secure_stack, certs)
    with channel:
        request = generation_pb2.GenerateRequest(text="the " * (5 * 1024 * 1024 // 4), max_new_tokens=1)
        error = rpc_error(stub.Generate, request, metadata=bearer_metadata(API_KEY))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()


def test_no_secret_reaches_the_logs(secure_stack):
    """After every call above (right, wrong and missing tokens): the services' logs name no secret."""
    logs = {path.name: path.read_text() for path in sorted(secure_stack.log_dir.glob("*.log"))}
    assert set(logs) == {"target.log", "draft.log", "controller.log"}
    assert '"admin_rpcs": "token"' in logs["draft.log"] or "admin_rpcs=token" in logs["draft.log"]
    for name, text in logs.items():
        assert ADMIN_TOKEN not in text and API_KEY not in text, name
        assert "wrong-key-93" not in text and "not-the-token" not in text, name


# a service exposed without an admin token --------------------------------------------------------


@pytest.fixture(scope="module")
def exposed_draft(tmp_path_factory):
    """A draft service bound to every interface (0.0.0.0), with no admin token; reached on 127.0.0.1."""
    directory = tmp_path_factory.mktemp("exposed")
    ready = directory / "ready.json"
    env = {k: v for k, v in os.environ.items() if k != ADMIN_TOKEN_ENV}
    command = [sys.executable, "-m", "banditspec.cli", "serve-draft", "--host", "0.0.0.0", "--port", "0"]
    command += [*CPU_ARGS, "--drafter", "pld=prompt_lookup", "--ready-file", str(ready)]
    with open(directory / "draft.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, (directory / "draft.log").read_text()
            assert time.monotonic() < deadline, "the exposed draft service did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{json.loads(ready.read_text())['port']}", directory / "draft.log"
    finally:
        process.terminate()
        process.wait(30)


def test_an_exposed_service_without_a_token_refuses_admin_rpcs_and_says_how_to_enable_them(exposed_draft):
    address, log = exposed_draft
    with grpc.insecure_channel(address) as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        request = draft_pb2.LoadDrafterRequest(name="x", prompt_lookup=draft_pb2.PromptLookupOptions())
        for metadata in ([], bearer_metadata("anything")):
            error = rpc_error(stub.LoadDrafter, request, metadata=metadata)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert ADMIN_TOKEN_ENV in error.details() and "--admin-token-file" in error.details()
        # everything else still works
        assert {d.name for d in stub.ListDrafters(draft_pb2.ListDraftersRequest(), timeout=RPC_TIMEOUT).drafters} == {
            "pld"
        }
    text = log.read_text()
    assert "admin RPCs are refused" in text and "plaintext on a non-loopback address" in text
