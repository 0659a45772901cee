"""Run the installed compose tool's ``config`` command: compose.yaml as compose itself interpolates and normalises it.

``docker compose`` (v2, the Docker CLI plugin) prints JSON with every field in its long form; Debian's
``docker-compose`` (v1) prints YAML in which ports and volumes keep their short form. Both resolve ``${VAR:-x}``,
``.env``, ``env_file``, YAML anchors, relative paths and ``extends``; what edgediff reads is that output, never the
file itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from services.stack.supervisor import StackError

TOOL_TIMEOUT_S = 60.0
PASSED_THROUGH = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT", "DOCKER_CERT_PATH",
                  "DOCKER_TLS_VERIFY", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
"""Variables the tool itself needs, kept when interpolation gets an environment of its own."""


class ComposeError(StackError):
    """The compose file is missing, malformed, or uses a key the Docker runtime cannot map."""


def find_tool() -> list[str] | None:
    """The compose command line installed here: ``docker compose`` (v2) first, else ``docker-compose`` (v1)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def _run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ComposeError(f"{' '.join(command[:3])} failed: {exc}") from None
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise ComposeError(f"{Path(command[0]).name} config rejects the file: {' | '.join(lines[-3:]) or 'no output'}")
    return result.stdout


def normalised_config(path: Path, project: str, env: Mapping[str, str] | None = None,
                      tool: list[str] | None = None) -> dict[str, Any]:
    """Every service, volume and network of ``path``, as the compose tool resolves them.

    Args:
        path: The compose file.
        project: Project name.
        env: Interpolation variables (default ``os.environ``); the tool adds the ``.env`` file beside ``path``.
        tool: The compose command (default ``find_tool()``).

    Raises:
        ComposeError: no compose tool is installed, or it rejects the file.
    """
    tool = tool or find_tool()
    if tool is None:
        raise ComposeError("the Docker runtime reads compose.yaml through compose itself, and neither 'docker compose' "
                           "nor 'docker-compose' is installed (Docker's docker-compose-plugin or Debian's "
                           "docker-compose package)")
    path = Path(path).resolve()
    if not path.is_file():
        raise ComposeError(f"cannot read compose file {path}: no such file")
    variables = dict(os.environ if env is None else env)
    for key in PASSED_THROUGH:
        if key in os.environ:
            variables.setdefault(key, os.environ[key])
    variables.pop("COMPOSE_PROFILES", None)
    base = [*tool, "--project-name", project, "--file", str(path)]
    if tool[-1] == "compose":  # v2 leaves out services of inactive profiles: activate every profile
        profiles = _run([*base, "config", "--profiles"], variables, path.parent).split()
        flags = [arg for p in profiles for arg in ("--profile", p)]
        config = json.loads(_run([*tool, *flags, *base[len(tool):], "config", "--format", "json"],
                                 variables, path.parent))
    else:
        config = yaml.safe_load(_run([*base, "config"], variables, path.parent))
    return dict(_unescape(config or {}))


def _unescape(node: Any) -> Any:
    """The tools print a literal ``$`` as ``$$`` (their output is itself a compose file); the engine gets ``$``."""
    if isinstance(node, str):
        return node.replace("$$", "$")
    if isinstance(node, dict):
        return {k: _unescape(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_unescape(v) for v in node]
    return node
