"""``edgediff up/status/down --runtime docker`` on a real engine, through ``docker compose`` v2.

The small fixture project (tests/stack/fixtures/docker) has the shapes of compose.yaml: a one-shot that must complete,
a server that must be healthy, a published front, replicas, an optional service whose image cannot be had. The cpu
profile of compose.yaml itself runs end to end in tests/deploy/test_engine_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from edgediff.errors import InvalidArgumentError
from services.stack.docker_runtime import (
    ComposeStack,
    compose_environment,
    docker_cli,
    engine_reachable,
    image_present,
)
from services.stack.state import read_state
from services.stack.supervisor import StackError

FIXTURE_COMPOSE = Path(__file__).parent / "fixtures" / "docker" / "compose.yaml"
REPO_COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
LOCAL_BUSYBOX = "edgediff-fixture-busybox:1"
"""busybox from Debian's static binary (busybox-static), where busybox:1.36 cannot be pulled."""
LABEL_PROJECT = "com.docker.compose.project"


@pytest.fixture(scope="module")
def busybox() -> str:
    """A busybox image on the engine: busybox:1.36 when present or pullable, else one built from /bin/busybox."""
    ok, why = engine_reachable()
    if not ok:
        pytest.skip(why)
    for name in ("busybox:1.36", LOCAL_BUSYBOX):
        if image_present(name):
            return name
    if docker_cli("pull", "busybox:1.36", timeout_s=300).returncode == 0:
        return "busybox:1.36"
    if not Path("/bin/busybox").is_file():
        pytest.fail("busybox:1.36 cannot be pulled and /bin/busybox is missing (make system-deps installs "
                    "busybox-static)")
    with tempfile.TemporaryDirectory() as context:
        shutil.copy2("/bin/busybox", Path(context) / "busybox")
        (Path(context) / "Dockerfile").write_text(
            'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n')
        built = docker_cli("build", "-q", "-t", LOCAL_BUSYBOX, context, timeout_s=300)
    assert built.returncode == 0, built.stderr
    return LOCAL_BUSYBOX


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _leftovers(project: str, kind: str = "container") -> list[str]:
    args = ["ps", "-a"] if kind == "container" else [kind, "ls"]
    listed = docker_cli(*args, "-q", "--filter", f"label={LABEL_PROJECT}={project}")
    return listed.stdout.split()


@pytest.fixture
def fixture_stack(busybox: str, tmp_path: Path) -> Iterator[tuple[ComposeStack, list[str]]]:
    """A ``ComposeStack`` of the fixture project under a unique name; everything of it is removed afterwards."""
    lines: list[str] = []
    env = compose_environment(base={**os.environ, "FIXTURE_IMAGE": busybox, "FIXTURE_PORT": str(_free_port())})
    project = f"edgediff-test-{uuid.uuid4().hex[:8]}"
    stack = ComposeStack(FIXTURE_COMPOSE, ["main", "extra"], env, project=project, state_dir=tmp_path / "state",
                         meta={"model": "fixture"}, echo=lines.append)
    try:
        yield stack, lines
    finally:
        stack.down(volumes=True)
        assert _leftovers(project) == [] and _leftovers(project, "volume") == []


def _started_at(project: str) -> dict[str, tuple[str, str]]:
    ids = _leftovers(project)
    out = docker_cli("inspect", "--format", "{{.Name}} {{.State.StartedAt}} {{.State.FinishedAt}}", *ids).stdout
    return {name.lstrip("/"): (started, finished) for name, started, finished in (line.split() for line in
                                                                                   out.splitlines())}


@pytest.mark.slow
def test_up_status_down_keep_their_ux(fixture_stack: tuple[ComposeStack, list[str]], capsys) -> None:
    stack, lines = fixture_stack
    p = stack.project
    state = stack.up(timeout_s=180)

    # compose's order: the one-shot completed before the server started, the server was healthy before the front
    order = list(state["services"])
    assert sorted(order) == ["backend", "frontend", "prepare", "worker"]
    assert order.index("prepare") < order.index("backend") < min(order.index("frontend"), order.index("worker"))
    times = _started_at(p)
    assert times[f"{p}-prepare-1"][1] <= times[f"{p}-backend-1"][0] < times[f"{p}-frontend-1"][0]
    # `up` returned once every service was ready: completed, healthy or running
    services = state["services"]
    assert {n: s["status"] for n, s in services.items()} == {"prepare": "completed", "backend": "healthy",
                                                             "frontend": "healthy", "worker": "running"}
    assert services["worker"]["containers"] == [f"{p}-worker-1", f"{p}-worker-2"]
    port = int(stack.env["FIXTURE_PORT"])
    assert services["frontend"]["port"] == port and services["frontend"]["ports"] == {"8080/tcp": f"127.0.0.1:{port}"}
    assert services["backend"]["log"] == f"docker compose -p {p} logs backend"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as answer:
        assert answer.read().strip() == b"ok"

    # the optional service without an image is left out, said, recorded
    assert any(line.startswith("  grafana left out: edgediff-fixture-missing:0") for line in lines), lines
    assert state["left_out"] == ["grafana"] and "grafana" not in services
    assert state["runtime"] == "docker" and state["project"] == p and state["model"] == "fixture"
    assert read_state(stack.state_dir) == state

    # `edgediff status` and `down` from the state file alone
    assert main(["status", "--state-dir", str(stack.state_dir)]) == 0
    out = capsys.readouterr().out
    assert "stack: runtime docker" in out
    assert any(line.startswith("frontend") and "healthy" in line and str(port) in line for line in out.splitlines())
    docker_cli("kill", f"{p}-worker-2")
    assert main(["status", "--state-dir", str(stack.state_dir)]) == 1  # a dead replica shows
    assert any(line.startswith("worker") and "exited" in line for line in capsys.readouterr().out.splitlines())

    assert main(["down", "--state-dir", str(stack.state_dir)]) == 0
    assert "stack stopped" in capsys.readouterr().out
    assert _leftovers(p) == [] and _leftovers(p, "network") == []
    assert _leftovers(p, "volume") != []  # `down` keeps volumes (the model repository); `down --volumes` removes them
    assert read_state(stack.state_dir) is None
    assert stack.status()["frontend"]["status"] == "missing"


