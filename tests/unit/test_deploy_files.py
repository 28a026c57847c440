"""The deployment files, checked without Docker or a cluster (this machine has neither): the images'
Dockerfiles, the compose stack and its overrides, Prometheus' scrape targets, and the Kubernetes manifests,
validated against the Kubernetes JSON schemas of a pinned version. Every command line in them is parsed by
banditspec's own argument parser, so a renamed or removed flag fails here, not at a deployment."""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from banditspec.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = ROOT / "deploy" / "kubernetes" / "base"
K8S_TLS = ROOT / "deploy" / "kubernetes" / "tls"
KUBERNETES_VERSION = "1.33.0"  # the schemas the manifests are validated against (bundled by kubernetes-validate)
SERVICE_PORTS = {"serve-target": 50051, "serve-draft": 50052, "serve-controller": 50050}
HEALTH_NAMES = {
    "serve-target": "banditspec.v1.TargetService",
    "serve-draft": "banditspec.v1.DraftService",
    "serve-controller": "banditspec.v1.GenerationService",
}


def parse(argv: list[str]) -> argparse.Namespace:
    """A command line as `banditspec` would parse it; an unknown flag or a bad value fails the test."""
    try:
        return build_parser().parse_args([str(arg) for arg in argv])
    except SystemExit as error:
        raise AssertionError(f"banditspec cannot parse {argv}") from error


def has_flag(command: str, flag: str) -> bool:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return flag in subparsers.choices[command]._option_string_actions


