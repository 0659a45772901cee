"""compose.yaml, prometheus.yml, the Dockerfiles and the rendered Kubernetes overlays against the code: ports, model
names, variants, environment variables and command lines all exist in ``edgediff.constants``, the registries and the
real argument parsers."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.main import COMMANDS, build_parser
from edgediff import constants
from edgediff.constants import (
    EXPORTER_PORT,
    GATEWAY_GRPC_PORT,
    GATEWAY_METRICS_PORT,
    GRAFANA_PORT,
    LOCUST_MASTER_PORT,
    LOCUST_WEB_PORT,
    PROMETHEUS_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS_PORT,
)
from edgediff.models import list_presets
from edgediff.variants import all_variants
from services.healthcheck import build_parser as healthcheck_parser

from .deployfiles import (
    DEVICE_PROFILES,
    DOCKERFILES,
    ROOT,
    active_services,
    aliases,
    flag_value,
    kustomize,
    load_compose,
    published_ports,
    service_by_alias,
    tritonserver_flags,
)

PORT_CONSTANTS = {name: value for name, value in vars(constants).items() if name.endswith("_PORT")}
ENV_CONSTANTS = {value for name, value in vars(constants).items() if name.startswith("ENV_")}
ANY_ADDRESS = "0.0.0.0"
LOOPBACK = "127.0.0.1"

_COMPOSE = load_compose()
EDGEDIFF_SERVICES = sorted(n for n, s in _COMPOSE["services"].items() if s.get("command", [""])[0] == "edgediff")
DOCKERFILE_CMDS = {path.name: json_array for path in DOCKERFILES
                   for json_array in re.findall(r"^CMD (\[.*\])$", path.read_text(), re.MULTILINE)}


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


def _port_of(target: str) -> int:
    """Port of ``HOST:PORT`` or of a URL."""
    if "://" in target:
        return int(urlsplit(target).port)
    return int(target.rpartition(":")[2])


def _parse_edgediff(argv: list[str]) -> Any:
    """Parse ``edgediff ...`` with the real CLI parser; skip when that command's module is not written yet."""
    assert argv[0] == "edgediff"
    command = argv[1]
    assert command in COMMANDS, f"edgediff has no command {command!r}"
    module = COMMANDS[command][0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} (edgediff {command}) does not exist yet; its flags cannot be checked")
    try:
        return build_parser(command).parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"edgediff rejects {shlex.join(argv)} (exit {exc.code}); see the captured stderr")


# --- ports ------------------------------------------------------------------------------------------------------------
def _ports_in_argv(argv: list[str]) -> set[int]:
    """Ports in a command line: ``--*port* N``, ``--*port*=N``, ``HOST:PORT``, ``:PORT`` and URLs."""
    found = set()
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "port" in arg.split("=")[0]:
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            if value.isdigit():
                found.add(int(value))
        found |= {int(p) for p in re.findall(r"(?<![\w.]):(\d+)\b", arg)}
    return found


def _ports_of_service(service: dict[str, Any]) -> set[int]:
    """Every port a service names: published, in its command and healthcheck, and in its environment."""
    found = {port for _, host_port, container_port in published_ports(service) for port in (host_port, container_port)}
    found |= _ports_in_argv(service.get("command") or [])
    if "healthcheck" in service:
        found |= _ports_in_argv(_healthcheck_argv(service))
    for key, value in (service.get("environment") or {}).items():
        if key.endswith("_PORT"):
            found.add(int(value))
        found |= _ports_in_argv([str(value)])
    return found


def test_every_port_in_compose_is_a_constant() -> None:
    mentioned = set().union(*(_ports_of_service(s) for s in _COMPOSE["services"].values()))
    unknown = sorted(mentioned - set(PORT_CONSTANTS.values()))
    assert not unknown, f"ports in compose.yaml that edgediff.constants does not define: {unknown}"
    deployed = {GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT, EXPORTER_PORT, TRITON_HTTP_PORT, TRITON_GRPC_PORT,
                TRITON_METRICS_PORT, PROMETHEUS_PORT, GRAFANA_PORT, LOCUST_WEB_PORT, LOCUST_MASTER_PORT}
    assert deployed <= mentioned


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_gateway_ports_and_triton_address(profile: str) -> None:
    _, gateway = service_by_alias(_COMPOSE, profile, "gateway")
    command = gateway["command"]
    assert flag_value(command, "--host") == ANY_ADDRESS
    assert int(flag_value(command, "--port")) == GATEWAY_GRPC_PORT
    assert int(flag_value(command, "--metrics-port")) == GATEWAY_METRICS_PORT
    assert flag_value(command, "--triton-url") == f"triton:{TRITON_GRPC_PORT}"
    assert [p[2] for p in published_ports(gateway)] == [GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT]
    check = _healthcheck_argv(gateway)
    assert check[-2:] == ["grpc", f"{LOOPBACK}:{GATEWAY_GRPC_PORT}"]


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_triton_ports(profile: str) -> None:
    _, triton = service_by_alias(_COMPOSE, profile, "triton")
    command = triton["command"]
    assert int(flag_value(command, "--http-port")) == TRITON_HTTP_PORT
    assert int(flag_value(command, "--grpc-port")) == TRITON_GRPC_PORT
    assert int(flag_value(command, "--metrics-port")) == TRITON_METRICS_PORT
    check = _healthcheck_argv(triton)
    assert check[-2:] == ["http", f"http://{LOOPBACK}:{TRITON_HTTP_PORT}/v2/health/ready"]
    assert published_ports(triton) == []


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_exporter_port(profile: str) -> None:
    _, exporter = service_by_alias(_COMPOSE, profile, "exporter")
    command = exporter["command"]
    assert flag_value(command, "--host") == ANY_ADDRESS
    assert int(flag_value(command, "--port")) == EXPORTER_PORT
    assert _healthcheck_argv(exporter)[-2:] == ["http", f"http://{LOOPBACK}:{EXPORTER_PORT}/metrics"]


