"""The cpu profile on a real Docker engine, end to end: images built here, the stack up, PNGs through the gateway.

Runs wherever a Docker engine answers (``.ci/run`` starts one when it runs as root and none does); skips, saying
why, elsewhere. The images come from ``scripts/build-images.sh`` (``make images``), which reuses the engine's layer
cache: a warm build takes seconds. Grafana has no image here (no registry, no Debian package): both runs go without
it, the way docker/README.md documents. Published ports bind 127.0.0.7 (docker-compose) or free host ports
(``edgediff up --ports``), so a stack on the default ports of this machine is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edgediff.constants import EXPORTER_PORT, GATEWAY_GRPC_PORT, GATEWAY_METRICS_PORT, PROMETHEUS_PORT
from services.gateway.client import GeneratorClient
from services.stack.compose.docker_args import LABEL_PROJECT
from services.stack.docker_runtime import LOCAL_IMAGE_DEFAULTS, engine_reachable
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


def _docker() -> Any:
    ok, why = engine_reachable()
    if not ok:
        pytest.skip(why)
    import docker

    return docker.from_env(timeout=600)


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    client = _docker()
    yield client
    client.close()


@pytest.fixture(scope="module")
def images(engine: Any) -> dict[str, str]:
    """``make images`` (warm: the engine's layer cache), timed; the Prometheus image the stack should run."""
    start = time.monotonic()
    result = subprocess.run(["bash", "scripts/build-images.sh"], cwd=ROOT, capture_output=True, text=True,
                            timeout=3600)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"scripts/build-images.sh: {elapsed:.0f} s", file=sys.stderr)
    image = engine.images.get(CPU_IMAGE)
    assert image.attrs["Config"]["User"] == "10001:10001", "the cpu image runs as the non-root edgediff user"
    variables: dict[str, str] = {}
    for variable, local in LOCAL_IMAGE_DEFAULTS.items():
        try:
            engine.images.get(local)
            variables[variable] = local
        except Exception:  # the registry's image is used instead (pulled by compose)
            continue
    return variables


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(engine: Any, project: str, timeout_s: float = UP_TIMEOUT_S) -> dict[str, str]:
    """Service -> health (``completed`` for the one-shot export) once every container got there."""
    deadline = time.monotonic() + timeout_s
    while True:
        states: dict[str, str] = {}
        for container in engine.containers.list(all=True, filters={"label": f"{LABEL_PROJECT}={project}"}):
            state = container.attrs["State"]
            service = container.labels["com.docker.compose.service"]
            if state["Status"] == "exited":
                states[service] = "completed" if state["ExitCode"] == 0 else f"exited {state['ExitCode']}"
            else:
                states[service] = (state.get("Health") or {}).get("Status", state["Status"])
        done = all(states.get(s) == ("completed" if s == "cpu-export" else "healthy") for s in STACK)
        failed = {s: v for s, v in states.items() if v.startswith("exited") or v == "unhealthy"}
        if done or failed or time.monotonic() > deadline:
            return states
        time.sleep(3)


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


def _leftovers(engine: Any, project: str) -> tuple[list[str], list[str]]:
    label = {"label": f"{LABEL_PROJECT}={project}"}
    return ([c.name for c in engine.containers.list(all=True, filters=label)],
            [n.name for n in engine.networks.list(filters=label) if n.name.startswith(project)])


def _remove_volumes(engine: Any, project: str) -> None:
    for volume in engine.volumes.list(filters={"label": f"{LABEL_PROJECT}={project}"}):
        volume.remove(force=True)


def test_cpu_profile_with_docker_compose(engine: Any, images: dict[str, str], tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (make system-deps installs Debian's)")
    project = f"edgediff-e2e-{uuid.uuid4().hex[:6]}"
    (tmp_path / "weights").mkdir()
    env = {**os.environ, **images, "EDGEDIFF_MODEL": "tiny", "EDGEDIFF_BIND_ADDRESS": BIND,
           "EDGEDIFF_WEIGHTS_DIR": str(tmp_path / "weights")}
    base = [compose, "--project-name", project, "--file", str(COMPOSE_FILE), "--profile", "cpu"]

    def run(*args: str, timeout: float = UP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    try:
        up = run("up", "--detach", "--no-build", *STACK)
        assert up.returncode == 0, up.stderr[-3000:]
        states = _wait_healthy(engine, project)
        assert states == {"cpu-export": "completed", **dict.fromkeys(LONG_RUNNING, "healthy")}, (
            states, run("logs", "--tail", "30").stdout[-4000:])

        _generate_pngs(f"{BIND}:{GATEWAY_GRPC_PORT}")
        targets = _prometheus_targets_up(f"http://{BIND}:{PROMETHEUS_PORT}")
        assert {t["labels"]["job"] for t in targets} >= {"gateway", "exporter", "triton"}
        assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
        assert "edgediff_" in _metrics(f"http://{BIND}:{GATEWAY_METRICS_PORT}/metrics")
        assert "edgediff_" in _metrics(f"http://{BIND}:{EXPORTER_PORT}/metrics")

        for container in engine.containers.list(filters={"label": f"{LABEL_PROJECT}={project}"}):
            user = container.attrs["Config"]["User"]
            service = container.labels["com.docker.compose.service"]
            if service != "cpu-exporter":  # root with every capability dropped: RAPL files are root-only
                assert user and not user.startswith("0"), f"{service} runs as {user!r}"

        down = run("down", timeout=300)
        assert down.returncode == 0, down.stderr[-2000:]
        assert _leftovers(engine, project) == ([], [])
        kept = {v.name for v in engine.volumes.list(filters={"label": f"{LABEL_PROJECT}={project}"})}
        assert f"{project}_model_repository_cpu" in kept  # `down` keeps volumes; `down -v` removes them
        assert run("down", "--volumes", timeout=300).returncode == 0
        assert not engine.volumes.list(filters={"label": f"{LABEL_PROJECT}={project}"})
    finally:
        run("down", "--volumes", "--timeout", "5", timeout=300)


def test_cpu_profile_with_edgediff_up_runtime_docker(engine: Any, images: dict[str, str], tmp_path: Path) -> None:
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
    existing, _ = _leftovers(engine, project)
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

        down = run("down", timeout=300)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        assert _leftovers(engine, project) == ([], [])
    finally:
        run("down", timeout=300)
        _remove_volumes(engine, project)
