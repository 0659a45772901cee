"""No secret reaches a record: command lines are redacted before a report, a log or a state file stores them.

Tokens reach edgediff from files (``--token-file``) or the environment, never from the command line, where every
user of the machine can read them (``ps``, ``/proc/PID/cmdline``). A command line recorded anyway (a report's
``command``) still goes through ``redact_command`` first: an option that looks like a secret keeps its name, not
its value.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

REDACTED = "<redacted>"
SECRET_OPTIONS = ("--token", "--upstream-token", "--password", "--api-key", "--secret")
"""Options whose value is a secret (``--token T`` and ``--token=T`` alike; the ``-file`` forms name a path)."""


def redact_argv(argv: Sequence[str], options: Sequence[str] = SECRET_OPTIONS) -> list[str]:
    """``argv`` with the value of every secret option replaced by ``<redacted>``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _value = arg.partition("=")
        if name in options:
            out.append(f"{name}={REDACTED}" if eq else arg)
            hide_next = not eq
            continue
        out.append(arg)
    return out


def redact_command(command: str, options: Sequence[str] = SECRET_OPTIONS) -> str:
    """A recorded command line (``shlex``-quoted) with the values of secret options replaced."""
    try:
        argv = shlex.split(command)
    except ValueError:  # unbalanced quotes: cut at the first secret option instead
        cut = min((command.find(option) for option in options if option in command), default=-1)
        return command if cut < 0 else f"{command[:cut]}{REDACTED}"
    redacted = redact_argv(argv, options)
    return command if redacted == argv else shlex.join(redacted)
