"""deploy/ agrees with the code: commands, ports, variables, health names, no secrets.

There is no Docker engine or Kubernetes cluster here, so the files are checked statically:
every YAML parses, each service's environment (as Compose or Kubernetes would give it) is
fed to the real `load_config`, the commands go through the real CLI parser, and the
healthcheck one-liners run against real tocsin gRPC servers and the real gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tocsin.cli.main import build_parser
from tocsin.cli.stack_commands import STACK
from tocsin.gateway.server import start_gateway
from tocsin.runtime.clock import SystemClock
from tocsin.runtime.config import (
    DEFAULT_GRPC_PORTS,
    SERVICE_NAMES,
    Address,
    Config,
    ConfigError,
    load_config,
)
from tocsin.runtime.grpcserver import GrpcServer, start_grpc_server
from tocsin.runtime.redis import create_redis

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
HTTP_PORT = 8080
METRICS_PORT = 9464
"""Where every tocsin pod serves /metrics (TOCSIN_METRICS_ADDR)."""
TOKEN = "test-token"
SERVICE_TOKEN = "test-service-token"
DEPLOY_ONLY_VARIABLES = {"TOCSIN_IMAGE"}
"""Variables only the deploy files read (Compose's image name); README must list them."""
_VARIABLE = re.compile(r"\b(?:TOCSIN|TWILIO|OTEL)_[A-Z0-9_]*[A-Z0-9]\b")
_LITERAL_VARIABLE = re.compile(r"[\"']((?:TOCSIN|TWILIO|OTEL)_[A-Z0-9_]*[A-Z0-9])[\"']")
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


# --- loading -------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"][name]
    return service


def k8s_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return objects


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, comments and blank lines skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            pairs[key.strip()] = value.strip()
    return pairs


def proto_service_name(service: str) -> str:
    """`tocsin.v1.XService`, read from the service's .proto (the health check's name)."""
    text = (ROOT / "protos" / "tocsin" / "v1" / f"{service}.proto").read_text()
    package = re.search(r"^package\s+([\w.]+);", text, re.MULTILINE)
    services = re.findall(r"^service\s+(\w+)\s*\{", text, re.MULTILINE)
    assert package and len(services) == 1
    return f"{package.group(1)}.{services[0]}"


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` substitution."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if operator in (":?", "?") and not (current if operator == ":?" else current is not None):
            raise KeyError(f"{name}: {argument}")
        if operator == ":-":
            return current or argument
        if operator == "-":
            return argument if current is None else current
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose_env(name: str, host_env: Mapping[str, str]) -> dict[str, str]:
    environment = compose_service(name).get("environment", {})
    assert isinstance(environment, dict), f"{name}: environment must be a mapping"
    return {key: interpolate(str(value), host_env) for key, value in environment.items()}


def k8s_env(name: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the container of Deployment `name`."""
    spec = container(k8s_object("Deployment", name))
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            assert source["secretRef"]["name"] == "tocsin-secrets"
            env.update(secrets)
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "tocsin-secrets"
            env[item["name"]] = secrets[ref["key"]]
    return env


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(arguments.split())))
            pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def code_variables() -> set[str]:
    """Variable names the code reads: string literals in services/ and clients/, plus
    config.py's per-service `TOCSIN_<SERVICE>_ADDR`."""
    names: set[str] = set()
    for path in [*ROOT.glob("services/tocsin/**/*.py"), *ROOT.glob("clients/tocsin/**/*.py")]:
        if "/v1/" not in path.as_posix():
            names.update(_LITERAL_VARIABLE.findall(path.read_text()))
    config_text = (ROOT / "services/tocsin/runtime/config.py").read_text()
    assert 'f"TOCSIN_{name.upper()}_ADDR"' in config_text
    names.update(f"TOCSIN_{name.upper()}_ADDR" for name in SERVICE_NAMES)
    return names


# --- every file ----------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses_into_mappings(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert documents
    assert all(isinstance(doc, dict) for doc in documents)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert kustomization["namespace"] == "tocsin"
    assert [image["name"] for image in kustomization["images"]] == ["tocsin"]


def test_every_variable_in_deploy_files_is_read_by_tocsin() -> None:
    known = code_variables()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            unknown = set(_VARIABLE.findall(path.read_text())) - known - DEPLOY_ONLY_VARIABLES
            assert not unknown, f"{path.relative_to(ROOT)} uses variables tocsin never reads"
    readme = (DEPLOY / "README.md").read_text()
    documented = set(_VARIABLE.findall(readme))
    assert DEPLOY_ONLY_VARIABLES <= documented
    assert documented <= known | DEPLOY_ONLY_VARIABLES, "README documents unknown variables"
    assert {"TOCSIN_API_TOKEN", "TOCSIN_PUBLIC_URL", "TWILIO_AUTH_TOKEN"} <= documented


# --- the image -----------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert len(bases) >= 2 and set(bases) == {"python:3.11-slim"}
    build_runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "pip wheel" in build_runs and "-m venv /opt/tocsin" in build_runs
    assert ("COPY", "--from=build /opt/tocsin /opt/tocsin") in final_stage()


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = {
        p.split("/")[0] for p in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    }
    copied = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "COPY")
    for needed in ("pyproject.toml", pyproject["project"]["readme"], *roots):
        assert needed in copied
        ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        assert f"!{needed}" in ignore or f"!{needed}/" in ignore


def lock_pins() -> dict[str, str]:
    """name -> version of every requirements.lock entry, each checked to carry hashes."""
    text = (ROOT / "requirements.lock").read_text()
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=\S)", text):
        if entry.startswith("#") or not entry.strip():
            continue
        requirement = Requirement(entry.split("\\")[0].split(";")[0].strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", entry
        assert "--hash=sha256:" in entry, f"{requirement.name}: no hash in the lock"
        pins[_canonical(requirement.name)] = specifier.version
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_runtime_dependency() -> None:
    """requirements.lock (scripts/lock) satisfies pyproject.toml: run scripts/lock after
    changing `dependencies`."""
    pins = lock_pins()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in declared:
        requirement = Requirement(line)
        name = _canonical(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} is stale"
        for extra in requirement.extras:  # e.g. redis[hiredis] -> hiredis
            for needed in metadata.requires(requirement.name) or []:
                extra_requirement = Requirement(needed)
                marker = extra_requirement.marker
                if marker and marker.evaluate({"extra": extra}):
                    assert _canonical(extra_requirement.name) in pins, needed


def test_dockerfile_installs_exactly_the_lock() -> None:
    instructions = dockerfile_instructions()
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert any("pip install --require-hashes --no-deps -r requirements.lock" in run for run in runs)
    tocsin = [run for run in runs if "tocsin-*.whl" in run and "pip install" in run]
    assert tocsin and all("--no-deps" in run for run in tocsin), "deps only from the lock"
    assert any("pip check" in run for run in runs)
    assert ("COPY", "requirements.lock ./") in instructions
    assert "!requirements.lock" in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()


def test_image_runs_tocsin_as_a_non_root_user() -> None:
    stage = final_stage()
    users = [args for keyword, args in stage if keyword == "USER"]
    assert len(users) == 1
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    runs = " ".join(args for keyword, args in stage if keyword == "RUN")
    assert f"--uid {uid}" in runs and f"--gid {gid}" in runs
    assert ("ENTRYPOINT", '["tocsin"]') in stage
    assert ("CMD", '["serve", "gateway"]') in stage
    build_parser().parse_args(["serve", "gateway"])


def test_image_bakes_in_no_secret() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"TOKEN|SECRET|PASSWORD|TWILIO", args), args
        if keyword in ("COPY", "ADD"):
            assert ".env" not in args and "secrets" not in args, args


def test_image_exposes_every_port() -> None:
    exposed = {
        int(port) for keyword, args in final_stage() if keyword == "EXPOSE" for port in args.split()
    }
    assert exposed == {HTTP_PORT, *DEFAULT_GRPC_PORTS.values()}


# --- Compose -------------------------------------------------------------------------


@pytest.mark.parametrize("name", STACK)
def test_compose_runs_each_service_from_the_image(name: str) -> None:
    service = compose_service(name)
    assert service["command"] == ["serve", name]
    assert build_parser().parse_args(service["command"]).service == [name]
    assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert service["restart"] == "unless-stopped"
    assert service["read_only"] is True


@pytest.mark.parametrize("name", STACK)
def test_compose_environment_is_a_valid_tocsin_config(name: str) -> None:
    config = load_config(
        compose_env(name, {"TOCSIN_API_TOKEN": TOKEN, "TOCSIN_SERVICE_TOKEN": SERVICE_TOKEN})
    )
    # Containers share no data directory: every one gets the same service credential.
    assert config.service_token == SERVICE_TOKEN
    assert config.api_token == TOKEN
    assert config.twilio is None  # empty TWILIO_* pass-throughs mean "not configured"
    for peer, port in DEFAULT_GRPC_PORTS.items():
        assert config.grpc_addrs[peer] == Address(peer, port)
    if name == "gateway":
        assert config.http_addr == Address("0.0.0.0", HTTP_PORT)
        config.check_bind(config.http_addr, "TOCSIN_HTTP_ADDR")
        assert compose_service(name)["ports"] == [f"{HTTP_PORT}:{HTTP_PORT}"]
    else:
        port = DEFAULT_GRPC_PORTS[name]
        assert config.grpc_listen_addr(name) == Address("0.0.0.0", port)
        config.check_bind(config.grpc_listen_addr(name), "TOCSIN_LISTEN_ADDR")
        assert config.redis_url == "redis://redis:6379/0"
        assert compose_service(name)["ports"] == [f"127.0.0.1:{port}:{port}"]


@pytest.mark.parametrize("name", STACK)
def test_compose_refuses_to_start_without_an_api_token(name: str) -> None:
    with pytest.raises(KeyError, match="TOCSIN_API_TOKEN"):
        compose_env(name, {})
    with pytest.raises(KeyError, match="TOCSIN_SERVICE_TOKEN"):
        compose_env(name, {"TOCSIN_API_TOKEN": TOKEN})


def test_compose_passes_twilio_only_to_notification_and_gateway() -> None:
    host_env = {
        "TOCSIN_API_TOKEN": TOKEN,
        "TOCSIN_SERVICE_TOKEN": SERVICE_TOKEN,
        "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "TWILIO_AUTH_TOKEN": "fake-twilio-token",
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TOCSIN_TWILIO_BASE_URL": "http://fake-twilio:8099",
    }
    for name in STACK:
        twilio = load_config(compose_env(name, host_env)).twilio
        if name in ("notification", "gateway"):
            assert twilio is not None and twilio.base_url == "http://fake-twilio:8099"
        else:
            assert twilio is None


def test_compose_redis_is_redis_7_with_aof() -> None:
    redis = compose_service("redis")
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    pairs = set(itertools.pairwise(command))
    assert {("--appendonly", "yes"), ("--appendfsync", "everysec")} <= pairs
    assert "redis-data:/data" in redis["volumes"]
    for name in SERVICE_NAMES:
        assert compose_service(name)["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_start_order_waits_for_health() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert rule["condition"] == "service_healthy", f"{name} -> {target}"
            assert "healthcheck" in services[target], f"{name} waits on {target}"
    assert set(services["gateway"]["depends_on"]) == set(SERVICE_NAMES)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_compose_grpc_healthcheck_asks_for_the_service(name: str) -> None:
    test = compose_service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"'127.0.0.1:{DEFAULT_GRPC_PORTS[name]}'" in test[3]
    assert f"service='{proto_service_name(name)}'" in test[3]


def test_compose_fake_twilio_profile() -> None:
    fake = compose_service("fake-twilio")
    assert fake["profiles"] == ["fake-twilio"]
    args = build_parser().parse_args(fake["command"])
    assert (args.host, args.port) == ("0.0.0.0", 8099)
    assert fake["ports"] == ["127.0.0.1:8099:8099"]


async def _run_check(code: str) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def _grpc_servers(config: Config) -> dict[str, GrpcServer]:
    return {
        name: await start_grpc_server(
            config, Address("127.0.0.1", 0), lambda server: None, [proto_service_name(name)]
        )
        for name in SERVICE_NAMES
    }


async def test_compose_grpc_healthchecks_pass_only_while_serving() -> None:
    servers = await _grpc_servers(load_config({"TOCSIN_API_TOKEN": TOKEN}))
    try:
        checks = {
            name: compose_service(name)["healthcheck"]["test"][3].replace(
                f"127.0.0.1:{DEFAULT_GRPC_PORTS[name]}", f"127.0.0.1:{server.port}"
            )
            for name, server in servers.items()
        }
        codes = await asyncio.gather(*(_run_check(code) for code in checks.values()))
        assert dict(zip(checks, codes, strict=True)) == dict.fromkeys(SERVICE_NAMES, 0)
        await servers["escalation"].set_serving(False)
        assert await _run_check(checks["escalation"]) != 0
    finally:
        for server in servers.values():
            await server.stop(0)


async def test_compose_gateway_healthcheck_follows_healthz() -> None:
    servers = await _grpc_servers(load_config({"TOCSIN_API_TOKEN": TOKEN}))
    env = {"TOCSIN_API_TOKEN": TOKEN, "TOCSIN_HTTP_ADDR": "127.0.0.1:0"}
    env.update({f"TOCSIN_{n.upper()}_ADDR": f"127.0.0.1:{s.port}" for n, s in servers.items()})
    gateway, task, port = await start_gateway(load_config(env), SystemClock())
    try:
        check = compose_service("gateway")["healthcheck"]["test"][3]
        assert f"http://127.0.0.1:{HTTP_PORT}/healthz" in check
        check = check.replace(f"127.0.0.1:{HTTP_PORT}", f"127.0.0.1:{port}")
        assert await _run_check(check) == 0
        await servers["notification"].set_serving(False)
        assert await _run_check(check) != 0
    finally:
        gateway.should_exit = True
        await task
        for server in servers.values():
            await server.stop(0)


# --- Kubernetes ----------------------------------------------------------------------


def template_secrets(**values: str) -> dict[str, str]:
    return {**env_file(K8S / "secrets.env.example"), **values}


@pytest.mark.parametrize("name", STACK)
def test_k8s_deployment_and_service_per_service(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    spec = container(deployment)
    assert spec["image"] == "tocsin"
    assert build_parser().parse_args(spec["args"]).service == [name]
    port = HTTP_PORT if name == "gateway" else DEFAULT_GRPC_PORTS[name]
    assert [p["containerPort"] for p in spec["ports"]] == [port, METRICS_PORT]
    service = k8s_object("Service", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["targetPort"] in (port, spec["ports"][0]["name"])


@pytest.mark.parametrize("name", STACK)
def test_k8s_environment_is_a_valid_tocsin_config(name: str) -> None:
    config = load_config(
        k8s_env(name, template_secrets(TOCSIN_API_TOKEN=TOKEN, TOCSIN_SERVICE_TOKEN=SERVICE_TOKEN))
    )
    assert config.service_token == SERVICE_TOKEN
    assert config.api_token == TOKEN
    assert config.twilio is None
    for peer, port in DEFAULT_GRPC_PORTS.items():
        assert config.grpc_addrs[peer] == Address(peer, port)
    assert config.redis_url and config.redis_url.startswith("redis+cluster://")
    assert config.public_url.startswith("https://")
    if name == "gateway":
        assert config.http_addr == Address("0.0.0.0", HTTP_PORT)
    else:
        assert config.grpc_listen_addr(name) == Address("0.0.0.0", DEFAULT_GRPC_PORTS[name])


@pytest.mark.parametrize("name", STACK)
async def test_k8s_and_compose_peers_may_send_the_token(name: str) -> None:
    """Pods and compose containers reach their peers by name (not loopback), in plaintext
    unless TLS is set up: the files give the explicit consent, so peers can be called."""
    from tocsin.runtime.service import peer_client

    for env in (
        k8s_env(name, template_secrets(TOCSIN_API_TOKEN=TOKEN)),
        compose_env(name, {"TOCSIN_API_TOKEN": TOKEN, "TOCSIN_SERVICE_TOKEN": SERVICE_TOKEN}),
    ):
        config = load_config(env)
        assert config.allow_insecure_tokens and config.tls is None
        await peer_client(config).close()


def test_k8s_pods_mount_the_optional_tls_secret_where_the_configmap_says() -> None:
    data = k8s_object("ConfigMap", "tocsin-config")["data"]
    commented = (DEPLOY / "kubernetes" / "configmap.yaml").read_text()
    for name in STACK:
        deployment = k8s_object("Deployment", name)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"] == {
            "secretName": "tocsin-tls",
            "optional": True,
            "defaultMode": 0o400,
        }
        mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
        assert mounts["tls"] == {"name": "tls", "mountPath": "/etc/tocsin/tls", "readOnly": True}
    for variable, file in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CA", "ca.crt")):
        assert f"# TOCSIN_TLS_{variable}: /etc/tocsin/tls/{file}" in commented
        assert f"TOCSIN_TLS_{variable}" not in data


@pytest.mark.parametrize("name", STACK)
def test_k8s_pods_serve_metrics_to_prometheus_with_a_token(name: str) -> None:
    secrets = template_secrets(TOCSIN_API_TOKEN=TOKEN, TOCSIN_METRICS_TOKEN="m-token")
    config = load_config(k8s_env(name, secrets))
    assert config.metrics_token == "m-token"
    assert config.metrics_listen_addr(name) == Address("0.0.0.0", METRICS_PORT)
    annotations = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    # Until secrets.env has a metrics token the process refuses to start.
    unfilled = load_config(k8s_env(name, template_secrets(TOCSIN_API_TOKEN=TOKEN)))
    with pytest.raises(ConfigError, match="TOCSIN_METRICS_TOKEN"):
        unfilled.metrics_listen_addr(name)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_k8s_template_secret_fails_loudly_until_filled_in(name: str) -> None:
    config = load_config(k8s_env(name, template_secrets()))
    with pytest.raises(ConfigError, match="TOCSIN_API_TOKEN"):
        config.check_bind(config.grpc_listen_addr(name), "TOCSIN_LISTEN_ADDR")


def test_k8s_twilio_credentials_reach_only_notification_and_gateway() -> None:
    secrets = template_secrets(
        TOCSIN_API_TOKEN=TOKEN,
        TWILIO_ACCOUNT_SID="AC" + "0" * 32,
        TWILIO_AUTH_TOKEN="token",
        TWILIO_FROM_NUMBER="+15005550006",
    )
    for name in STACK:
        env = k8s_env(name, secrets)
        has_twilio = load_config(env).twilio is not None
        assert has_twilio == (name in ("notification", "gateway")), name


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_k8s_grpc_probes_ask_for_the_service(name: str) -> None:
    spec = container(k8s_object("Deployment", name))
    expected = {"port": DEFAULT_GRPC_PORTS[name], "service": proto_service_name(name)}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["grpc"] == expected, probe


def test_k8s_gateway_is_ready_on_healthz() -> None:
    spec = container(k8s_object("Deployment", "gateway"))
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": HTTP_PORT}
    assert spec["livenessProbe"]["tcpSocket"] == {"port": HTTP_PORT}


def min_replicas(kind: str, name: str) -> int:
    """The fewest pods a workload runs: its `replicas`, or its autoscaler's minimum."""
    workload = k8s_object(kind, name)
    autoscalers = [
        o
        for o in k8s_objects()
        if o["kind"] == "HorizontalPodAutoscaler"
        and o["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": kind, "name": name}
    ]
    if autoscalers:
        (autoscaler,) = autoscalers
        assert "replicas" not in workload["spec"], f"{name}: the autoscaler owns replicas"
        minimum: int = autoscaler["spec"]["minReplicas"]
        return minimum
    replicas: int = workload["spec"]["replicas"]
    return replicas


def workloads() -> list[tuple[str, str]]:
    return [
        (o["kind"], o["metadata"]["name"])
        for o in k8s_objects()
        if o["kind"] in ("Deployment", "StatefulSet")
    ]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


@pytest.mark.parametrize(("kind", "name"), workloads())
def test_k8s_every_workload_has_two_replicas_and_a_budget(kind: str, name: str) -> None:
    replicas = min_replicas(kind, name)
    assert replicas >= 2
    pod_labels = k8s_object(kind, name)["spec"]["template"]["metadata"]["labels"]
    budgets = [
        o
        for o in k8s_objects()
        if o["kind"] == "PodDisruptionBudget" and selects(o["spec"]["selector"], pod_labels)
    ]
    assert len(budgets) == 1, f"{kind}/{name}: expected one PodDisruptionBudget"
    spec = budgets[0]["spec"]
    if "minAvailable" in spec:
        assert 1 <= spec["minAvailable"] < replicas  # one pod may go, one always stays
    else:
        assert 1 <= spec["maxUnavailable"] < replicas


@pytest.mark.parametrize("name", ["gateway", "incidents"])
def test_k8s_autoscalers_scale_the_gateway_and_incidents_on_cpu(name: str) -> None:
    autoscaler = k8s_object("HorizontalPodAutoscaler", name)["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == name
    k8s_object(autoscaler["scaleTargetRef"]["kind"], name)  # the target exists
    assert 2 <= autoscaler["minReplicas"] < autoscaler["maxReplicas"]
    (metric,) = autoscaler["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in container(k8s_object("Deployment", name))["resources"]["requests"]


def test_k8s_every_autoscaler_targets_a_workload() -> None:
    names = set(workloads())
    for obj in k8s_objects():
        if obj["kind"] == "HorizontalPodAutoscaler":
            target = obj["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in names


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_k8s_grpc_services_are_headless(name: str) -> None:
    """Every pod's address in DNS, so callers spread calls over all of them."""
    service = k8s_object("Service", name)["spec"]
    assert service["clusterIP"] == "None"
    assert not service.get("publishNotReadyAddresses", False)
    config = load_config(k8s_env("gateway", template_secrets(TOCSIN_API_TOKEN=TOKEN)))
    assert config.grpc_targets[name] == f"{name}:{DEFAULT_GRPC_PORTS[name]}"
    assert config.grpc_max_connection_age.total_seconds() <= 300


@pytest.mark.parametrize(("kind", "name"), workloads())
def test_k8s_every_container_has_readiness_and_liveness_probes(kind: str, name: str) -> None:
    for item in k8s_object(kind, name)["spec"]["template"]["spec"]["containers"]:
        assert {"readinessProbe", "livenessProbe"} <= item.keys(), f"{kind}/{name}"


def network_policies() -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == "NetworkPolicy"]


def test_k8s_network_policies_deny_what_they_do_not_allow() -> None:
    denies = [
        p
        for p in network_policies()
        if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
    ]
    assert denies and denies[0]["spec"]["policyTypes"] == ["Ingress"]


PROMETHEUS_SOURCE = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def _port_rules(labels: Mapping[str, str], port: int) -> list[dict[str, Any]]:
    """The ingress rules of the policies selecting pods with `labels` that admit `port`."""
    rules = []
    for policy in network_policies():
        if selects(policy["spec"]["podSelector"], labels) and policy["spec"]["podSelector"]:
            for rule in policy["spec"].get("ingress", []):
                if any(p["port"] == port for p in rule.get("ports", [])):
                    rules.append(rule)
    return rules


@pytest.mark.parametrize(("kind", "name"), workloads())
def test_k8s_every_container_port_is_covered_by_a_network_policy(kind: str, name: str) -> None:
    template = k8s_object(kind, name)["spec"]["template"]
    labels = template["metadata"]["labels"]
    for item in template["spec"]["containers"]:
        for port in item["ports"]:
            rules = _port_rules(labels, port["containerPort"])
            assert rules, f"{kind}/{name}: no NetworkPolicy for port {port['containerPort']}"
            sources = [source for rule in rules for source in rule.get("from", [None])]
            if port["containerPort"] == METRICS_PORT and name in STACK:
                assert sources == [PROMETHEUS_SOURCE], (name, sources)  # Prometheus only
                continue
            if name == "gateway":
                assert sources == [None]  # the public edge: from anywhere
                continue
            # Everything else only from pods of this namespace with a known label.
            for source in sources:
                assert source is not None and set(source) == {"podSelector"}, (name, source)
                assert source["podSelector"]["matchLabels"]["app.kubernetes.io/name"] in (
                    "tocsin",
                    "redis-cluster",
                    "redis-cluster-init",
                )
            if name in SERVICE_NAMES:
                assert sources == [
                    {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tocsin"}}}
                ]


def _bytes(size: str) -> int:
    """Redis (640mb, 1gb) or Kubernetes (512Mi, 1Gi) sizes in bytes."""
    match = re.fullmatch(r"(\d+)\s*(mb|gb|Mi|Gi|g)?", size.strip())
    assert match, size
    scale = {None: 1, "mb": 2**20, "Mi": 2**20, "gb": 2**30, "Gi": 2**30, "g": 2**30}
    return int(match.group(1)) * scale[match.group(2)]


def test_k8s_redis_refuses_writes_below_its_memory_limit() -> None:
    conf = k8s_object("ConfigMap", "redis-cluster-config")["data"]["redis.conf"]
    settings = dict(
        line.split(maxsplit=1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["maxmemory-policy"] == "noeviction"
    limit = container(k8s_object("StatefulSet", "redis-cluster"))["resources"]["limits"]["memory"]
    assert 0 < _bytes(settings["maxmemory"]) <= 0.75 * _bytes(limit)


def test_compose_redis_refuses_writes_below_its_memory_limit() -> None:
    redis = compose_service("redis")
    pairs = dict(itertools.pairwise(redis["command"]))
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert 0 < _bytes(pairs["--maxmemory"]) <= 0.75 * _bytes(redis["mem_limit"])


def test_k8s_ingress_serves_the_public_url_over_tls() -> None:
    public = urlsplit(k8s_object("ConfigMap", "tocsin-config")["data"]["TOCSIN_PUBLIC_URL"])
    assert public.scheme == "https"
    ingress = k8s_object("Ingress", "gateway")["spec"]
    (tls,) = ingress["tls"]
    assert tls["hosts"] == [public.hostname] and tls["secretName"]
    (rule,) = ingress["rules"]
    assert rule["host"] == public.hostname
    (path,) = rule["http"]["paths"]
    # Twilio signs the URL it calls: no prefix stripped, no rewrite.
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    (port,) = k8s_object("Service", backend["name"])["spec"]["ports"]
    assert backend == {"name": "gateway", "port": {"number": port["port"]}}
    annotations = k8s_object("Ingress", "gateway")["metadata"].get("annotations", {})
    assert not [key for key in annotations if "rewrite" in key or "strip" in key]


KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes the manifests are checked against (autoscaling/v2, gRPC probes)."""


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_k8s_manifests_match_the_kubernetes_schema(path: Path) -> None:
    """Strict schema validation (unknown fields rejected), offline, with the JSON schemas
    that kubernetes-validate ships."""
    if path.name == "kustomization.yaml":
        return
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_k8s_pods_run_unprivileged_with_bounded_resources() -> None:
    image_uid = int(next(a for k, a in final_stage() if k == "USER").partition(":")[0])
    for where, spec in pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for item in spec["containers"]:
            if item["image"] == "tocsin":
                assert pod["runAsUser"] == image_uid, where
            security = item["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            resources = item["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where


def test_k8s_redis_cluster_has_three_masters_with_replicas() -> None:
    statefulset = k8s_object("StatefulSet", "redis-cluster")
    replicas = statefulset["spec"]["replicas"]
    assert replicas == 6
    headless = k8s_object("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    conf = k8s_object("ConfigMap", "redis-cluster-config")["data"]["redis.conf"].splitlines()
    assert {"cluster-enabled yes", "appendonly yes", "appendfsync everysec"} <= set(conf)
    script = container(k8s_object("Job", "redis-cluster-init"))["args"][0]
    assert "redis-cli --cluster create" in script and "--cluster-replicas 1" in script
    assert f"for i in {' '.join(str(i) for i in range(replicas))}; do" in script


def test_k8s_redis_url_seeds_are_cluster_nodes() -> None:
    url = k8s_object("ConfigMap", "tocsin-config")["data"]["TOCSIN_REDIS_URL"]
    statefulset = k8s_object("StatefulSet", "redis-cluster")
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    nodes = {f"{name}-{i}.{service}:6379" for i in range(statefulset["spec"]["replicas"])}
    scheme, _, seeds = url.partition("://")
    assert scheme == "redis+cluster"
    assert set(seeds.split(",")) <= nodes
    ports = container(statefulset)["ports"]
    assert {"name": "redis", "containerPort": 6379} in ports
    create_redis(url)  # a well-formed cluster URL (builds the client, does not connect)


# --- secrets -------------------------------------------------------------------------


def test_no_secret_manifest_carries_a_value() -> None:
    for obj in k8s_objects():
        if obj["kind"] == "Secret":
            values = {**obj.get("data", {}), **obj.get("stringData", {})}
            assert not any(values.values()), obj["metadata"]["name"]


@pytest.mark.parametrize("path", [K8S / "secrets.env.example", DEPLOY / ".env.example"])
def test_secret_templates_are_empty(path: Path) -> None:
    values = env_file(path)
    for key in ("TOCSIN_API_TOKEN", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        assert values[key] == "", f"{path.name}: {key} must ship empty"


def test_secrets_come_from_git_ignored_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (generator,) = kustomization["secretGenerator"]
    assert generator["name"] == "tocsin-secrets" and "literals" not in generator
    ignored = [K8S / env for env in generator["envs"]] + [DEPLOY / ".env"]
    for path in ignored:
        result = subprocess.run(
            ["git", "check-ignore", "--quiet", "--no-index", str(path.relative_to(ROOT))],
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, f"{path.relative_to(ROOT)} must be git-ignored"
    keys = set(env_file(K8S / "secrets.env.example"))
    assert keys == {
        "TOCSIN_API_TOKEN",
        "TOCSIN_SERVICE_TOKEN",
        "TOCSIN_DATABASE_URL",
        "TOCSIN_METRICS_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "TOCSIN_SMTP_URL",
        "TOCSIN_EMAIL_FROM",
        "TOCSIN_WEBHOOK_SECRET",
        "TOCSIN_SLACK_BOT_TOKEN",
        "TOCSIN_SLACK_SIGNING_SECRET",
        "TOCSIN_SMS_FALLBACK_ACCOUNT_SID",
        "TOCSIN_SMS_FALLBACK_AUTH_TOKEN",
        "TOCSIN_SMS_FALLBACK_FROM_NUMBER",
        "TOCSIN_SMS_FALLBACK_BASE_URL",
    }
