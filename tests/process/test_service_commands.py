"""``serve``, ``exporter``, ``triton`` and ``up`` stopped by SIGTERM or SIGINT: exit 0 (a service's normal end), no
process and no temporary file left. And a detached stack whose supervisor was SIGKILLed: ``status`` says so, ``up``
refuses, ``down`` stops everything.

Each command runs as a user runs it (``python -m cli``), with its own ``TMPDIR``, on the tiny preset.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgediff.processes import pid_alive
from services.stack.state import read_state
from tests.process.helpers import (
    Started,
    has_descendant,
    kill_everything,
    listening_address,
    run_cli,
    signal_and_check,
    start,
    still_running,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")]

SIGNALS = [signal.SIGTERM, signal.SIGINT]


def _printed(text: str):
    return lambda started: text in started.output()


@pytest.fixture
def command(tmp_path: Path) -> Iterator[list[Started]]:
    """Started commands, killed with everything below them if a test failed half-way."""
    started: list[Started] = []
    yield started
    for item in started:
        kill_everything(item)


@pytest.mark.parametrize("sig", SIGNALS)
def test_serve(sig: int, tmp_path: Path, command: list[Started]) -> None:
    command.append(start(["serve", "--backend", "local", "--model", "tiny", "--port", "0", "--metrics-port", "0"],
                         tmp_path))
    listening_address(command[0], 180)
    output = signal_and_check(command[0], sig, expected_code=0)
    assert "edgediff serve: stopped" in output


@pytest.mark.parametrize("sig", SIGNALS)
def test_exporter(sig: int, tmp_path: Path, command: list[Started]) -> None:
    command.append(start(["exporter", "--port", "0", "--interval", "0.05", "--no-nvml", "--tegrastats-command", "",
                          "--fixture-power-watts", "5"], tmp_path))
    wait_until(command[0], _printed("serving metrics on"), 120, "serving metrics")
    output = signal_and_check(command[0], sig, expected_code=0)
    assert "shutting down the exporter" in output


# --- Triton and the stack: one exported repository ---------------------------------------------------------------
@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tritonclient")
    from services.triton.launcher import find_tritonserver

    try:
        find_tritonserver()
    except Exception as exc:  # any reason there is no server binary: skip, saying it
        pytest.skip(str(exc))
    from exporters.repository import export_repository

    repo = tmp_path_factory.mktemp("process-repo") / "model_repository"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo)
    return repo


def _ports(names: list[str]) -> list[str]:
    from services.healthcheck import free_port

    chosen: set[int] = set()
    while len(chosen) < len(names):
        chosen.add(free_port())
    return [f"{name}={port}" for name, port in zip(names, sorted(chosen), strict=True)]


@pytest.mark.parametrize("sig", SIGNALS)
def test_triton(sig: int, repo: Path, tmp_path: Path, command: list[Started]) -> None:
    ports = [p.split("=")[1] for p in _ports(["http", "grpc", "metrics"])]
    command.append(start(["triton", "--repo", str(repo), "--http-port", ports[0], "--grpc-port", ports[1],
                          "--metrics-port", ports[2]], tmp_path))
    wait_until(command[0], _printed("Ctrl-C to stop."), 300, "serving")
    assert has_descendant(command[0], "tritonserver")
    signal_and_check(command[0], sig, expected_code=0)  # its log was a temporary file: removed too


STACK_PORTS = ["gateway", "gateway-metrics", "exporter", "triton-http", "triton-grpc", "triton-metrics", "prometheus"]


def _up_args(repo: Path, state_dir: Path) -> list[str]:
    return ["up", "--runtime", "local", "--profile", "cpu", "--model", "tiny", "--variants", "onnx-fp32",
            "--repo", str(repo), "--state-dir", str(state_dir), "--ports", ",".join(_ports(STACK_PORTS))]


@pytest.mark.parametrize("sig", SIGNALS)
def test_up_in_the_foreground(sig: int, repo: Path, tmp_path: Path, command: list[Started]) -> None:
    state_dir = tmp_path / "state"
    command.append(start(_up_args(repo, state_dir), tmp_path))
    wait_until(command[0], _printed("stack is up"), 400, "up")
    assert has_descendant(command[0], "tritonserver") and has_descendant(command[0], "serve")
    output = signal_and_check(command[0], sig, expected_code=0, timeout_s=120)
    assert "stack stopped" in output
    assert read_state(state_dir) is None


def test_a_detached_stack_without_its_supervisor_is_reported_refused_and_stopped(repo: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    up = run_cli(*_up_args(repo, state_dir), "--detach", "--timeout", "400")
    state = read_state(state_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        supervisor = state["supervisor_pid"]
        services = {name: s["pid"] for name, s in state["services"].items()}
        status = run_cli("status", "--state-dir", str(state_dir))
        assert status.returncode == 0 and f"supervisor: pid {supervisor}, alive" in status.stdout, status.stdout
        killed = psutil.Process(supervisor)
        killed.kill()  # as the OOM killer does
        assert still_running([killed]) == []
        assert all(pid_alive(pid) for pid in services.values())  # a detached stack's services outlive it

        status = run_cli("status", "--state-dir", str(state_dir))
        assert status.returncode == 1 and "GONE" in status.stdout, status.stdout
        again = run_cli(*_up_args(repo, state_dir))
        assert again.returncode == 2
        assert "still run without their supervisor" in again.stderr and "edgediff down" in again.stderr, again.stderr
        assert {name: s["pid"] for name, s in read_state(state_dir)["services"].items()} == services
    finally:
        down = run_cli("down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert still_running([psutil.Process(pid) for pid in services.values() if pid_alive(pid)]) == []
    assert read_state(state_dir) is None
