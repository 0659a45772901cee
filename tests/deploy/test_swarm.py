"""deploy/swarm against the code: the stack's services, ports, command lines, Swarm settings, Prometheus's service
discovery and the metric names it mentions (the real run is ``make swarm-check``, its own target)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from edgediff import constants
from edgediff.constants import EXPORTER_PORT, GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT, PROMETHEUS_PORT
from edgediff.models import list_presets
from services.gateway.backends.fleet import parse_upstream
from services.healthcheck import build_parser as healthcheck_parser

from .deployfiles import ROOT, flag_value, interpolate

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
GATEWAYS = sorted(name for name, s in SERVICES.items()
                  if s.get("command", [])[:2] == ["edgediff", "serve"] and "local" in s["command"])
HOST_PORT_SERVICES = sorted(name for name, s in SERVICES.items()
                            if any(p.get("mode") == "host" for p in s.get("ports", [])))


def _edgediff_args(service: dict[str, Any]) -> Any:
    command = service["command"]
    assert command[0] == "edgediff"
    return build_parser(command[1]).parse_args(command[1:])


def test_the_stack_has_every_role() -> None:
    assert len(GATEWAYS) == 2, "one gateway service per device class"
    assert {"router", "exporter", "prometheus"} <= set(SERVICES)
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
    assert (args.backend, args.host, args.port, args.metrics_port) == ("local", ANY_ADDRESS, GATEWAY_GRPC_PORT,
                                                                        GATEWAY_METRICS_PORT)
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
        for arg in [*service.get("command", []), *service["healthcheck"]["test"]]:
            found |= {int(p) for p in re.findall(r"(?<![\w.]):(\d+)\b", str(arg))}
            if str(arg).isdigit() and int(arg) > 1000:
                found.add(int(arg))
    assert found - PORT_CONSTANTS == set()
    assert flag_value(SERVICES["prometheus"]["command"], "--web.listen-address") == f":{PROMETHEUS_PORT}"


def test_prometheus_finds_every_task_by_dns() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = {"gateway": (GATEWAYS, GATEWAY_METRICS_PORT), "router": (["router"], GATEWAY_METRICS_PORT),
                "exporter": (["exporter"], EXPORTER_PORT)}
    for job, (services, port) in expected.items():
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["type"] == "A" and sd["port"] == port, job
        assert sorted(sd["names"]) == [f"tasks.{name}" for name in services], job
    assert jobs["prometheus"]["static_configs"][0]["targets"] == [f"localhost:{PROMETHEUS_PORT}"]


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


def test_check_script_and_target() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^swarm-check:", makefile, re.MULTILINE)
    assert "scripts/swarm-check.sh" in makefile
    text = SCRIPT.read_text()
    assert "trap " in text and "EXIT" in text, "the check tears down even when stopped"
    assert "stack deploy" in text and "deploy/swarm/stack.yaml" in text
    assert Path(SWARM_DIR / "check.py").is_file()