@pytest.mark.slow
def test_a_failed_one_shot_names_itself_shows_its_log_and_stops_the_stack(fixture_stack) -> None:
    stack, _ = fixture_stack
    stack.profiles, stack.env["FIXTURE_EXIT"] = ["main"], "3"
    with pytest.raises(StackError, match=r"didn't complete successfully: exit 3.*prepare exited: prepared"):
        stack.up(timeout_s=120)
    assert _leftovers(stack.project) == []
    assert read_state(stack.state_dir) is None


@pytest.mark.slow
def test_the_health_wait_times_out_with_the_state_of_the_service(fixture_stack) -> None:
    stack, _ = fixture_stack
    stack.profiles, stack.env["FIXTURE_HEALTH_PATH"] = ["main"], "missing.html"  # never healthy
    with pytest.raises(StackError, match=r"backend (starting|unhealthy)"):
        stack.up(timeout_s=4)
    assert _leftovers(stack.project) == []


def test_unknown_profile_names_the_choices(busybox: str) -> None:
    stack = ComposeStack(FIXTURE_COMPOSE, ["nope"], {**os.environ, "FIXTURE_IMAGE": busybox}, echo=None)
    with pytest.raises(InvalidArgumentError, match=r"profile 'nope' is not in compose.yaml; choose from extra, main"):
        stack.services()


def test_no_engine_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    ok, why = engine_reachable()
    assert not ok and why.startswith("no Docker engine reachable") and why.endswith("use --runtime local")
    assert main(["up", "--runtime", "docker", "--variants", "onnx-fp32", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no Docker engine reachable" in err, err


def test_compose_environment_carries_the_flags_of_up(tmp_path: Path) -> None:
    env = compose_environment(model="tiny", weights_dir=tmp_path, variants=["onnx-fp32", "openvino-fp32"],
                              ports={"gateway": 50061, "prometheus": 19090}, base={})
    assert env == {"EDGEDIFF_MODEL": "tiny", "EDGEDIFF_WEIGHTS_DIR": str(tmp_path.resolve()),
                   "EDGEDIFF_WEIGHTS": "/weights", "EDGEDIFF_VARIANTS": "onnx-fp32,openvino-fp32",
                   "EDGEDIFF_VARIANT": "onnx-fp32", "EDGEDIFF_GATEWAY_PORT": "50061",
                   "EDGEDIFF_PROMETHEUS_PORT": "19090"}
    with pytest.raises(InvalidArgumentError, match="Triton is reachable by its gateway only"):
        compose_environment(ports={"triton-grpc": 18001}, base={})


def test_the_repository_compose_file_resolves_with_the_ports_of_up(busybox: str) -> None:
    env = compose_environment(ports={"gateway": 50061, "exporter": 19400})
    stack = ComposeStack(REPO_COMPOSE, ["cpu"], env, echo=None)
    order = stack.services()
    assert order.index("cpu-export") < order.index("cpu-triton") < order.index("cpu-gateway")
    assert sorted(order) == sorted(["cpu-export", "cpu-triton", "cpu-gateway", "cpu-exporter", "prometheus", "grafana"])
    config = stack.config()["services"]
    assert {p["published"] for p in config["cpu-gateway"]["ports"]} == {"50061", "9401"}
    assert [p["published"] for p in config["cpu-exporter"]["ports"]] == ["19400"]


def test_auto_runtime_picks_docker_only_when_the_images_are_here(busybox: str) -> None:
    from services.stack.docker_runtime import choose_runtime

    runtime, why = choose_runtime("rtx", REPO_COMPOSE)  # no GPU base image here
    assert runtime == "local" and "edgediff-rtx:0.1.0 is not on it" in why and "make images" in why
    if image_present("edgediff-cpu:0.1.0"):
        assert choose_runtime("cpu", REPO_COMPOSE)[0] == "docker"


def test_ps_json_lines_are_what_status_reads(busybox: str) -> None:
    """compose v2.21+ prints one JSON object per line (older v2: one array); both are read."""
    version = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and int(version.stdout.split(".")[0].lstrip("v")) >= 2
    listed = docker_cli("compose", "--project-name", "edgediff-test-none", "ps", "--all", "--format", "json")
    assert listed.returncode == 0 and listed.stdout.strip() in ("", "[]")
    assert json.loads(listed.stdout or "[]") == []
