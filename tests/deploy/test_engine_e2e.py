"""The cpu profile on a real Docker engine, end to end: images built here, the stack up, PNGs through the gateway.

Runs wherever a Docker engine answers and ``docker compose`` v2 is installed (``.ci/run`` starts an engine when it runs
as root and none does; ``make system-deps`` installs the compose CLI plugin); skips, saying why, elsewhere. The images
come from ``scripts/build-images.sh`` (``make images``), which reuses the engine's layer cache: a warm build takes
seconds. Grafana has no image here (no registry, no Debian package): both runs go without it, the way docker/README.md
documents. Published ports bind 127.0.0.7 (docker compose) or free host ports (``edgediff up --ports``), so a stack on
the default ports of this machine is left alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgediff.constants import EXPORTER_PORT, GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT, PROMETHEUS_PORT, TRITON_GRPC_PORT
from services.gateway.client import GeneratorClient
from services.stack.docker_runtime import LOCAL_IMAGE_DEFAULTS, docker_cli, engine_reachable, image_present
from services.stack.state import STATE_FILE

from .deployfiles import COMPOSE_FILE, ROOT

pytestmark = pytest.mark.slow

CPU_IMAGE = "edgediff-cpu:0.1.0"
STACK = ["cpu-export", "cpu-triton", "cpu-gateway", "cpu-exporter", "prometheus"]
"""The cpu profile without Grafana (its image cannot be built or pulled here)."""
LONG_RUNNING = STACK[1:]
BIND = "127.0.0.7"
UP_TIMEOUT_S = 900.0
PNG = b"\x89PNG\r\n\x1a\n"
CONCURRENT = 4
LABEL_PROJECT = "com.docker.compose.project"


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """``make images`` (warm: the engine's layer cache), timed; the Prometheus image the stack should run."""
    ok, why = engine_reachable()
    if not ok:
        pytest.skip(why)
    start = time.monotonic()
    result = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True,
                            timeout=3600)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"scripts/build-images.sh: {elapsed:.0f} s", file=sys.stderr)
    user = docker_cli("image", "inspect", "--format", "{{.Config.User}}", CPU_IMAGE).stdout.strip()
    assert user == "10001:10001", "the cpu image runs as the non-root edgediff user"
    return {variable: local for variable, local in LOCAL_IMAGE_DEFAULTS.items() if image_present(local)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _containers(project: str) -> list[dict[str, Any]]:
    """``docker inspect`` of every container of the project."""
    ids = docker_cli("ps", "-aq", "--filter", f"label={LABEL_PROJECT}={project}").stdout.split()
    return json.loads(docker_cli("inspect", *ids).stdout) if ids else []


def _states(project: str) -> dict[str, str]:
    """Service -> health (``completed`` for the one-shot export, ``exited N`` for a failure)."""
    states = {}
    for container in _containers(project):
        state, service = container["State"], container["Config"]["Labels"]["com.docker.compose.service"]
        if state["Status"] == "exited":
            states[service] = "completed" if state["ExitCode"] == 0 else f"exited {state['ExitCode']}"
        else:
            states[service] = (state.get("Health") or {}).get("Status", state["Status"])
    return states


def _generate_pngs(target: str) -> None:
    """One Generate, then CONCURRENT at once: every call answers with a PNG, none is lost."""
    with GeneratorClient(target, timeout_s=600) as client:
        client.wait_serving(timeout_s=120)
        response = client.generate(seed=1, steps=2)
        assert response.images and all(image.startswith(PNG) for image in response.images)

        def one(seed: int) -> int:
            reply = client.generate(seed=seed, steps=2)
            assert reply.images[0].startswith(PNG)
            return len(reply.images)

        with ThreadPoolExecutor(CONCURRENT) as pool:
            assert list(pool.map(one, range(10, 10 + CONCURRENT))) == [1] * CONCURRENT


def _prometheus_targets_up(url: str, timeout_s: float = 90.0) -> list[dict[str, Any]]:
    """Prometheus's active targets once every one is up (they appear within a scrape interval or two)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=10) as answer:
            targets = json.load(answer)["data"]["activeTargets"]
        if (targets and all(t["health"] == "up" for t in targets)) or time.monotonic() > deadline:
            return targets
        time.sleep(3)


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def _leftovers(project: str) -> tuple[list[str], list[str]]:
    label = f"label={LABEL_PROJECT}={project}"
    return (docker_cli("ps", "-aq", "--filter", label).stdout.split(),
            docker_cli("network", "ls", "-q", "--filter", label).stdout.split())


def _volumes(project: str) -> list[str]:
    return docker_cli("volume", "ls", "-q", "--filter", f"label={LABEL_PROJECT}={project}").stdout.split()


def test_cpu_profile_with_docker_compose(images: dict[str, str], tmp_path: Path) -> None:
    project = f"edgediff-e2e-{uuid.uuid4().hex[:6]}"
    (tmp_path / "weights").mkdir()
    env = {**os.environ, **images, "EDGEDIFF_MODEL": "tiny", "EDGEDIFF_BIND_ADDRESS": BIND,
           "EDGEDIFF_WEIGHTS_DIR": str(tmp_path / "weights"), "COMPOSE_BAKE": "false"}
    base = ["docker", "compose", "--project-name", project, "--file", str(COMPOSE_FILE), "--profile", "cpu"]

    def run(*args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    try:
        up = run("up", "--detach", "--wait", "--wait-timeout", str(round(UP_TIMEOUT_S)), "--no-build", *STACK,
                 timeout=UP_TIMEOUT_S + 120)
        states = _states(project)
        assert up.returncode == 0, (up.stderr[-3000:], states, run("logs", "--tail", "30").stdout[-4000:])
        assert states == {"cpu-export": "completed", **dict.fromkeys(LONG_RUNNING, "healthy")}

        _generate_pngs(f"{BIND}:{GATEWAY_GRPC_PORT}")
        targets = _prometheus_targets_up(f"http://{BIND}:{PROMETHEUS_PORT}")
        assert {t["labels"]["job"] for t in targets} >= {"gateway", "exporter", "triton"}
        assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
        assert "edgediff_" in _metrics(f"http://{BIND}:{GATEWAY_METRICS_PORT}/metrics")
        assert "edgediff_" in _metrics(f"http://{BIND}:{EXPORTER_PORT}/metrics")

        for container in _containers(project):
            service = container["Config"]["Labels"]["com.docker.compose.service"]
            user = container["Config"]["User"]
            if service != "cpu-exporter":  # root with every capability dropped: RAPL files are root-only
                assert user and not user.startswith("0"), f"{service} runs as {user!r}"
            assert container["HostConfig"]["CapDrop"] == ["ALL"], service
            assert "no-new-privileges:true" in container["HostConfig"]["SecurityOpt"], service
        # Triton answers its gateway, and nothing on the default network (the exporter stands in for any other)
        probe = ["exec", "-T", "{}", "python", "-m", "services.healthcheck", "tcp", f"triton:{TRITON_GRPC_PORT}"]
        assert run(*[a.format("cpu-gateway") for a in probe], timeout=60).returncode == 0
        assert run(*[a.format("cpu-exporter") for a in probe], timeout=60).returncode != 0

        down = run("down", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
        assert _leftovers(project) == ([], [])
        assert f"{project}_model_repository_cpu" in _volumes(project)  # `down` keeps volumes; `down -v` removes them
        assert run("down", "--volumes", timeout=300).returncode == 0
        assert _volumes(project) == []
    finally:
        run("down", "--volumes", "--timeout", "5", timeout=300)


def test_cpu_profile_with_edgediff_up_runtime_docker(images: dict[str, str], tmp_path: Path) -> None:
    ports = {"gateway": _free_port(), "gateway-metrics": _free_port(), "exporter": _free_port(),
             "prometheus": _free_port()}
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEDIFF_PROMETHEUS")}
    edgediff = [sys.executable, "-m", "cli.main"]
    common = ["--state-dir", str(state_dir)]

    def run(*args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*edgediff, *args, *common], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    project = "edgediff"
    existing, _ = _leftovers(project)
    if existing:
        pytest.skip(f"a stack of project {project} runs on this engine ({existing[0]}...): not touching it")
    try:
        up = run("up", "--runtime", "docker", "--profile", "cpu", "--model", "tiny", "--variants", "onnx-fp32",
                 "--ports", ",".join(f"{k}={v}" for k, v in ports.items()), "--timeout", str(UP_TIMEOUT_S),
                 timeout=UP_TIMEOUT_S + 300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "grafana left out" in up.stdout  # no Grafana image here: said, not silent
        if images:
            assert "EDGEDIFF_PROMETHEUS_IMAGE=edgediff-prometheus:bookworm" in up.stdout

        status = run("status", timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr  # 0: every service healthy (or completed)
        services = json.loads((state_dir / STATE_FILE).read_text())["services"]
        assert {n: s["status"] for n, s in services.items()} == {
            "cpu-export": "completed", **dict.fromkeys(LONG_RUNNING, "healthy")}

        _generate_pngs(f"127.0.0.1:{ports['gateway']}")
        targets = _prometheus_targets_up(f"http://127.0.0.1:{ports['prometheus']}")
        assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
        assert "edgediff_" in _metrics(f"http://127.0.0.1:{ports['exporter']}/metrics")

        down = run("down", "--volumes", timeout=300)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert _leftovers(project) == ([], []) and _volumes(project) == []
    finally:
        run("down", "--volumes", timeout=300)
