"""``edgediff down``: stop the stack started by ``edgediff up`` (no orphans, no shared-memory leftovers).

Only processes that are still the recorded ones (same start time and command line) are signalled; a stale state
(after a reboot the PIDs belong to other programs) is reported and cleared.
"""

from __future__ import annotations

import argparse

from cli.status import add_state_dir_argument, state_from_args
from services.stack.docker_runtime import stack_from_state
from services.stack.local_runtime import clear_if_stale, stop_local


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``edgediff down``."""
    add_state_dir_argument(parser)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a clean stop")
    parser.add_argument("--volumes", action="store_true",
                        help="Docker runtime: also remove the named volumes (model repository, Prometheus data)")


def run_from_args(args: argparse.Namespace) -> int:
    """Stop the stack."""
    state_dir, state = state_from_args(args)
    if state is None or clear_if_stale(state, state_dir):
        return 0
    if state.get("runtime") == "docker":
        stack_from_state(state, state_dir=state_dir).down(volumes=args.volumes)  # removes the state file too
    else:
        stop_local(state, state_dir, args.timeout)
    print("stack stopped")
    return 0
