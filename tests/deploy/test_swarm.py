"""deploy/swarm against the code and compose.yaml: the stack's services, ports, command lines, Swarm settings, Triton
(its export, ports, model and network, as compose.yaml's cpu profile has them), Prometheus's service discovery and
the metric names it mentions (the real run is ``make swarm-check``, its own target)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from edgediff import constants
from edgediff.constants import (
    EXPORTER_PORT,
    GATEWAY_GRPC_PORT,
    GATEWAY_METRICS_PORT,
    PIPELINE_MODEL_PREFIX,
    PROMETHEUS_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_METRICS,
    TRITON_METRICS_PORT,
    triton_model_name,
)
from edgediff.models import list_presets
from edgediff.variants import all_variants
from services.gateway.backends.fleet import parse_upstream
from services.healthcheck import build_parser as healthcheck_parser

from .deployfiles import PROMETHEUS_FILE as COMPOSE_PROMETHEUS_FILE
from .deployfiles import ROOT, flag_value, interpolate, load_compose

SWARM_DIR = ROOT / "deploy" / "swarm"
STACK_FILE = SWARM_DIR / "stack.yaml"
PROMETHEUS_FILE = SWARM_DIR / "prometheus.yml"
SCRIPT = ROOT / "scripts" / "swarm-check.sh"
ANY_ADDRESS = "0.0.0.0"
PORT_CONSTANTS = {value for name, value in vars(constants).items() if name.endswith("_PORT")}
METRIC_NAMES = {value for name, value in vars(constants).items() if name.startswith("METRIC_") and
                isinstance(value, str)}

STACK: dict[str, Any] = interpolate(yaml.safe_load(STACK_FILE.read_text()))
SERVICES: dict[str, dict[str, Any]] = STACK["services"]
GATEWAYS = sorted(name for name, s in SERVICES.items() if s.get("command", [])[:2] == ["edgediff", "serve"]
                  and flag_value(s["command"], "--backend") in ("local", "triton"))
TRITON_GATEWAYS = sorted(name for name in GATEWAYS if flag_value(SERVICES[name]["command"], "--backend") == "triton")
TRITON = SERVICES.get("triton", {})
COMPOSE: dict[str, Any] = load_compose()
COMPOSE_PROFILE = "cpu"
"""The compose.yaml profile whose export, Triton and gateway the stack's (cpu image) must match."""
HOST_PORT_SERVICES = sorted(name for name, s in SERVICES.items()
                            if any(p.get("mode") == "host" for p in s.get("ports", [])))


def _edgediff_args(service: dict[str, Any]) -> Any:
    command = service["command"]
    assert command[0] == "edgediff"
    return build_parser(command[1]).parse_args(command[1:])


def _triton_steps() -> tuple[list[str], list[str]]:
    """Triton's command, ``sh -c "edgediff export ... && exec edgediff triton ..."``, as the two argv lists."""
    command = TRITON["command"]
    assert command[:2] == ["sh", "-c"] and len(command) == 3, "export, then exec Triton (SIGTERM reaches Triton)"
    export, sep, serve = command[2].partition(" && exec ")
    assert sep, "Triton starts only once the export succeeded, and replaces the shell"
    return shlex.split(export), shlex.split(serve)


def _parse(argv: list[str]) -> Any:
    assert argv[0] == "edgediff"
    return build_parser(argv[1]).parse_args(argv[1:])


def _argv(service: dict[str, Any]) -> list[str]:
    """A service's command line, the words of a ``sh -c`` script included."""
    command = [str(arg) for arg in service.get("command", [])]
    return [*command[:2], *shlex.split(command[2])] if command[:2] == ["sh", "-c"] else command


def _seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{target: {"type", "source", "read_only", ...}}`` of a service's volumes, short and long syntax."""
    found = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            entry = {"type": "bind" if source.startswith("/") else "volume", "source": source, "target": target,
                     "read_only": mode == ["ro"]}
        found[entry["target"]] = entry
    return found


def _compose(role: str) -> dict[str, Any]:
    return COMPOSE["services"][f"{COMPOSE_PROFILE}-{role}"]


