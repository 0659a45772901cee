"""`edgediff up --runtime local` for real: Triton, gateway, exporter and Prometheus as processes on loopback."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edgediff.processes import pid_alive
from services.stack.state import read_state

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def edgediff(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    pytest.importorskip("tritonclient")
    root = tmp_path_factory.mktemp("stack")
    names = ["gateway", "gateway-metrics", "exporter", "triton-http", "triton-grpc", "triton-metrics", "prometheus"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    state_dir = root / "state"
    proc = edgediff("up", "--runtime", "local", "--profile", "cpu", "--model", "tiny", "--variants", "onnx-fp32",
                    "--repo", str(root / "repo"), "--state-dir", str(state_dir), "--detach", "--timeout", "400",
                    "--ports", ",".join(f"{k}={v}" for k, v in ports.items()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield {"ports": ports, "state_dir": state_dir, "up": proc}
    edgediff("down", "--state-dir", str(state_dir))


def _generate(port: int) -> bytes:
    from services.gateway.client import GeneratorClient

    with GeneratorClient(f"127.0.0.1:{port}") as client:
        client.wait_serving(timeout_s=120)
        return client.generate(seed=3, steps=2).images[0]


def test_every_service_is_healthy_and_serves(stack):
    status = edgediff("status", "--state-dir", str(stack["state_dir"]))
    assert status.returncode == 0, status.stdout
    expected = ["triton", "gateway", "exporter"] + (["prometheus"] if shutil.which("prometheus") else [])
    for name in expected:
        assert any(line.startswith(name) and "healthy" in line for line in status.stdout.splitlines()), status.stdout
    png = _generate(stack["ports"]["gateway"])
    assert png.startswith(b"\x89PNG")


def test_prometheus_scrapes_every_target(stack):
    if not shutil.which("prometheus"):
        pytest.skip("prometheus is not installed (make test installs the Debian package)")
    url = f"http://127.0.0.1:{stack['ports']['prometheus']}/api/v1/targets"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        targets = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if set(health) == {"gateway", "exporter", "triton", "prometheus"} and set(health.values()) == {"up"}:
            break
        time.sleep(1)
    assert set(health.values()) == {"up"}, health


def test_killed_triton_is_restarted_and_the_gateway_serves_again(stack):
    state = read_state(stack["state_dir"])
    triton = state["services"]["triton"]["pid"]
    os.kill(triton, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        service = read_state(stack["state_dir"])["services"]["triton"]
        if service["restarts"] >= 1 and service["status"] == "healthy":
            break
        time.sleep(1)
    assert service["restarts"] >= 1 and service["pid"] != triton, service
    assert _generate(stack["ports"]["gateway"]).startswith(b"\x89PNG")


def test_down_leaves_nothing_behind(stack):
    state = read_state(stack["state_dir"])
    prefix = state["shm_prefix"]
    pids = [state["supervisor_pid"], *(s["pid"] for s in state["services"].values())]
    proc = edgediff("down", "--state-dir", str(stack["state_dir"]))
    assert proc.returncode == 0, proc.stderr
    assert "stack stopped" in proc.stdout
    assert not any(pid_alive(p) for p in pids)
    assert not list(Path("/dev/shm").glob(prefix + "*"))
    assert read_state(stack["state_dir"]) is None
    assert edgediff("status", "--state-dir", str(stack["state_dir"])).returncode == 1
