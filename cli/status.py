"""``edgediff status``: each service of the stack, its PID, port and health, and whether its supervisor lives.

Exits 0 when every service is healthy and (local runtime) the supervisor is alive, 1 otherwise or when none runs.
A stale state (none of the recorded processes is ours any more) is reported and cleared.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.stack.docker_runtime import stack_from_state
from services.stack.local_runtime import clear_if_stale, service_health, supervisor_line
from services.stack.state import ENV_STACK_DIR, default_state_dir, read_state


def add_state_dir_argument(parser: argparse.ArgumentParser) -> None:
    """``--state-dir``, shared by ``edgediff up``, ``status`` and ``down``."""
    parser.add_argument("--state-dir", default=None,
                        help=f"state file, logs, Prometheus data (default: ${ENV_STACK_DIR} or "
                             "~/.cache/edgediff/stack)")


def state_from_args(args: argparse.Namespace) -> tuple[Path, dict[str, Any] | None]:
    """The state folder the arguments name (or the default) and the stack recorded there; prints when none is."""
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    state = read_state(state_dir)
    if state is None:
        print(f"no stack is running (no state in {state_dir})")
    return state_dir, state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff status``."""
    add_state_dir_argument(parser)


def print_status(state: dict[str, Any]) -> bool:
    """Print the table; True when every service is healthy, a completed one-shot, or (Docker) running."""
    print(f"{'service':<12}{'pid':>8}  {'port':>6}  {'health':<10} {'restarts':>8}  log")
    all_ok = True
    for name, service in state.get("services", {}).items():
        health = service_health(service)
        all_ok &= health in ("healthy", "completed", "running")
        print(f"{name:<12}{service.get('pid') or '-':>8}  {service.get('port') or '-':>6}  {health:<10} "
              f"{service.get('restarts', 0):>8}  {service.get('log', '')}")
    return all_ok


def run_from_args(args: argparse.Namespace) -> int:
    """Show the stack; exit 0 when every service is healthy and supervised, 1 otherwise or when none runs."""
    state_dir, state = state_from_args(args)
    if state is None or clear_if_stale(state, state_dir):
        return 1
    if state.get("runtime") == "docker":
        state = {**state, "services": stack_from_state(state, state_dir=state_dir, echo=None).status()}
    print(f"stack: runtime {state.get('runtime')}, profile {state.get('profile')}, model {state.get('model')}, "
          f"variants {', '.join(state.get('variants', []))}")
    supervised = True
    if state.get("runtime") != "docker":
        supervised, line = supervisor_line(state)
        print(line)
    return 0 if print_status(state) and supervised else 1
