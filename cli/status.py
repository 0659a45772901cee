"""``edgediff status``: each service of the stack, its PID, port and health, checked now."""

from __future__ import annotations

import argparse
from typing import Any

from services.stack.health import HealthCheck
from services.stack.state import add_state_dir_argument, pid_alive, state_from_args


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
    """Show the stack; exit 0 when every service is healthy, 1 otherwise or when none runs."""
    state_dir, state = state_from_args(args)
    if state is None:
        return 1
    if state.get("runtime") == "docker":
        from services.stack.docker_runtime import runtime_from_state

        state = {**state, "services": runtime_from_state(state, state_dir=state_dir, echo=None).status()}
    elif not pid_alive(state.get("supervisor_pid")):
        print(f"the supervisor (pid {state.get('supervisor_pid')}) is gone; 'edgediff down' cleans up")
    print(f"stack: runtime {state.get('runtime')}, profile {state.get('profile')}, model {state.get('model')}, "
          f"variants {', '.join(state.get('variants', []))}")
    return 0 if print_status(state) else 1
