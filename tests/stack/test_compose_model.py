"""compose.yaml into the typed model: interpolation as compose does it, every syntax the runtime maps, clear errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.stack.compose_model import (
    CONDITION_COMPLETED,
    CONDITION_HEALTHY,
    CONDITION_STARTED,
    ComposeError,
    GpuRequest,
    Mount,
    PortSpec,
    interpolate,
    load_compose,
    parse_bytes,
    parse_duration_s,
    parse_mount,
    parse_port,
)

ROOT = Path(__file__).resolve().parents[2]
REPO_COMPOSE = ROOT / "compose.yaml"
FIXTURE_COMPOSE = Path(__file__).parent / "fixtures" / "docker" / "compose.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${SET}", "value"),
        ("$SET/x", "value/x"),
        ("${UNSET}", ""),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY-fallback}", ""),
        ("${UNSET-fallback}", "fallback"),
        ("${SET:-fallback}", "value"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-${ALSO_UNSET:-deep}}/tail", "deep/tail"),
        ("$${SET} costs $$5", "${SET} costs $5"),
        ("a$-b", "a$-b"),
        ("${SET:?must be set}", "value"),
    ],
)
def test_interpolation_matches_compose(text: str, expected: str) -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate(text, env) == expected


@pytest.mark.parametrize("text", ["${UNSET:?give a model}", "${EMPTY:?give a model}", "${UNSET?give a model}"])
def test_required_variable_missing_names_it(text: str) -> None:
    with pytest.raises(ComposeError, match=r"services\.x: variable (UNSET|EMPTY) is not set: give a model"):
        interpolate(text, {"EMPTY": ""}, "services.x")


def test_unclosed_brace_is_an_error() -> None:
    with pytest.raises(ComposeError, match="unclosed"):
        interpolate("${OOPS", {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8000", [PortSpec(8000)]),
        (8000, [PortSpec(8000)]),
        ("8000:80", [PortSpec(80, host_port=8000)]),
        ("127.0.0.1:50051:50051", [PortSpec(50051, host_port=50051, host_ip="127.0.0.1")]),
        ("127.0.0.1::9090", [PortSpec(9090, host_ip="127.0.0.1")]),
        ("[::1]:3000:3000", [PortSpec(3000, host_port=3000, host_ip="::1")]),
        ("5353:53/udp", [PortSpec(53, "udp", 5353)]),
        ("8000-8001:9000-9001", [PortSpec(9000, host_port=8000), PortSpec(9001, host_port=8001)]),
        ({"target": 80, "published": "8080", "host_ip": "0.0.0.0", "protocol": "tcp"},
         [PortSpec(80, host_port=8080, host_ip="0.0.0.0")]),
    ],
)
def test_port_syntaxes(value: object, expected: list[PortSpec]) -> None:
    assert parse_port(value, "ports") == expected


def test_port_ranges_of_different_length_are_rejected() -> None:
    with pytest.raises(ComposeError, match="ranges differ"):
        parse_port("8000-8002:9000-9001", "services.a.ports[0]")


def test_mount_syntaxes(tmp_path: Path) -> None:
    assert parse_mount("models:/models:ro", tmp_path, "v") == Mount("volume", "models", "/models", True)
    assert parse_mount("./conf:/etc/x", tmp_path, "v") == Mount("bind", str(tmp_path / "conf"), "/etc/x", False)
    assert parse_mount("/sys:/host/sys:ro,z", tmp_path, "v") == Mount("bind", "/sys", "/host/sys", True)
    assert parse_mount({"type": "bind", "source": "../up", "target": "/up", "read_only": True}, tmp_path, "v") == \
        Mount("bind", str((tmp_path / "../up").resolve()), "/up", True)
    assert parse_mount({"type": "tmpfs", "target": "/tmp"}, tmp_path, "v") == Mount("tmpfs", None, "/tmp")
    with pytest.raises(ComposeError, match="anonymous volume"):
        parse_mount("/data", tmp_path, "services.a.volumes[0]")


@pytest.mark.parametrize(("value", "seconds"), [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0),
                                                (15, 15.0), ("2.5s", 2.5)])
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration_s(value, "d") == pytest.approx(seconds)


def test_bad_duration_and_sizes() -> None:
    with pytest.raises(ComposeError, match="not a duration"):
        parse_duration_s("10 parsecs", "services.a.healthcheck.interval")
    assert parse_bytes("1gb", "s") == 1 << 30
    assert parse_bytes("256m", "s") == 256 << 20
    assert parse_bytes(4096, "s") == 4096


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def test_unmappable_key_names_service_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {"web": {"image": "busybox", "configs": ["x"]}}})
    with pytest.raises(ComposeError, match=r"services\.web: keys the Docker runtime cannot map: configs"):
        load_compose(path, "p", env={})


def test_undeclared_volume_and_unknown_dependency(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {"web": {"image": "busybox", "volumes": ["data:/data"]}}})
    with pytest.raises(ComposeError, match="volume 'data' is not declared"):
        load_compose(path, "p", env={})
    path = _write(tmp_path, {"services": {"web": {"image": "busybox", "depends_on": ["db"]}}})
    with pytest.raises(ComposeError, match="unknown service 'db'"):
        load_compose(path, "p", env={})


def test_dependency_cycle_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {"a": {"image": "x", "depends_on": ["b"]},
                                          "b": {"image": "x", "depends_on": ["a"]}}})
    with pytest.raises(Exception, match="dependency cycle"):
        load_compose(path, "p", env={})


def test_required_dependency_outside_the_profiles_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {
        "web": {"image": "x", "depends_on": {"db": {"condition": "service_healthy"}}},
        "db": {"image": "x", "profiles": ["db"]},
        "cache": {"image": "x", "profiles": ["db"]},
        "api": {"image": "x", "depends_on": {"cache": {"condition": "service_started", "required": False}}},
    }})
    project = load_compose(path, "p", env={})
    with pytest.raises(ComposeError, match="web depends on db, which is not in the active profiles"):
        project.active_services([])
    assert [s.name for s in project.active_services(["db"])] == ["db", "web", "cache", "api"]
    del_web = load_compose(_write(tmp_path, {"services": {
        "cache": {"image": "x", "profiles": ["db"]},
        "api": {"image": "x", "depends_on": {"cache": {"condition": "service_started", "required": False}}},
    }}), "p", env={})
    (api,) = del_web.active_services([])
    assert api.depends_on == () and api.dependencies == ()


def test_fixture_compose_every_field(tmp_path: Path) -> None:
    env = {"FIXTURE_PORT": "28080", "FIXTURE_MODE": "ci"}
    project = load_compose(FIXTURE_COMPOSE, "proj", env=env)
    assert project.profiles == ["extra", "gpu"]
    assert [s.name for s in project.active_services([])] == ["prepare", "backend", "frontend"]
    assert [s.name for s in project.active_services(["extra"])] == ["prepare", "backend", "frontend", "worker"]

    prepare = project.services["prepare"]
    assert prepare.build is not None
    assert prepare.build.context == FIXTURE_COMPOSE.parent / "prepare"
    assert dict(prepare.build.args) == {"GREETING": "hello"}
    assert prepare.image == "edgediff-fixture-prepare:1"
    assert prepare.restart.to_sdk() is None

    backend = project.services["backend"]
    assert backend.command == ["httpd", "-f", "-p", "8080", "-h", "/data"]  # a string command is split like a shell
    assert backend.environment == {"FIXTURE_MODE": "ci", "FIXTURE_EMPTY": ""}
    assert backend.mounts == [Mount("volume", "data", "/data", True)]
    assert backend.dependencies[0].condition == CONDITION_COMPLETED
    assert backend.networks == {"default": ("api",)}
    assert backend.healthcheck is not None
    assert backend.healthcheck.to_sdk() == {
        "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"],
        "interval": 1_000_000_000, "timeout": 2_000_000_000, "start_period": 500_000_000, "retries": 30}
    assert backend.restart.to_sdk() == {"Name": "unless-stopped"}

    frontend = project.services["frontend"]
    assert frontend.ports == [PortSpec(8080, "tcp", 28080, "127.0.0.1")]
    assert frontend.environment == {"BACKEND_URL": "http://api:8080", "FIXTURE_MODE": "ci"}
    assert frontend.healthcheck is not None and frontend.healthcheck.test[0] == "CMD-SHELL"
    assert frontend.dependencies[0].condition == CONDITION_HEALTHY
    assert frontend.restart.to_sdk() == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert frontend.stop_grace_period_s == 2.0
    assert Mount("tmpfs", None, "/www") in frontend.mounts

    worker = project.services["worker"]
    assert worker.replicas == 2
    assert worker.dependencies[0].condition == CONDITION_STARTED

    accelerated = project.services["accelerated"]
    assert accelerated.gpus == [GpuRequest("nvidia", 1, (), ("gpu", "compute"))]
    assert accelerated.runtime == "nvidia"
    assert accelerated.shm_size == 256 << 20

    assert project.volumes["data"].name == "proj_data"
    assert project.networks["default"].name == "proj_default"


def test_dotenv_fills_gaps_but_the_environment_wins(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE_COMPOSE.parent, tmp_path / "p")
    (tmp_path / "p" / ".env").write_text("FIXTURE_MODE=from-dotenv\nFIXTURE_PORT=\"38080\"\n# comment\n")
    project = load_compose(tmp_path / "p" / "compose.yaml", "p", env={"FIXTURE_PORT": "48080"})
    assert project.services["backend"].environment["FIXTURE_MODE"] == "from-dotenv"
    assert project.services["frontend"].ports[0].host_port == 48080


def test_repository_compose_maps_completely() -> None:
    """Every key of the real compose.yaml is one the runtime maps (an unmappable one raises)."""
    project = load_compose(REPO_COMPOSE, "edgediff", env={})
    raw = yaml.safe_load(REPO_COMPOSE.read_text())
    assert list(project.services) == list(raw["services"])
    for name, spec in raw["services"].items():
        service = project.services[name]
        assert set(service.profiles) == set(spec.get("profiles", []))
        if "healthcheck" in spec:
            assert service.healthcheck is not None
            assert list(service.healthcheck.test) == spec["healthcheck"]["test"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) is not installed")
def test_model_agrees_with_docker_compose_config() -> None:
    """docker-compose's own normalisation of compose.yaml is the oracle for interpolation, commands, environment,
    volumes, healthchecks, restart policies and users."""
    env = {"PATH": "/usr/bin:/bin", "EDGEDIFF_MODEL": "tiny", "EDGEDIFF_BIND_ADDRESS": "0.0.0.0"}
    done = subprocess.run(["docker-compose", "-p", "edgediff", "-f", str(REPO_COMPOSE), "config"],
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    oracle = yaml.safe_load(done.stdout)["services"]
    project = load_compose(REPO_COMPOSE, "edgediff", env=env)
    assert set(oracle) == set(project.services)
    for name, spec in oracle.items():
        service = project.services[name]
        assert service.command == spec.get("command"), name
        assert service.environment == {k: str(v) for k, v in (spec.get("environment") or {}).items()}, name
        expected_mounts = []
        for entry in spec.get("volumes") or []:
            source, target, mode = entry.split(":")
            kind = "bind" if source.startswith("/") else "volume"
            expected_mounts.append(Mount(kind, source, target, mode == "ro"))
        assert [m for m in service.mounts if m.kind != "tmpfs"] == expected_mounts, name
        if "healthcheck" in spec:
            assert service.healthcheck is not None
            assert list(service.healthcheck.test) == spec["healthcheck"]["test"], name
            assert service.healthcheck.interval_s == parse_duration_s(spec["healthcheck"]["interval"], name)
        assert service.restart.name == spec.get("restart", "no"), name
        assert service.user == spec.get("user"), name
        assert service.image == spec.get("image"), name
        ours = [f"{p.host_ip}:{p.host_port}:{p.container_port}/{p.protocol}" for p in service.ports]
        assert ours == spec.get("ports", []), name  # docker-compose writes e.g. 0.0.0.0:50051:50051/tcp