# compose --------------------------------------------------------------------------------------------


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def merge(base: Any, override: Any) -> Any:
    """Compose's merge, as far as these files need it: mappings merge key by key, anything else
    (command, healthcheck test, secrets lists) is replaced by the override."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def compose(*overrides: str) -> dict[str, Any]:
    config = load_yaml(DOCKER / "compose.yaml")
    for name in overrides:
        config = merge(config, load_yaml(DOCKER / name))
    return config


STACKS = {
    "cpu": compose(),
    "cuda": compose("compose.cuda.yaml"),
    "secure": compose("compose.secure.yaml"),
    "secure+cuda": compose("compose.secure.yaml", "compose.cuda.yaml"),
}
BANDITSPEC_SERVICES = ("target", "draft-a", "draft-b", "controller")


@pytest.mark.parametrize("stack", STACKS)
def test_compose_runs_target_two_drafts_controller_and_prometheus(stack):
    services = STACKS[stack]["services"]
    assert set(services) == {*BANDITSPEC_SERVICES, "prometheus"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert service.get("command"), name
        assert service["healthcheck"]["test"][0] == "CMD", name
        for field in ("interval", "timeout", "retries", "start_period"):
            assert field in service["healthcheck"], (name, field)


@pytest.mark.parametrize("stack", STACKS)
def test_compose_commands_parse_and_health_checks_probe_the_served_port(stack):
    services = STACKS[stack]["services"]
    for name in BANDITSPEC_SERVICES:
        service = services[name]
        args = parse(service["command"])
        assert args.command in SERVICE_PORTS, name
        assert args.host == "0.0.0.0", f"{name} must listen beyond the container's loopback"
        assert str(args.port) in service["expose"], name
        assert service["environment"]["BANDITSPEC_HEALTH_PORT"] == str(args.port), name
        check = parse(service["healthcheck"]["test"][2:])  # CMD banditspec health ...
        assert check.command == "health" and check.address == f"127.0.0.1:{args.port}", name
        if args.tls_cert:  # a TLS server is checked over TLS, with a client certificate where one is required
            assert check.tls_ca, name
            if args.tls_client_ca:
                assert check.tls_cert and check.tls_key, name
        else:
            assert not check.tls_ca, name


def controller_upstreams(args: argparse.Namespace) -> list[str]:
    return [args.target, *(draft.partition("=")[2] for draft in args.draft)]


@pytest.mark.parametrize("stack", STACKS)
def test_compose_controller_reaches_the_services_it_waits_for(stack):
    services = STACKS[stack]["services"]
    args = parse(services["controller"]["command"])
    upstreams = controller_upstreams(args)
    assert [address.partition(":")[0] for address in upstreams] == ["target", "draft-a", "draft-b"]
    for address in upstreams:
        host, _, port = address.partition(":")
        assert parse(services[host]["command"]).port == int(port), address
        assert services["controller"]["depends_on"][host] == {"condition": "service_healthy"}
    assert services["prometheus"]["depends_on"]["controller"] == {"condition": "service_healthy"}
    assert [p.rsplit(":", 1)[1] for p in services["controller"]["ports"]] == [str(args.port)]
    if args.tls_cert or args.upstream_tls_ca:
        # certificates name the hosts the controller dials and the health checks' 127.0.0.1 (compose.secure.yaml)
        assert args.upstream_tls_ca and args.upstream_tls_cert and args.upstream_tls_key


@pytest.mark.parametrize("stack", STACKS)
def test_only_the_target_reserves_a_gpu_and_only_in_the_cuda_override(stack):
    services = STACKS[stack]["services"]
    gpu = stack.endswith("cuda")
    for name, service in services.items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if name == "target" and gpu:
            assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
            assert service["build"]["dockerfile"] == "docker/Dockerfile.cuda"
            assert (ROOT / service["build"]["dockerfile"]).exists()
            assert "command" not in load_yaml(DOCKER / "compose.cuda.yaml")["services"]["target"]
            assert parse(service["command"]).device == "auto"  # takes the GPU; the command combines with TLS
        else:
            assert not devices, name
            if name in BANDITSPEC_SERVICES:
                assert getattr(parse(service["command"]), "device", "auto") == "auto", name


def test_secure_override_secrets_are_declared_and_given_to_the_services_that_read_them():
    config = STACKS["secure"]
    declared = config["secrets"]
    assert all(spec["file"].startswith("./secrets/") for spec in declared.values())
    for name in BANDITSPEC_SERVICES:
        service = config["services"][name]
        used = set(
            re.findall(r"/run/secrets/([\w.-]+)", " ".join([*service["command"], *service["healthcheck"]["test"]]))
        )
        assert used == set(service["secrets"]), name
        assert used <= set(declared), name
        args = parse(service["command"])
        assert args.tls_cert and args.tls_key, name
        if args.command == "serve-draft":
            assert args.admin_token_file, name
        elif args.command == "serve-controller":
            assert args.api_key_file and args.upstream_tls_ca, name
        else:
            assert args.tls_client_ca, name
    assert "/docker/secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_prometheus_scrapes_every_service_on_its_metrics_port():
    services = STACKS["cpu"]["services"]
    scrape = load_yaml(DOCKER / "prometheus.yml")
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {t.partition(":")[0] for t in targets} == set(BANDITSPEC_SERVICES)
    assert services["prometheus"]["volumes"] == ["./prometheus.yml:/etc/prometheus/prometheus.yml:ro"]
    for name in BANDITSPEC_SERVICES:
        args = parse(services[name]["command"])
        port = getattr(args, "metrics_port", None)
        if port is None:
            # the target and draft services scrape as down until they have the flag; once they do, use it
            assert not has_flag(args.command, "--metrics-port"), f"{name}: pass --metrics-port 9100 in compose"
            assert f"{name}:9100" in targets
        else:
            assert f"{name}:{port}" in targets and str(port) in services[name]["expose"]


# images ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_images_are_multi_stage_non_root_and_carry_the_models(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    instructions = [line for line in text.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert len(froms) >= 2 and " AS build" in froms[0]
    final = instructions[instructions.index(froms[-1]) :]
    user = next(line for line in final if line.startswith("USER ")).split()[1]
    assert user.split(":")[0] not in ("0", "root")
    assert "COPY models ./models" in text and "COPY --from=build /app /app" in text
    assert "ensure_default_model()" in text, "the default model is converted at build time"
    assert "HF_HUB_OFFLINE=1" in text and "BANDITSPEC_CACHE=/cache" in text
    assert re.search(r"pip install \$\{TORCH_INDEX_ARGS\} \"\$\{TORCH_SPEC\}\"", text)
    assert re.search(r"ARG TORCH_SPEC=torch==[\d.]+\n", text), "torch pinned"
    healthcheck = next(line for line in final if line.startswith("HEALTHCHECK "))
    assert 'CMD banditspec health "127.0.0.1:${BANDITSPEC_HEALTH_PORT}"' in healthcheck
    cmd = next(line for line in final if line.startswith("CMD ["))
    args = parse(json.loads(cmd.removeprefix("CMD ")))
    default_port = re.search(r"BANDITSPEC_HEALTH_PORT=(\d+)", text)
    assert default_port and args.port == int(default_port.group(1))
    assert (args.device == "cuda") == dockerfile.endswith(".cuda")


def test_dockerignore_sends_only_what_the_images_copy():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "**"
    assert {"!pyproject.toml", "!README.md", "!banditspec/", "!services/", "!models/"} <= set(lines)


# Kubernetes ------------------------------------------------------------------------------------------


def manifests() -> list[dict[str, Any]]:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    files = [K8S / name for name in kustomization["resources"]]
    assert sorted(files) == sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]


def json_patch(doc: dict[str, Any], operations: list[dict[str, Any]]) -> None:
    """RFC 6902 add and replace, as the TLS overlay uses them (kustomize applies them the same way)."""
    for operation in operations:
        *parents, last = operation["path"].split("/")[1:]
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if operation["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), operation["value"])
        elif operation["op"] in ("add", "replace"):
            assert operation["op"] == "add" or last in node, operation["path"]
            node[last] = operation["value"]
        else:
            raise AssertionError(f"unexpected patch operation {operation}")


def tls_manifests() -> list[dict[str, Any]]:
    """The base with the TLS overlay's patches applied, as `kubectl apply -k deploy/kubernetes/tls` would."""
    kustomization = load_yaml(K8S_TLS / "kustomization.yaml")
    assert kustomization["resources"] == ["../base"]
    docs = copy.deepcopy(manifests())
    assert sorted(patch["path"] for patch in kustomization["patches"]) == sorted(
        p.name for p in K8S_TLS.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    for patch in kustomization["patches"]:
        target = patch["target"]
        matched = [
            doc
            for doc in docs
            if doc["kind"] == target["kind"] and re.fullmatch(target["name"], doc["metadata"]["name"])
        ]
        assert matched, patch
        for doc in matched:
            json_patch(doc, load_yaml(K8S_TLS / patch["path"]))
    return docs


DOCS = manifests()
LAYOUTS = {"base": DOCS, "tls": tls_manifests()}


def of_kind(kind: str, docs: list[dict[str, Any]] = DOCS) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.mark.parametrize(
    "doc",
    [*DOCS, *(doc for doc in LAYOUTS["tls"] if doc["kind"] == "Deployment")],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_manifest_is_valid_against_the_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert doc["metadata"].get("namespace", "banditspec") == "banditspec"


def test_schema_validation_catches_a_misspelt_field():
    deployment = copy.deepcopy(of_kind("Deployment")["target"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def containers(docs: list[dict[str, Any]] = DOCS) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [
        (name, deployment["spec"]["template"]["spec"], container)
        for name, deployment in of_kind("Deployment", docs).items()
        for container in deployment["spec"]["template"]["spec"]["containers"]
    ]


def test_deployments_are_the_three_services_and_their_args_parse():
    commands = {name: parse(container["args"]).command for name, _, container in containers()}
    assert commands == {
        "target": "serve-target",
        "draft-a": "serve-draft",
        "draft-b": "serve-draft",
        "controller": "serve-controller",
    }
    services = of_kind("Service")
    controller = parse(next(c["args"] for n, _, c in containers() if n == "controller"))
    for address in controller_upstreams(controller):
        host, _, port = address.partition(":")
        assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]], address


@pytest.mark.parametrize("name", ["target", "draft-a", "draft-b", "controller"])
def test_probes_are_native_grpc_health_probes_on_the_served_port(name):
    _, _, container = next(item for item in containers() if item[0] == name)
    args = parse(container["args"])
    assert args.host == "0.0.0.0" and args.port == SERVICE_PORTS[args.command]
    assert {"name": "grpc", "containerPort": args.port, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.port, probe
    assert container["readinessProbe"]["grpc"]["service"] == HEALTH_NAMES[args.command]
    assert "service" not in container["livenessProbe"]["grpc"]  # the whole server
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert not args.tls_cert, "kubelet's gRPC probes speak plaintext: with TLS use exec probes (docs/deploy.md)"
    if args.command == "serve-controller":
        metrics = next(p for p in container["ports"] if p["name"] == "metrics")
        assert metrics["containerPort"] == args.metrics_port


TLS_MOUNT = "/etc/banditspec/tls"
TLS_KEYS = {"ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"}  # base/secrets.yaml, banditspec-tls


@pytest.mark.parametrize("name", ["target", "draft-a", "draft-b", "controller"])
def test_tls_overlay_serves_tls_and_probes_over_it(name):
    _, pod, container = next(item for item in containers(LAYOUTS["tls"]) if item[0] == name)
    args = parse(container["args"])
    assert args.tls_cert == f"{TLS_MOUNT}/tls.crt" and args.tls_key == f"{TLS_MOUNT}/tls.key"
    if args.command == "serve-controller":  # clients bring only the CA; the services get a client certificate
        assert not args.tls_client_ca
        assert (args.upstream_tls_ca, args.upstream_tls_cert, args.upstream_tls_key) == (
            f"{TLS_MOUNT}/ca.crt",
            f"{TLS_MOUNT}/client.crt",
            f"{TLS_MOUNT}/client.key",
        )
    else:
        assert args.tls_client_ca == f"{TLS_MOUNT}/ca.crt"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert "grpc" not in container[probe] and command[0] == "banditspec", probe
        check = parse(command[1:])
        assert check.command == "health" and check.address == f"127.0.0.1:{args.port}", probe
        assert check.tls_ca == f"{TLS_MOUNT}/ca.crt", probe
        assert bool(check.tls_cert and check.tls_key) == bool(args.tls_client_ca), probe
        expected_service = HEALTH_NAMES[args.command] if probe == "readinessProbe" else ""
        assert check.service == expected_service, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    used = {value.removeprefix(f"{TLS_MOUNT}/") for value in re.findall(rf"{TLS_MOUNT}/[\w.]+", str(container))}
    assert used <= TLS_KEYS
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == TLS_MOUNT)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "banditspec-tls"


def test_only_the_target_requests_a_gpu():
    for name, _, container in containers():
        resources = container["resources"]
        assert "cpu" in resources["requests"] and "memory" in resources["requests"], name
        assert "memory" in resources["limits"], name
        gpus = resources["limits"].get("nvidia.com/gpu")
        if name == "target":
            assert gpus == 1 and resources["requests"]["nvidia.com/gpu"] == 1
            assert container["image"].endswith(":cuda") and parse(container["args"]).device == "cuda"
        else:
            assert gpus is None and "nvidia.com/gpu" not in resources["requests"], name


def test_pods_run_unprivileged_with_a_read_only_root():
    for name, pod, container in containers():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for c in [container, *pod.get("initContainers", [])]:
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, name
        if parse(container["args"]).command == "serve-draft":
            assert "/cache" in mounts and "/models" in mounts  # overlays are assembled in the cache
            assert "--model-root=/models" in container["args"]


def test_pdb_selects_exactly_the_draft_pods():
    (pdb,) = of_kind("PodDisruptionBudget").values()
    selector = pdb["spec"]["selector"]["matchLabels"]
    selected = {
        name
        for name, deployment in of_kind("Deployment").items()
        if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    }
    assert selected == {"draft-a", "draft-b"}
    assert pdb["spec"]["maxUnavailable"] == 1


def test_services_select_one_deployment_each_on_named_ports():
    deployments = of_kind("Deployment")
    for name, service in of_kind("Service").items():
        selector = service["spec"]["selector"]
        selected = [
            d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1 and selected[0]["metadata"]["name"] == name
        container_ports = {p["name"] for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, (name, port)
        deployment = selected[0]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )


def test_referenced_secrets_config_maps_and_claims_exist():
    secrets, config_maps, claims = of_kind("Secret"), of_kind("ConfigMap"), of_kind("PersistentVolumeClaim")
    referenced: dict[str, set[str]] = {"secret": set(), "configMap": set(), "claim": set()}
    for name, pod, container in containers():
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                referenced["secret"].add(volume["secret"]["secretName"])
                assert volume["secret"]["optional"] is True, name  # a placeholder until filled
            if "persistentVolumeClaim" in volume:
                referenced["claim"].add(volume["persistentVolumeClaim"]["claimName"])
        for env in container.get("env", []):
            ref = env["valueFrom"]["secretKeyRef"]
            referenced["secret"].add(ref["name"])
            assert ref["optional"] is True, name
        for source in container.get("envFrom", []):
            referenced["configMap"].add(source["configMapRef"]["name"])
    assert referenced["secret"] == set(secrets)
    assert referenced["configMap"] <= set(config_maps)
    assert referenced["claim"] <= set(claims)
    for secret in secrets.values():  # placeholders: no secret material in the repository
        assert not secret.get("data") and not secret.get("stringData")
    env_names = {env["name"] for _, _, c in containers() for env in c.get("env", [])}
    assert env_names == {"BANDITSPEC_ADMIN_TOKEN", "BANDITSPEC_API_KEY"}
