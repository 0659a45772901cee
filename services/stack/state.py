"""The stack's state file: which supervisor runs, and each service's PID, port, health check and restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgediff.io import atomic_write_json

ENV_STACK_DIR = "EDGEDIFF_STACK_DIR"
STATE_FILE = "stack.json"


def default_state_dir() -> Path:
    """``$EDGEDIFF_STACK_DIR``, else ``~/.cache/edgediff/stack``."""
    env = os.environ.get(ENV_STACK_DIR)
    return Path(env) if env else Path.home() / ".cache" / "edgediff" / "stack"


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """The state, or None when no (readable) stack is recorded there."""
    try:
        return json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically."""
    atomic_write_json(state_dir / STATE_FILE, state)


def remove_state(state_dir: Path) -> None:
    """Delete the state file (no error when it is gone)."""
    (state_dir / STATE_FILE).unlink(missing_ok=True)
