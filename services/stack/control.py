"""A local stack seen from another process (``edgediff up/status/down``): is it ours, is it alive, stop it.

Every PID in the state file comes with its identity (``edgediff.processes.process_identity``: start time and command
line). Nothing is signalled unless the live process still has that identity: after a reboot, or once the services
died, the recorded PIDs may belong to other programs. A state none of whose processes is ours any more is stale: it
is reported and cleared, nothing is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgediff.errors import EdgediffError
from edgediff.processes import detach_until_ready, is_same_process
from services.stack.health import HealthCheck
from services.stack.local_runtime import remove_shm_regions
from services.stack.state import read_state, remove_state

logger = logging.getLogger(__name__)
ENV_DETACHED = "EDGEDIFF_STACK_DETACHED"
"""Set by ``up --detach`` for the supervisor it starts: its services then outlive it."""


def supervisor_alive(state: dict[str, Any]) -> bool:
    """True when the recorded supervisor still runs (same PID, start time and command line)."""
    return is_same_process(state.get("supervisor_pid"), state.get("supervisor_identity"))


def service_alive(service: dict[str, Any]) -> bool:
    """True when the recorded service process still runs (same PID, start time and command line)."""
    return is_same_process(service.get("pid"), service.get("identity"))


def is_stale(state: dict[str, Any]) -> bool:
    """A local stack none of whose recorded processes is ours any more (gone, or their PIDs reused)."""
    return state.get("runtime", "local") == "local" and not supervisor_alive(state) and not any(
        service_alive(s) for s in state.get("services", {}).values())


def clear_if_stale(state: dict[str, Any], state_dir: Path, echo: Callable[[str], None] = print) -> bool:
    """Report and remove a stale state (``is_stale``); nothing is signalled. True when it was stale."""
    if not is_stale(state):
        return False
    pids = [state.get("supervisor_pid"), *(s.get("pid") for s in state.get("services", {}).values())]
    echo(f"stale stack state in {state_dir}: none of its processes ({', '.join(str(p) for p in pids if p)}) runs any "
         "more (after a reboot their PIDs may belong to other programs, which are left alone); state cleared")
    remove_state(state_dir)
    return True


def service_health(service: dict[str, Any]) -> str:
    """``healthy``, ``completed`` (a finished one-shot), ``unhealthy`` or ``down``, checked now."""
    if service.get("pid") is not None and not service_alive(service):
        return "down"
    health = service.get("health")
    if not health:
        return str(service.get("status", "unknown"))
    return "healthy" if HealthCheck(**health).check() else "unhealthy"


def supervisor_line(state: dict[str, Any]) -> tuple[bool, str]:
    """Whether the local stack's supervisor is alive, and one line saying so (and what to do when it is not)."""
    pid = state.get("supervisor_pid")
    if supervisor_alive(state):
        return True, f"supervisor: pid {pid}, alive (restarts a service that dies)"
    return False, (f"supervisor: pid {pid}, GONE: the services run unsupervised, a crash will not be restarted; "
                   "'edgediff down' stops them, then 'edgediff up' starts a supervised stack")


def refuse_if_running(state_dir: Path) -> None:
    """Refuse to start a second stack over the same state: one whose supervisor runs, or its orphaned services.

    Services left running without their supervisor (it was killed: the OOM killer, ``kill -9``) hold the ports and
    are never restarted; they are not adopted, the message says how to stop them. A stale state is cleared.

    Raises:
        EdgediffError: a stack is recorded in ``state_dir`` and something of it still runs.
    """
    state = read_state(state_dir)
    if not state or clear_if_stale(state, state_dir):
        return
    supervisor = state.get("supervisor_pid")
    if supervisor_alive(state):
        raise EdgediffError(f"a stack already runs (supervisor pid {supervisor}, state {state_dir}); "
                            "run 'edgediff down' first")
    orphans = [f"{name} (pid {service['pid']})" for name, service in state.get("services", {}).items()
               if service_alive(service)]
    if orphans:
        raise EdgediffError(f"the services of a stack still run without their supervisor (pid {supervisor} is gone; "
                            f"crashes would not be restarted): {', '.join(orphans)}; stop them with 'edgediff down "
                            f"--state-dir {state_dir}', then run 'edgediff up' again")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # gone meanwhile
        os.killpg(pid, sig)


def stop_local(state: dict[str, Any], state_dir: Path, timeout_s: float) -> None:
    """Ask the supervisor to stop everything; if it is gone or stuck, stop the services' process groups directly.

    Only processes whose identity matches the state are signalled; the others are named in a warning.
    """
    if supervisor_alive(state):
        os.kill(state["supervisor_pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while supervisor_alive(state) and time.monotonic() < deadline:
            time.sleep(0.2)
    for name, service in state.get("services", {}).items():
        if not service_alive(service):
            if service.get("pid") and os.path.exists(f"/proc/{service['pid']}"):
                logger.warning("%s: pid %s now belongs to another program; left alone", name, service["pid"])
            continue
        _signal_group(service["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while service_alive(service) and time.monotonic() < deadline:
            time.sleep(0.2)
        if service_alive(service):
            _signal_group(service["pid"], signal.SIGKILL)
    if state.get("shm_prefix"):
        remove_shm_regions(state["shm_prefix"])
    remove_state(state_dir)


def start_detached(argv: Sequence[str], state_dir: Path, timeout_s: float) -> tuple[int, dict[str, Any]]:
    """Run ``edgediff <argv>`` (a foreground ``up``) in a session of its own, logging to ``state_dir/up.log``.

    Returns:
        The supervisor's PID and the state once every service is healthy.

    Raises:
        EdgediffError: it exited or was not healthy within ``timeout_s`` (then it was stopped).
    """
    state_dir.mkdir(parents=True, exist_ok=True)

    def healthy() -> bool:
        state = read_state(state_dir)
        return bool(state and state.get("services")
                    and all(s["status"] == "healthy" for s in state["services"].values()))

    pid = detach_until_ready([sys.executable, "-m", "cli.main", *argv], state_dir / "up.log", healthy, timeout_s,
                             name="stack supervisor", env={**os.environ, ENV_DETACHED: "1"})
    return pid, read_state(state_dir) or {}
