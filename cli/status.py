"""``edgediff status``: each service of the stack, its PID, port and health, and whether its supervisor lives.

Exits 0 when every service is healthy and (local runtime) the supervisor is alive, 1 otherwise or when none runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgediff.processes import pid_alive
from services.stack.health import HealthCheck
from services.stack.state import add_state_dir_argument, state_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff status``."""
    add_state_dir_argument(parser)


def service_health(service: dict[str, Any]) -> str:
    """``healthy``, ``completed`` (a finished one-shot), ``unhealthy`` or ``down``, checked now."""
    if service.get("pid") is not None and not pid_alive(service["pid"]):
        return "down"
    health = service.get("health")
    if not health:
        return service.get("status", "unknown")
    return "healthy" if HealthCheck(**health).check() else "unhealthy"


def print_status(state: dict[str, Any]) -> bool:
    """Print the table; True when every service is healthy."""
    print(f"{'service':<12}{'pid':>8}  {'port':>6}  {'health':<10} {'restarts':>8}  log")
    all_ok = True
    for name, service in state.get("services", {}).items():
        health = service_health(service)
        all_ok &= health in ("healthy", "completed")
        print(f"{name:<12}{service.get('pid') or '-':>8}  {service.get('port') or '-':>6}  {health:<10} "
              f"{service.get('restarts', 0):>8}  {service.get('log', '')}")
    return all_ok


def run_from_args(args: argparse.Namespace) -> int:
    """Show the stack; exit 0 when every service is healthy and supervised, 1 otherwise or when none runs."""
    state_dir, state = state_from_args(args)
    if state is None:
        return 1
    if state.get("runtime") == "docker":
        from services.stack.docker_runtime import runtime_from_state

        state = {**state, "services": runtime_from_state(state, state_dir=state_dir, echo=None).status()}
    print(f"stack: runtime {state.get('runtime')}, profile {state.get('profile')}, model {state.get('model')}, "
          f"variants {', '.join(state.get('variants', []))}")
    supervised = True
    if state.get("runtime") != "docker":
        supervised, line = supervisor_line(state)
        print(line)
    return 0 if print_status(state) and supervised else 1


def supervisor_line(state: dict[str, Any]) -> tuple[bool, str]:
    """Whether the local stack's supervisor is alive, and one line saying so (and what to do when it is not)."""
    pid = state.get("supervisor_pid")
    if pid_alive(pid):
        return True, f"supervisor: pid {pid}, alive (restarts a service that dies)"
    return False, (f"supervisor: pid {pid}, GONE: the services run unsupervised, a crash will not be restarted; "
                   "'edgediff down' stops them, then 'edgediff up' starts a supervised stack")