def test_monitoring_and_locust_ports() -> None:
    services = _COMPOSE["services"]
    prometheus = services["prometheus"]
    assert flag_value(prometheus["command"], "--web.listen-address") == f":{PROMETHEUS_PORT}"
    assert [p[2] for p in published_ports(prometheus)] == [PROMETHEUS_PORT]
    assert _port_of(_healthcheck_argv(prometheus)[-1]) == PROMETHEUS_PORT
    grafana = services["grafana"]
    assert [p[2] for p in published_ports(grafana)] == [GRAFANA_PORT]
    assert _port_of(_healthcheck_argv(grafana)[-1]) == GRAFANA_PORT
    master, worker = services["locust-master"], services["locust-worker"]
    assert flag_value(master["command"], "--host") == f"gateway:{GATEWAY_GRPC_PORT}"
    assert int(flag_value(master["command"], "--web-port")) == LOCUST_WEB_PORT
    assert int(flag_value(master["command"], "--master-bind-port")) == LOCUST_MASTER_PORT
    assert [p[2] for p in published_ports(master)] == [LOCUST_WEB_PORT]
    assert int(flag_value(worker["command"], "--master-port")) == LOCUST_MASTER_PORT
    assert flag_value(worker["command"], "--master-host") == "locust-master"
    assert _healthcheck_argv(worker)[-2:] == ["tcp", f"locust-master:{LOCUST_MASTER_PORT}"]
    env = master["environment"]
    assert env[constants.ENV_LOADTEST_EXPORTER_URL] == f"http://exporter:{EXPORTER_PORT}/metrics"
    assert env[constants.ENV_LOADTEST_GATEWAY_METRICS_URL] == f"http://gateway:{GATEWAY_METRICS_PORT}/metrics"


