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
from edgediff.processes import pid_alive, process_identity
from services.stack.state import read_state, write_state


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def _sleeper(started: list[subprocess.Popen]) -> int:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    started.append(proc)
    return proc.pid


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _state(state_dir: Path, supervisor: int, services: dict[str, int], *, identities: bool = True) -> None:
    """The state ``edgediff up`` writes; ``identities=False``: PIDs whose identity was not recorded by us."""
    def identity(pid: int) -> dict | None:
        # the command it was started with, as the supervisor records it (the live one may still be pre-exec)
        return process_identity(pid, SLEEPER) if identities else {"start_ticks": 1, "cmdline": ["/usr/bin/service"]}

    recorded = {name: {"pid": pid, "identity": identity(pid), "port": 1, "status": "healthy", "restarts": 0,
                       "health": None, "log": ""} for name, pid in services.items()}
    write_state(state_dir, {"supervisor_pid": supervisor, "supervisor_identity": identity(supervisor),
                            "runtime": "local", "profile": "cpu", "model": "tiny", "variants": ["onnx-fp32"],
                            "services": recorded})


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

    # an unknown variant: were the refusal missing, `up` would stop there instead of starting a real stack
    assert main(["up", "--runtime", "local", "--variants", "no-such-variant", "--state-dir", str(tmp_path)]) == 2
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
    assert main(["up", "--runtime", "local", "--variants", "no-such-variant", "--state-dir", str(tmp_path)]) == 2
    assert f"a stack already runs (supervisor pid {supervisor}" in capsys.readouterr().err


def test_a_stale_state_is_reported_and_cleared_and_nothing_is_killed(tmp_path: Path, sleepers, capsys) -> None:
    # after a reboot the recorded PIDs belong to other programs: here live processes this stack never started
    strangers = {"triton": _sleeper(sleepers), "gateway": _sleeper(sleepers)}
    _state(tmp_path, _sleeper(sleepers), strangers, identities=False)
    assert main(["status", "--state-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "stale stack state" in out and "left alone" in out
    assert read_state(tmp_path) is None

    _state(tmp_path, _sleeper(sleepers), strangers, identities=False)
    assert main(["down", "--state-dir", str(tmp_path)]) == 0
    assert "stale stack state" in capsys.readouterr().out
    assert all(pid_alive(pid) for pid in strangers.values())  # never signalled
    assert all(proc.poll() is None for proc in sleepers)
    assert read_state(tmp_path) is None

    _state(tmp_path, _sleeper(sleepers), strangers, identities=False)  # `up` does not refuse because of strangers
    assert main(["up", "--runtime", "local", "--variants", "nope", "--state-dir", str(tmp_path)]) == 2
    assert "stale stack state" in capsys.readouterr().out and read_state(tmp_path) is None


def test_down_signals_only_processes_that_are_still_the_recorded_ones(tmp_path: Path, sleepers) -> None:
    ours, reused = _sleeper(sleepers), _sleeper(sleepers)
    _state(tmp_path, _dead_pid(), {"triton": ours, "gateway": reused})
    state = read_state(tmp_path)
    state["services"]["gateway"]["identity"]["start_ticks"] -= 1  # the gateway's PID was reused by another program
    write_state(tmp_path, state)
    assert main(["down", "--state-dir", str(tmp_path)]) == 0
    sleepers[0].wait(timeout=30)
    assert not pid_alive(ours) and pid_alive(reused)