def test_the_stack_has_every_role() -> None:
    assert len(GATEWAYS) == 2, "one gateway service per device class"
    assert {"router", "exporter", "prometheus", "triton"} <= set(SERVICES)
    assert TRITON_GATEWAYS, "at least one device class generates through Triton"
    assert STACK["configs"]["prometheus"]["file"] == "./prometheus.yml" and PROMETHEUS_FILE.is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dns_round_robin_everywhere(name: str) -> None:
    """No virtual IPs: IPVS (and with it the routing mesh) is not on every kernel; tasks.<service> names each task."""
    assert SERVICES[name]["deploy"]["endpoint_mode"] == "dnsrr"
    for port in SERVICES[name].get("ports", []):
        assert port["mode"] == "host", f"{name}: a published port needs the routing mesh unless mode: host"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_update_config_rolls_back_and_starts_first(name: str) -> None:
    deploy = SERVICES[name]["deploy"]
    update = deploy["update_config"]
    assert update["failure_action"] == "rollback"
    assert deploy["restart_policy"]["condition"] == "any"
    if name in HOST_PORT_SERVICES:
        # a host port is held by one task per node: the new task cannot start beside the old one
        assert update["order"] == "stop-first"
    else:
        assert update["order"] == "start-first"
    assert "healthcheck" in SERVICES[name], "start-first waits for the new task's healthcheck"


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateways(name: str) -> None:
    service = SERVICES[name]
    args = _edgediff_args(service)
    assert (args.host, args.port, args.metrics_port) == (ANY_ADDRESS, GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT)
    assert args.backend in ("local", "triton")
    assert args.model in list_presets()
    deploy = service["deploy"]
    assert deploy["rollback_config"]["order"] == "start-first"
    assert deploy["update_config"]["monitor"]
    (constraint,) = deploy["placement"]["constraints"]
    assert re.fullmatch(r"node\.labels\.edgediff\.device == [a-z0-9-]+", constraint)
    # the gateway finishes what it holds before Swarm kills it
    assert float(service["stop_grace_period"].rstrip("s")) > args.shutdown_grace
    check = service["healthcheck"]["test"]
    assert check == ["CMD", "python", "-m", "services.healthcheck", "grpc", f"127.0.0.1:{GATEWAY_GRPC_PORT}"]
    healthcheck_parser().parse_args(check[4:])
    assert "ports" not in service, "gateways are reached through the router, on the overlay network"


def test_triton_exports_then_serves_like_compose() -> None:
    """The Triton task exports the repository it then serves, with compose.yaml's cpu-export and cpu-triton flags."""
    export_argv, serve_argv = _triton_steps()
    export, serve = _parse(export_argv), _parse(serve_argv)
    compose_export, compose_triton = _compose("export")["command"], _compose("triton")["command"]
    assert export.command == "export" and serve.command == "triton"
    assert export.repo == serve.repo == flag_value(compose_export, "--repo") == flag_value(compose_triton, "--repo")
    assert export.target == flag_value(compose_export, "--target") == "cpu"
    assert export.variants == flag_value(compose_export, "--variants")
    assert export.model == flag_value(compose_export, "--model")
    assert export.model in list_presets()
    assert {_edgediff_args(SERVICES[name]).model for name in GATEWAYS} == {export.model}, "one model everywhere"
    assert serve.host == ANY_ADDRESS
    assert (serve.http_port, serve.grpc_port, serve.metrics_port) == (TRITON_HTTP_PORT, TRITON_GRPC_PORT,
                                                                      TRITON_METRICS_PORT)
    for flag in ("--http-port", "--grpc-port", "--metrics-port", "--startup-timeout"):
        assert flag_value(serve_argv, flag) == flag_value(compose_triton, flag), flag
    assert TRITON["image"] == _compose("triton")["image"]


def test_triton_repository_lives_on_its_node() -> None:
    mounts = _mounts(TRITON)
    models, cache = mounts[_parse(_triton_steps()[1]).repo], mounts["/cache"]
    assert models["type"] == "volume" and not models.get("read_only"), "the task writes the repository itself"
    assert models["source"] in STACK["volumes"] and not STACK["volumes"][models["source"]], "a node-local volume"
    assert STACK["volumes"][cache["source"]] == {}
    # the same artifact cache as the gateways of the node (and as compose.yaml's export and Triton)
    assert {_mounts(SERVICES[name])["/cache"]["source"] for name in GATEWAYS} == {cache["source"]}
    assert TRITON["environment"]["EDGEDIFF_CACHE_DIR"] == "/cache"
    shm = mounts["/dev/shm"]
    assert shm["type"] == "tmpfs"
    assert _compose("triton")["shm_size"] == "1gb" and shm["tmpfs"]["size"] == 1 << 30


