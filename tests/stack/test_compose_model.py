"""compose.yaml read through the installed compose tool: what the runtime decides on, and clear errors.

Interpolation, ``.env``, ``env_file`` and validation are the tool's (docker-compose v1 here, ``docker compose`` v2
where installed); these tests check that its output reaches the runtime intact, in both output shapes (v1's short
ports/volumes, v2's long JSON form through a stand-in tool).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.stack.compose import tool as compose_tool
from services.stack.compose.docker_args import run_arguments
from services.stack.compose.project import (
    CONDITION_COMPLETED,
    CONDITION_HEALTHY,
    CONDITION_STARTED,
    ComposeError,
    Mount,
    load_compose,
    parse_duration_s,
)

ROOT = Path(__file__).resolve().parents[2]
REPO_COMPOSE = ROOT / "compose.yaml"
FIXTURE_COMPOSE = Path(__file__).parent / "fixtures" / "docker" / "compose.yaml"


@pytest.fixture(autouse=True)
def _needs_a_compose_tool() -> None:
    if compose_tool.find_tool() is None:
        pytest.skip("neither 'docker compose' nor 'docker-compose' is installed (make system-deps installs it)")


def _write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(("value", "seconds"), [("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0),
                                                (15, 15.0), ("2.5s", 2.5), ("3m0s", 180.0)])
def test_durations_as_both_tools_print_them(value: object, seconds: float) -> None:
    assert parse_duration_s(value, "d") == pytest.approx(seconds)


def test_bad_duration_names_the_field() -> None:
    with pytest.raises(ComposeError, match=r"services\.a\.healthcheck\.interval: '10 parsecs' is not a duration"):
        parse_duration_s("10 parsecs", "services.a.healthcheck.interval")


def test_no_compose_tool_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compose_tool, "find_tool", lambda: None)
    with pytest.raises(ComposeError, match=r"neither 'docker compose' nor 'docker-compose' is installed"):
        load_compose(REPO_COMPOSE, "p", env={})


def test_the_tool_interpolates_and_reads_env_files(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("FROM_FILE=1\nMODE=from-file\n")
    (tmp_path / ".env").write_text("DOTENV_ONLY=dot\nPORT=1111\n")
    path = _write(tmp_path, {"services": {"web": {
        "image": "busybox:${TAG:-1.36}", "env_file": "app.env",
        "environment": {"MODE": "${MODE:-default}", "DOT": "${UNSET:-$DOTENV_ONLY}", "DOLLAR": "$$5"},
        "ports": ["127.0.0.1:${PORT}:80"], "volumes": ["./data:/data:ro"], "command": "sh -c 'echo hi'"}}})
    project = load_compose(path, "p", env={"PORT": "2222", "MODE": "env"})
    web = project.services["web"]
    args = run_arguments(project, web, project="p", image="x")
    assert web.image == "busybox:1.36"
    assert args["environment"] == {"FROM_FILE": "1", "MODE": "env", "DOT": "$DOTENV_ONLY", "DOLLAR": "$5"}
    assert args["ports"] == {"80/tcp": ("127.0.0.1", 2222)}  # the environment wins over .env
    assert args["volumes"] == [f"{tmp_path}/data:/data:ro"]  # relative binds resolved by the tool
    assert args["command"] == ["sh", "-c", "echo hi"]


def test_the_tools_rejections_reach_the_user(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {"web": {"image": "busybox", "volumes": ["data:/data"]}}})
    with pytest.raises(ComposeError, match=r"config rejects the file: .*data"):
        load_compose(path, "p", env={})
    path = _write(tmp_path, {"services": {"web": {"image": "busybox", "depends_on": ["db"]}}})
    with pytest.raises(ComposeError, match=r"config rejects the file: .*db"):
        load_compose(path, "p", env={})


def test_unmappable_key_names_service_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {"web": {"image": "busybox", "dns": "10.0.0.1"}}})
    with pytest.raises(ComposeError, match=r"services\.web: keys the Docker runtime cannot map: dns"):
        load_compose(path, "p", env={})


def test_dependency_cycle_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {"a": {"image": "x", "depends_on": ["b"]},
                                          "b": {"image": "x", "depends_on": ["a"]}}})
    with pytest.raises(Exception, match=r"(?i)cycl|circular"):
        load_compose(path, "p", env={})


def test_profiles_order_and_left_out_services(tmp_path: Path) -> None:
    path = _write(tmp_path, {"services": {
        "web": {"image": "x", "depends_on": {"db": {"condition": "service_healthy"}}},
        "db": {"image": "x", "profiles": ["db"], "healthcheck": {"test": ["CMD", "true"]}},
        "dash": {"image": "x", "profiles": ["db"]},
    }})
    project = load_compose(path, "p", env={})
    with pytest.raises(ComposeError, match="web depends on db, which is not in the active profiles"):
        project.active_services([])
    assert [s.name for s in project.active_services(["db"])] == ["db", "web", "dash"]  # file order, deps first
    assert [s.name for s in project.active_services(["db"], without=["dash"])] == ["db", "web"]
    with pytest.raises(ComposeError, match="web depends on db, which is left out"):
        project.active_services(["db"], without=["db"])


def test_fixture_compose_through_the_tool() -> None:
    env = {"FIXTURE_PORT": "28080", "FIXTURE_MODE": "ci"}
    project = load_compose(FIXTURE_COMPOSE, "proj", env=env)
    assert project.profiles == ["extra", "gpu"]
    assert [s.name for s in project.active_services([])] == ["prepare", "backend", "frontend"]
    assert [s.name for s in project.active_services(["extra"])] == ["prepare", "backend", "frontend", "worker"]

    prepare = project.services["prepare"]
    assert prepare.build is not None and prepare.build.context == FIXTURE_COMPOSE.parent / "prepare"
    assert dict(prepare.build.args) == {"GREETING": "hello", "BASE": "busybox:1.36"}
    assert prepare.image == "edgediff-fixture-prepare:1"
    assert prepare.restart.to_sdk() is None

    backend = project.services["backend"]
    args = run_arguments(project, backend, project="proj", image="busybox:1.36")
    assert args["command"] == ["httpd", "-f", "-p", "8080", "-h", "/data"]  # a string command is split like a shell
    assert args["environment"] == {"FIXTURE_MODE": "ci", "FIXTURE_EMPTY": ""}
    assert backend.mounts == (Mount("volume", "data", "/data", True),)
    assert args["volumes"] == ["proj_data:/data:ro"]
    assert backend.dependencies[0].condition == CONDITION_COMPLETED
    assert backend.networks == {"default": ("api",)}
    assert args["healthcheck"] == {
        "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"],
        "interval": 1_000_000_000, "timeout": 2_000_000_000, "start_period": 500_000_000, "retries": 30}
    assert backend.restart.to_sdk() == {"Name": "unless-stopped"}

    frontend = project.services["frontend"]
    args = run_arguments(project, frontend, project="proj", image="busybox:1.36")
    assert args["ports"] == {"8080/tcp": ("127.0.0.1", 28080)}
    assert args["environment"] == {"BACKEND_URL": "http://api:8080", "FIXTURE_MODE": "ci"}
    assert args["healthcheck"]["test"][0] == "CMD-SHELL"
    assert frontend.dependencies[0].condition == CONDITION_HEALTHY
    assert frontend.restart.to_sdk() == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert frontend.stop_grace_period_s == 2.0
    assert args["tmpfs"] == {"/www": ""}

    worker = project.services["worker"]
    assert worker.replicas == 2 and worker.dependencies[0].condition == CONDITION_STARTED

    accelerated = run_arguments(project, project.services["accelerated"], project="proj", image="busybox:1.36")
    (request,) = accelerated["device_requests"]
    assert (request["Driver"], request["Count"], request["Capabilities"]) == ("nvidia", 1, [["gpu", "compute"]])
    assert accelerated["runtime"] == "nvidia" and accelerated["shm_size"] in ("256m", 256 << 20)

    assert project.volumes["data"].name == "proj_data"
    assert project.networks["default"].name == "proj_default"


def test_dotenv_fills_gaps_but_the_environment_wins(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE_COMPOSE.parent, tmp_path / "p")
    (tmp_path / "p" / ".env").write_text("FIXTURE_MODE=from-dotenv\nFIXTURE_PORT=38080\n# comment\n")
    project = load_compose(tmp_path / "p" / "compose.yaml", "p", env={"FIXTURE_PORT": "48080"})
    backend = run_arguments(project, project.services["backend"], project="p", image="x")
    frontend = run_arguments(project, project.services["frontend"], project="p", image="x")
    assert backend["environment"]["FIXTURE_MODE"] == "from-dotenv"
    assert frontend["ports"] == {"8080/tcp": ("127.0.0.1", 48080)}


def test_repository_compose_maps_completely() -> None:
    """Every key of the real compose.yaml is one the runtime maps (an unmappable one raises)."""
    project = load_compose(REPO_COMPOSE, "edgediff", env={"EDGEDIFF_MODEL": "tiny"})
    raw = yaml.safe_load(REPO_COMPOSE.read_text())
    assert list(project.services) == list(raw["services"])
    for name, spec in raw["services"].items():
        service = project.services[name]
        assert set(service.profiles) == set(spec.get("profiles", []))
        args = run_arguments(project, service, project="edgediff", image="x")
        if "healthcheck" in spec:
            assert args["healthcheck"]["test"] == spec["healthcheck"]["test"]
        if "--model" in (spec.get("command") or []):
            assert args["command"][args["command"].index("--model") + 1] == "tiny"


_V2_CONFIG = {
    "name": "p",
    "services": {
        "api": {
            "image": "busybox:1.36", "command": ["httpd", "-f"], "environment": {"A": "1", "EMPTY": None},
            "ports": [{"mode": "ingress", "target": 8080, "published": "18080", "protocol": "tcp",
                       "host_ip": "127.0.0.1"}, {"target": 53, "published": "5353", "protocol": "udp"}],
            "volumes": [{"type": "volume", "source": "data", "target": "/data", "read_only": True, "volume": {}},
                        {"type": "bind", "source": "/etc/hosts", "target": "/h", "bind": {"create_host_path": True}},
                        {"type": "tmpfs", "target": "/run"}],
            "healthcheck": {"test": ["CMD", "true"], "interval": "10s", "timeout": "5s", "retries": 3,
                            "start_period": "3m0s"},
            "networks": {"default": None}, "restart": "on-failure:2", "shm_size": "1073741824",
            "gpus": [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}],
            "devices": [{"source": "/dev/null", "target": "/dev/nothing", "permissions": "rwm"}],
            "extra_hosts": ["db=10.0.0.2"], "stop_grace_period": "2s", "profiles": ["x"],
            "depends_on": {"db": {"condition": "service_healthy", "required": True, "restart": True}},
        },
        "db": {"image": "busybox:1.36", "networks": {"default": None}, "profiles": ["x"],
               "healthcheck": {"test": ["CMD", "true"]}},
    },
    "networks": {"default": {"name": "p_default", "ipam": {}}},
    "volumes": {"data": {"name": "p_data"}},
}


def test_compose_v2_long_form(tmp_path: Path) -> None:
    """``docker compose config --format json`` (v2) prints long forms; a stand-in tool named compose prints them."""
    fake = tmp_path / "compose"
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "print('x' if '--profiles' in sys.argv else open(sys.argv[0] + '.json').read())\n")
    fake.chmod(0o755)
    (tmp_path / "compose.json").write_text(json.dumps(_V2_CONFIG))
    path = _write(tmp_path, {"services": {"db": {}, "api": {}}})  # only the order of the services is read from it
    project = load_compose(path, "p", env={}, tool=[str(fake)])
    assert [s.name for s in project.active_services(["x"])] == ["db", "api"]
    api = project.services["api"]
    args = run_arguments(project, api, project="p", image="busybox:1.36", host_port_remap={18080: 28080})
    assert args["ports"] == {"8080/tcp": ("127.0.0.1", 28080), "53/udp": 5353}
    assert args["volumes"] == ["p_data:/data:ro", "/etc/hosts:/h:rw"] and args["tmpfs"] == {"/run": ""}
    assert args["environment"] == {"A": "1"}
    assert args["healthcheck"]["start_period"] == 180_000_000_000
    assert args["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert args["device_requests"][0]["Count"] == -1 and args["devices"] == ["/dev/null:/dev/nothing:rwm"]
    assert args["extra_hosts"] == {"db": "10.0.0.2"} and api.stop_grace_period_s == 2.0
    assert api.dependencies[0].condition == CONDITION_HEALTHY