def _kubernetes_containers() -> list[dict[str, Any]]:
    pods = [d["spec"]["template"]["spec"] for d in kustomize("overlays/fleet")
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    return [c for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]


def test_every_port_in_kubernetes_is_a_constant() -> None:
    objects = kustomize("overlays/fleet")
    mentioned = {p["port"] for d in objects if d["kind"] == "Service" for p in d["spec"]["ports"]}
    for container in _kubernetes_containers():
        mentioned |= {p["containerPort"] for p in container.get("ports", [])}
        mentioned |= _ports_in_argv(container["command"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            mentioned |= _ports_in_argv(container.get(probe, {}).get("exec", {}).get("command", []))
    unknown = sorted(mentioned - set(PORT_CONSTANTS.values()))
    assert not unknown, f"ports in deploy/kubernetes that edgediff.constants does not define: {unknown}"
    assert {GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT, EXPORTER_PORT, TRITON_HTTP_PORT, TRITON_GRPC_PORT,
            TRITON_METRICS_PORT} <= mentioned


def test_kubernetes_models_variants_and_environment_exist() -> None:
    from exporters.targets import TARGETS

    objects = kustomize("overlays/fleet")
    maps = {d["metadata"]["name"]: d["data"] for d in objects if d["kind"] == "ConfigMap"}
    assert maps["edgediff-settings"]["EDGEDIFF_MODEL"] in list_presets()
    registered = {v.name for v in all_variants()}
    classes = {name: data for name, data in maps.items() if name.startswith("edgediff-class-")}
    assert {data["EDGEDIFF_TARGET"] for data in classes.values()} == set(DEVICE_PROFILES)
    for data in classes.values():
        target = TARGETS[data["EDGEDIFF_TARGET"]]
        exported = data["EDGEDIFF_VARIANTS"].split(",")
        assert set(exported) <= registered and all(v in target.placements for v in exported), data
        assert data["EDGEDIFF_VARIANT"] in exported, "the gateway's default variant must be exported"
    # a variable is either one the code reads (ENV_*) or one a command line expands as $(VAR)
    commands = " ".join(arg for c in _kubernetes_containers() for arg in c["command"])
    for container in _kubernetes_containers():
        for key in [e["name"] for e in container.get("env", [])]:
            assert not key.startswith("EDGEDIFF_") or key in ENV_CONSTANTS, key
    for name, data in maps.items():
        for key in (k for k in data if k.startswith("EDGEDIFF_") and k not in ENV_CONSTANTS):
            assert f"$({key})" in commands, f"ConfigMap {name}: {key} is neither an ENV_* constant nor used"


# --- Prometheus scrape targets ----------------------------------------------------------------------------------------
def test_prometheus_jobs_scrape_the_compose_services(prometheus_config: dict[str, Any]) -> None:
    expected = {"gateway": GATEWAY_METRICS_PORT, "exporter": EXPORTER_PORT, "triton": TRITON_METRICS_PORT,
                "prometheus": PROMETHEUS_PORT}
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}
    assert set(jobs) == set(expected)
    for name, port in expected.items():
        targets = [t for config in jobs[name]["static_configs"] for t in config["targets"]]
        host = "localhost" if name == "prometheus" else name
        assert targets == [f"{host}:{port}"], name
    for profile in DEVICE_PROFILES:
        names = {alias for service in active_services(_COMPOSE, profile).values() for alias in aliases(service)}
        assert {"gateway", "exporter", "triton"} <= names, profile


# --- model names and variants -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_models_and_variants_exist(profile: str) -> None:
    from exporters.targets import TARGETS

    services = _COMPOSE["services"]
    export = services[f"{profile}-export"]["command"]
    gateway = services[f"{profile}-gateway"]["command"]
    assert flag_value(export, "--target") == profile and profile in TARGETS
    for command in (export, gateway):
        assert flag_value(command, "--model") in list_presets()
    registered = {v.name for v in all_variants()}
    exported = flag_value(export, "--variants").split(",")
    for variant in exported:
        assert variant in registered, f"{variant} is not a registered variant"
        assert variant in TARGETS[profile].placements, f"target {profile} cannot serve {variant}"
    assert flag_value(gateway, "--variant") in exported, "the gateway's default variant must be exported"


def test_container_environment_names_are_constants() -> None:
    for name, service in _COMPOSE["services"].items():
        for key in service.get("environment") or {}:
            if key.startswith("EDGEDIFF_"):
                assert key in ENV_CONSTANTS, f"{name}: {key} is not an ENV_* constant of edgediff.constants"


# --- command lines against the real parsers ---------------------------------------------------------------------------
@pytest.mark.parametrize("service_name", EDGEDIFF_SERVICES)
def test_edgediff_commands_parse(service_name: str) -> None:
    service = _COMPOSE["services"][service_name]
    args = _parse_edgediff(service["command"])
    if args.command in ("serve", "exporter", "triton"):
        assert args.host == ANY_ADDRESS, "a server inside a container must listen beyond loopback"
    if args.command == "serve":
        assert (args.backend, args.port, args.metrics_port) == ("triton", GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT)
    if args.command == "exporter":
        assert args.port == EXPORTER_PORT and args.root == "/host"


@pytest.mark.parametrize("dockerfile", sorted(DOCKERFILE_CMDS))
def test_dockerfile_default_commands_parse(dockerfile: str) -> None:
    import json

    args = _parse_edgediff(json.loads(DOCKERFILE_CMDS[dockerfile]))
    assert args.command == "serve" and args.host == ANY_ADDRESS
    assert args.triton_url == f"triton:{TRITON_GRPC_PORT}"


def test_healthcheck_commands_parse() -> None:
    checks = [_healthcheck_argv(s) for s in _COMPOSE["services"].values() if "healthcheck" in s]
    ours = [c for c in checks if c[1:3] == ["-m", "services.healthcheck"]]
    assert len(ours) >= 10
    for argv in ours:
        assert argv[0] in ("python", "python3")
        healthcheck_parser().parse_args(argv[3:])


@pytest.mark.parametrize("profile", ["rtx", "jetson"])
def test_tritonserver_flags_exist(profile: str) -> None:
    command = _COMPOSE["services"][f"{profile}-triton"]["command"]
    assert command[0] == "tritonserver"
    known = tritonserver_flags()
    assert "--model-repository" in known
    for arg in command[1:]:
        assert arg.split("=", 1)[0] in known, f"tritonserver has no flag {arg}"
        assert "=" in arg, f"{arg}: give tritonserver flags as --flag=value"


def test_locust_commands_parse() -> None:
    services = _COMPOSE["services"]
    commands = [services["locust-master"]["command"], services["locust-worker"]["command"]]
    for command in commands:
        assert command[0] == "locust"
        locustfile = flag_value(command, "-f")
        assert locustfile == "/opt/edgediff/loadtest/locustfile.py"
        assert (ROOT / "loadtest" / "locustfile.py").is_file()
    cpu_dockerfile = (ROOT / "docker" / "cpu.Dockerfile").read_text()
    assert "WORKDIR /opt/edgediff" in cpu_dockerfile and "COPY loadtest ./loadtest" in cpu_dockerfile
    # Locust's parser monkey-patches the process (gevent): ask it in a child.
    script = ("import json, sys\nfrom locust.argument_parser import get_parser\n"
              "for argv in json.loads(sys.argv[1]):\n    get_parser().parse_args(argv)\n")
    import json

    result = subprocess.run([sys.executable, "-c", script, json.dumps([c[1:] for c in commands])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