def test_triton_health_and_placement() -> None:
    check = TRITON["healthcheck"]
    assert check["test"] == _compose("triton")["healthcheck"]["test"] == [
        "CMD", "python", "-m", "services.healthcheck", "http", f"http://127.0.0.1:{TRITON_HTTP_PORT}/v2/health/ready"]
    healthcheck_parser().parse_args(check["test"][4:])
    assert _seconds(check["start_period"]) >= _seconds(_compose("triton")["healthcheck"]["start_period"])
    assert "ports" not in TRITON, "Triton is reached on the overlay network only"
    constraints = TRITON["deploy"]["placement"]["constraints"]
    for name in TRITON_GATEWAYS:  # Triton on a node of its gateways' class
        assert SERVICES[name]["deploy"]["placement"]["constraints"] == constraints
        # a new gateway task waits for Triton (export + load) without being restarted as unhealthy
        assert _seconds(SERVICES[name]["healthcheck"]["start_period"]) >= _seconds(check["start_period"])


@pytest.mark.parametrize("name", TRITON_GATEWAYS)
def test_triton_gateways_call_every_triton_task_by_dns(name: str) -> None:
    args = _edgediff_args(SERVICES[name])
    assert args.triton_url == f"tasks.triton:{TRITON_GRPC_PORT}"
    compose_url = flag_value(_compose("gateway")["command"], "--triton-url")
    assert compose_url is not None and compose_url.rpartition(":")[2] == str(TRITON_GRPC_PORT)
    assert args.variant is None, "the default variant is the first ldm_* model Triton has READY"


def test_triton_network_is_internal_like_compose() -> None:
    network = STACK["networks"]["triton"]
    assert network["driver"] == "overlay" and network["internal"] is True
    assert COMPOSE["networks"]["triton"]["internal"] is True
    joined = sorted(name for name, s in SERVICES.items() if "triton" in s.get("networks", []))
    assert joined == sorted(["triton", "prometheus", *TRITON_GATEWAYS])
    assert TRITON["networks"] == ["triton"]
    for name in joined:
        if name != "triton":
            assert "default" in SERVICES[name]["networks"], f"{name} also serves on the stack's default network"


def test_killed_node_is_not_tritons() -> None:
    """make swarm-check kills a node whose class has another node to move to, and which cannot run Triton."""
    text = SCRIPT.read_text()
    devices = dict(re.findall(r"\[(\w+)\]=([\w-]+)", re.search(r"declare -A DEVICE=\(([^)]*)\)", text).group(1)))
    killed = re.search(r"^KILLED_NODE=(\w+)$", text, re.MULTILINE).group(1)
    (constraint,) = TRITON["deploy"]["placement"]["constraints"]
    triton_class = constraint.rpartition("== ")[2]
    assert devices[killed] != triton_class
    assert list(devices.values()).count(devices[killed]) >= 2
    assert list(devices.values()).count(triton_class) >= 1


def test_device_classes_differ() -> None:
    classes = {SERVICES[name]["deploy"]["placement"]["constraints"][0] for name in GATEWAYS}
    assert len(classes) == len(GATEWAYS)


def test_router_discovers_every_gateway_by_dns() -> None:
    router = SERVICES["router"]
    args = _edgediff_args(router)
    assert (args.backend, args.host, args.port, args.metrics_port) == ("fleet", ANY_ADDRESS, GATEWAY_GRPC_PORT,
                                                                        GATEWAY_METRICS_PORT)
    specs = [parse_upstream(text) for text in args.upstream]
    assert all(spec.dns for spec in specs)
    named = sorted(spec.address.removeprefix("tasks.").rpartition(":")[0] for spec in specs)
    assert named == GATEWAYS
    assert {spec.address.rpartition(":")[2] for spec in specs} == {str(GATEWAY_GRPC_PORT)}
    assert {p["target"] for p in router["ports"]} == {GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT}
    assert router["deploy"]["mode"] == "global"


def test_exporter_on_every_node() -> None:
    exporter = SERVICES["exporter"]
    args = _edgediff_args(exporter)
    assert (args.host, args.port, args.root) == (ANY_ADDRESS, EXPORTER_PORT, "/host")
    assert exporter["deploy"]["mode"] == "global"
    assert exporter["healthcheck"]["test"][-2:] == ["http", f"http://127.0.0.1:{EXPORTER_PORT}/metrics"]


