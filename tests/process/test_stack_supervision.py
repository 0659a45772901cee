"""Whether the stack's supervisor lives: ``status`` says it, ``up`` refuses orphaned services, ``down`` stops them.

Real processes (``sleep``) stand in for the services; the state file is the one ``edgediff up`` writes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.main import main
from edgediff.processes import pid_alive
from services.stack.state import read_state, write_state


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _sleeper(started: list[subprocess.Popen]) -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    started.append(proc)
    return proc.pid


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _state(state_dir: Path, supervisor: int, services: dict[str, int]) -> None:
    write_state(state_dir, {"supervisor_pid": supervisor, "runtime": "local", "profile": "cpu", "model": "tiny",
                            "variants": ["onnx-fp32"], "services": {
                                name: {"pid": pid, "port": 1, "status": "healthy", "restarts": 0, "health": None,
                                       "log": ""} for name, pid in services.items()}})


def test_status_says_the_supervisor_is_alive(tmp_path: Path, sleepers, capsys) -> None:
    supervisor = _sleeper(sleepers)
    _state(tmp_path, supervisor, {"gateway": _sleeper(sleepers)})
    assert main(["status", "--state-dir", str(tmp_path)]) == 0
    assert f"supervisor: pid {supervisor}, alive" in capsys.readouterr().out


def test_status_up_and_down_with_the_supervisor_gone(tmp_path: Path, sleepers, capsys) -> None:
    supervisor = _dead_pid()
    services = {"triton": _sleeper(sleepers), "gateway": _sleeper(sleepers)}
    _state(tmp_path, supervisor, services)

    assert main(["status", "--state-dir", str(tmp_path)]) == 1  # services up, but nothing restarts them
    out = capsys.readouterr().out
    assert f"supervisor: pid {supervisor}, GONE" in out and "a crash will not be restarted" in out

    assert main(["up", "--runtime", "local", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "still run without their supervisor" in err and f"triton (pid {services['triton']})" in err
    assert f"edgediff down --state-dir {tmp_path}" in err
    assert all(pid_alive(pid) for pid in services.values())  # refused: nothing was touched

    assert main(["down", "--state-dir", str(tmp_path)]) == 0
    for proc in sleepers:
        proc.wait(timeout=30)
    assert not any(pid_alive(pid) for pid in services.values())
    assert read_state(tmp_path) is None


def test_up_refuses_while_a_supervisor_runs(tmp_path: Path, sleepers, capsys) -> None:
    supervisor = _sleeper(sleepers)
    _state(tmp_path, supervisor, {})
    assert main(["up", "--runtime", "local", "--state-dir", str(tmp_path)]) == 2
    assert f"a stack already runs (supervisor pid {supervisor}" in capsys.readouterr().err
