"""compose.yaml: accepted by ``docker compose`` v2 for every profile, shaped as one complete, hardened deployment per
device."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest

from edgediff.constants import EXPORTER_PORT, GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT

from .deployfiles import (
    COMPOSE_FILE,
    DEVICE_PROFILES,
    ROLE_ALIASES,
    ROOT,
    active_services,
    aliases,
    published_ports,
    require_tool,
    service_by_alias,
    volume_mounts,
)

HOST_PATHS = ("/sys", "/proc", "/usr/bin/tegrastats")
"""Host paths an exporter may mount read-only (sensors)."""


def _is_export(name: str) -> bool:
    return name.endswith("-export")


def compose_config(profiles: tuple[str, ...], **variables: str) -> dict[str, Any]:
    """compose.yaml as ``docker compose`` v2 resolves it for ``profiles`` (skips when the plugin is missing)."""
    docker = require_tool("docker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEDIFF_", "COMPOSE_", "DOCKER_"))}
    if subprocess.run([docker, "compose", "version"], capture_output=True, env=env, timeout=60).returncode != 0:
        pytest.skip("docker compose v2 is not installed (make system-deps installs the CLI plugin)")
    args = [docker, "compose", "--file", str(COMPOSE_FILE), "--project-directory", str(ROOT)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "--format", "json"], capture_output=True, text=True,
                            env={**env, **variables}, timeout=60)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.mark.parametrize("profiles", [("cpu",), ("rtx",), ("jetson",), ("loadtest",), ("cpu", "loadtest")])
def test_docker_compose_accepts_the_profile(profiles: tuple[str, ...]) -> None:
    services = compose_config(profiles)["services"]
    assert services
    for name, service in services.items():  # needs Docker Engine >= 25, which Debian 12 (20.10) does not have
        assert "start_interval" not in (service.get("healthcheck") or {}), name


def test_every_service_is_hardened(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["cap_drop"] == ["ALL"], f"{name} keeps capabilities"
        assert not service.get("cap_add"), f"{name} adds capabilities back"
        assert "no-new-privileges:true" in service["security_opt"], name
        assert not service.get("privileged"), name


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_triton_is_reachable_by_its_gateway_only(profile: str) -> None:
    config = compose_config((profile, "loadtest"), EDGEDIFF_BIND_ADDRESS="0.0.0.0")
    assert config["networks"]["triton"].get("internal") is True
    services = config["services"]
    on_triton = sorted(n for n, s in services.items() if "triton" in (s.get("networks") or {}))
    assert on_triton == sorted([f"{profile}-triton", f"{profile}-gateway", "prometheus"])  # Prometheus: its metrics
    triton = services[f"{profile}-triton"]
    assert list(triton["networks"]) == ["triton"] and not triton.get("ports")
    assert triton["networks"]["triton"]["aliases"] == ["triton"]


def test_bind_address_exposes_neither_grafana_nor_locust() -> None:
    services = compose_config(("cpu", "loadtest"), EDGEDIFF_BIND_ADDRESS="0.0.0.0")["services"]
    bound = {name: {p["host_ip"] for p in service.get("ports") or []} for name, service in services.items()}
    assert bound["grafana"] == bound["locust-master"] == {"127.0.0.1"}
    assert bound["cpu-gateway"] == {"0.0.0.0"}  # the switch still does what it is for


def test_host_ports_follow_their_variables() -> None:
    services = compose_config(("cpu",), EDGEDIFF_GATEWAY_PORT="50061", EDGEDIFF_PROMETHEUS_PORT="19090")["services"]
    assert {p["published"] for p in services["cpu-gateway"]["ports"]} == {"50061", str(GATEWAY_METRICS_PORT)}
    assert [p["published"] for p in services["prometheus"]["ports"]] == ["19090"]


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_each_device_profile_is_a_complete_deployment(compose: dict[str, Any], profile: str) -> None:
    services = active_services(compose, profile)
    for alias in ROLE_ALIASES:
        name, _ = service_by_alias(compose, profile, alias)
        assert name == f"{profile}-{alias}"
    exports = [n for n in services if _is_export(n)]
    assert exports == [f"{profile}-export"]
    assert {"prometheus", "grafana"} <= set(services)
    assert not {n for n in services if n.startswith("locust")}, "Locust belongs to the loadtest profile only"
    other_devices = [p for p in DEVICE_PROFILES if p != profile]
    assert not [n for n in services if n.split("-")[0] in other_devices]


def test_profiles_are_devices_or_loadtest(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        profiles = set(service.get("profiles") or [])
        assert profiles, f"{name} has no profile: it would start with every device"
        assert profiles <= {*DEVICE_PROFILES, "loadtest"}, name
    locust = active_services(compose, "loadtest")
    assert set(locust) == {"locust-master", "locust-worker"}
    assert aliases(compose["services"]["locust-master"]) == []


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_dependencies_stay_inside_the_profile(compose: dict[str, Any], profile: str) -> None:
    services = active_services(compose, profile)
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on {dependency}, which profile {profile} does not start"
            expected = "service_completed_successfully" if _is_export(dependency) else "service_healthy"
            assert spec["condition"] == expected, f"{name} -> {dependency}"
    triton = f"{profile}-triton"
    assert f"{profile}-export" in services[triton]["depends_on"]
    assert triton in services[f"{profile}-gateway"]["depends_on"]


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if _is_export(name):
            assert service["restart"] == "no", f"{name} is a one-shot job"
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] == "CMD" and len(check["test"]) > 1, name
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}: healthcheck without {key}"
        assert service["restart"] == "unless-stopped", name


def test_volumes_are_named_or_read_only_binds(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in compose["services"].items():
        for source, target, mode in volume_mounts(service):
            assert target.startswith("/"), f"{name}: {target}"
            if not source.startswith(("/", ".")):
                assert source in declared, f"{name}: volume {source!r} is not declared under volumes:"
                used.add(source)
                continue
            assert mode == "ro", f"{name}: bind mount {source} must be read-only"
            if source.startswith("/"):
                assert source in HOST_PATHS, f"{name}: unexpected host path {source}"
            elif source != "./weights":
                assert (ROOT / source).exists(), f"{name}: {source} does not exist in the repository"
    assert used == declared, f"declared but unused volumes: {sorted(declared - used)}"


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_export_writes_the_repository_triton_reads(compose: dict[str, Any], profile: str) -> None:
    services = compose["services"]
    export = {target: (source, mode) for source, target, mode in volume_mounts(services[f"{profile}-export"])}
    triton = {target: (source, mode) for source, target, mode in volume_mounts(services[f"{profile}-triton"])}
    assert export["/models"] == (f"model_repository_{profile}", "rw")
    assert triton["/models"] == (f"model_repository_{profile}", "ro")
    assert export["/cache"] == triton["/cache"] == (f"edgediff_cache_{profile}", "rw")
    assert export["/weights"][1] == "ro"


def test_published_ports_bind_loopback_by_default(compose: dict[str, Any]) -> None:
    published = {name: published_ports(service) for name, service in compose["services"].items()}
    assert any(published.values())
    for name, ports in published.items():
        for host_ip, host_port, container_port in ports:
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip}"
            assert host_port == container_port, name
    for profile in DEVICE_PROFILES:
        exposed = [n for n in active_services(compose, profile) if published[n]]
        assert sorted(exposed) == sorted([f"{profile}-gateway", f"{profile}-exporter", "prometheus", "grafana"])
        # the metrics `edgediff loadtest` reads from the host are published beside the gateway
        assert {p[2] for p in published[f"{profile}-gateway"]} == {GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT}
        assert {p[2] for p in published[f"{profile}-exporter"]} == {EXPORTER_PORT}


def test_images_are_built_here_or_pinned(compose: dict[str, Any]) -> None:
    built: dict[str, str] = {}
    for name, service in compose["services"].items():
        image = re.sub(r"\$\{[A-Z_]+:-([^}]+)\}", r"\1", service["image"])  # the default of a variable image
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert built.setdefault(image, str(dockerfile)) == str(dockerfile), f"{image} built from two files"
    for name, service in compose["services"].items():
        if service["image"].startswith("edgediff-"):  # (variable images default to a registry's)
            assert service["image"] in built, f"{name}: no service builds {service['image']}"
    assert set(built) == {"edgediff-cpu:0.1.0", "edgediff-rtx:0.1.0", "edgediff-jetson:0.1.0"}


@pytest.mark.parametrize("profile", DEVICE_PROFILES)
def test_device_access(compose: dict[str, Any], profile: str) -> None:
    services = compose["services"]
    gpu_devices = [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    for role in ("export", "triton", "exporter"):
        service = services[f"{profile}-{role}"]
        if profile == "rtx":
            assert service["deploy"]["resources"]["reservations"]["devices"] == gpu_devices, role
        elif profile == "jetson":
            assert service["runtime"] == "nvidia", role
        else:
            assert "deploy" not in service and "runtime" not in service, role
    assert "deploy" not in services[f"{profile}-gateway"] and "runtime" not in services[f"{profile}-gateway"]
    exporter = services[f"{profile}-exporter"]
    mounts = {target: (source, mode) for source, target, mode in volume_mounts(exporter)}
    assert mounts["/host/sys"] == ("/sys", "ro") and mounts["/host/proc"] == ("/proc", "ro")
    assert exporter["cap_drop"] == ["ALL"] and exporter["read_only"] is True
    if profile == "jetson":
        assert mounts["/usr/bin/tegrastats"] == ("/usr/bin/tegrastats", "ro")
    for role in ("triton",):
        assert services[f"{profile}-{role}"]["shm_size"] == "1gb"
