"""``edgediff down``: stop the stack started by ``edgediff up`` (no orphans, no shared-memory leftovers)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from edgediff.processes import pid_alive
from services.stack.local_runtime import remove_shm_regions
from services.stack.state import add_state_dir_argument, remove_state, state_from_args
from services.stack.supervisor import signal_group


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff down``."""
    add_state_dir_argument(parser)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a clean stop")


def stop_local(state: dict, state_dir: Path, timeout_s: float) -> None:
    """Ask the supervisor to stop everything; if it is gone or stuck, stop the services' process groups directly."""
    supervisor = state.get("supervisor_pid")
    if pid_alive(supervisor):
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.2)
    for service in state.get("services", {}).values():
        pid = service.get("pid")
        if pid and pid_alive(pid):
            signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        if pid:
            signal_group(pid, signal.SIGKILL)
    if state.get("shm_prefix"):

        remove_shm_regions(state["shm_prefix"])
    remove_state(state_dir)


def run_from_args(args: argparse.Namespace) -> int:
    """Stop the stack."""
    state_dir, state = state_from_args(args)
    if state is None:
        return 0
    if state.get("runtime") == "docker":
        from services.stack.docker_runtime import runtime_from_state

        runtime_from_state(state, state_dir=state_dir).down()  # removes the state file too
    else:
        stop_local(state, state_dir, args.timeout)
    print("stack stopped")
    return 0