def test_every_port_is_a_constant() -> None:
    found: set[int] = set()
    for service in SERVICES.values():
        found |= {int(p["target"]) for p in service.get("ports", [])} | {int(p["published"])
                                                                        for p in service.get("ports", [])}
        for arg in [*_argv(service), *service["healthcheck"]["test"]]:
            found |= {int(p) for p in re.findall(r"(?<![\w.]):(\d+)\b", str(arg))}
            if str(arg).isdigit() and int(arg) > 1000:
                found.add(int(arg))
    assert found - PORT_CONSTANTS == set()
    assert flag_value(SERVICES["prometheus"]["command"], "--web.listen-address") == f":{PROMETHEUS_PORT}"


def test_prometheus_finds_every_task_by_dns() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {"gateway": (GATEWAYS, GATEWAY_METRICS_PORT), "router": (["router"], GATEWAY_METRICS_PORT),
                "exporter": (["exporter"], EXPORTER_PORT), "triton": (["triton"], TRITON_METRICS_PORT)}
    for job, (services, port) in expected.items():
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["type"] == "A" and sd["port"] == port, job
        assert sorted(sd["names"]) == [f"tasks.{name}" for name in services], job
    assert jobs["prometheus"]["static_configs"][0]["targets"] == [f"localhost:{PROMETHEUS_PORT}"]
    # compose.yaml's jobs, under the same names (the dashboards select on them)
    compose_jobs = {job["job_name"] for job in yaml.safe_load(COMPOSE_PROMETHEUS_FILE.read_text())["scrape_configs"]}
    assert compose_jobs <= set(jobs)


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_FILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metric_names_are_constants() -> None:
    """Every edgediff_* name the stack, its Prometheus config, README and driver mention is one the code exports."""
    mentioned: set[str] = set()
    for path in [*SWARM_DIR.glob("*.y*ml"), *SWARM_DIR.glob("*.md"), *SWARM_DIR.glob("*.py")]:
        mentioned |= set(re.findall(r"\bedgediff_[a-z_]+[a-z]\b", path.read_text()))
    stems = {re.sub(r"_(bucket|sum|count)$", "", name) for name in mentioned} - set(STACK["volumes"])
    unknown = {name for name in stems if name not in METRIC_NAMES and not name.endswith("_")}
    # edgediff_fleet_*, edgediff_gateway_* as families in prose
    unknown = {name for name in unknown if not any(m.startswith(name + "_") for m in METRIC_NAMES)}
    assert not unknown, f"metric names that edgediff.constants does not define: {sorted(unknown)}"


def test_triton_names_are_constants() -> None:
    """Triton metric names (nv_*) and Triton model names (ldm_*) the swarm files mention are the code's."""
    text = "".join(path.read_text() for path in [*SWARM_DIR.glob("*.y*ml"), *SWARM_DIR.glob("*.md"),
                                                   *SWARM_DIR.glob("*.py")])
    nv = set(re.findall(r"\bnv_[a-z_]+[a-z]\b", text))
    assert nv and nv <= set(TRITON_METRICS) | {"nv_inference"}, sorted(nv - set(TRITON_METRICS))
    models = {triton_model_name(PIPELINE_MODEL_PREFIX, v.name) for v in all_variants()}
    mentioned = set(re.findall(rf"\b{PIPELINE_MODEL_PREFIX}[a-z0-9_]+\b", text))
    assert mentioned <= models, sorted(mentioned - models)
    exported = _parse(_triton_steps()[0]).variants.split(",")
    assert triton_model_name(PIPELINE_MODEL_PREFIX, exported[0]) in models


def test_check_script_and_target() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^swarm-check:", makefile, re.MULTILINE)
    assert "scripts/swarm-check.sh" in makefile
    text = SCRIPT.read_text()
    assert "trap " in text and "EXIT" in text, "the check tears down even when stopped"
    assert "stack deploy" in text and "deploy/swarm/stack.yaml" in text
    # every image the stack names is one the script loads into the nodes and passes to the deploy
    image_variables = set(re.findall(r"\$\{(EDGEDIFF_\w+_IMAGE)", STACK_FILE.read_text()))
    assert image_variables and all(f"{name}=" in text for name in image_variables), sorted(image_variables)
    assert Path(SWARM_DIR / "check.py").is_file()
