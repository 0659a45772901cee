"""compose's variable interpolation (``$VAR``, ``${VAR:-default}`` and friends) and ``.env`` files."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.stack.compose_fields import ComposeError

logger = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def interpolate(text: str, env: Mapping[str, str], where: str = "compose.yaml") -> str:
    """Expand ``$VAR``, ``${VAR}`` and the ``:-``, ``-``, ``:?``, ``?``, ``:+``, ``+`` forms as compose does.

    Defaults may nest (``${A:-${B:-x}}``); ``$$`` is a literal ``$``.

    Args:
        text: The value.
        env: Variables.
        where: Named in errors (e.g. ``services.gateway.ports``).

    Raises:
        ComposeError: a ``?`` variable is missing, or the braces do not close.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2, where)
            out.append(_expand_braced(text[i + 2:end], env, where))
            i = end + 1
        else:
            match = _NAME.match(text, i + 1)
            if match is None:
                out.append("$")
                i += 1
            else:
                out.append(_lookup(match.group(0), env, where))
                i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int, where: str) -> int:
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ComposeError(f"{where}: unclosed '${{' in {text!r}")


def _expand_braced(body: str, env: Mapping[str, str], where: str) -> str:
    match = _NAME.match(body)
    if match is None:
        raise ComposeError(f"{where}: invalid interpolation '${{{body}}}'")
    name, rest = match.group(0), body[match.end():]
    if not rest:
        return _lookup(name, env, where)
    op = next((o for o in _OPERATORS if rest.startswith(o)), None)
    if op is None:
        raise ComposeError(f"{where}: invalid interpolation '${{{body}}}'")
    arg = rest[len(op):]
    value = env.get(name)
    empty = value is None or (op.startswith(":") and value == "")
    if op in (":-", "-"):
        return interpolate(arg, env, where) if empty else str(value)
    if op in (":?", "?"):
        if empty:
            message = interpolate(arg, env, where) or "required"
            raise ComposeError(f"{where}: variable {name} is not set: {message}")
        return str(value)
    return "" if empty else interpolate(arg, env, where)  # ":+" / "+"


def _lookup(name: str, env: Mapping[str, str], where: str) -> str:
    if name not in env:
        logger.warning("%s: variable %s is not set; using an empty string", where, name)
        return ""
    return str(env[name])


def interpolate_tree(node: Any, env: Mapping[str, str], where: str) -> Any:
    """Interpolate every string value of a parsed YAML tree (keys are left alone, as compose does)."""
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(v, env, where) for v in node]
    return node


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments, optional ``export``, optional quotes) of a ``.env``/``env_file``."""
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values
