"""Run a command as a user would, signal it mid-run, and check what it left behind."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY_FILES = {
    f"torchinductor_{getpass.getuser()}",  # torch's compile cache: ``import torch._dynamo`` (ONNX exports do it)
    ".ses",  # written by onnxruntime's native module when it loads (a session id), never removed by it
}
"""What libraries leave in TMPDIR on purpose in any run, interrupted or not, meant to outlive the command: not
temporary entries of the command (every run, a clean one too, leaves them)."""
LISTENING = re.compile(r"listening on (\S+) ")
"""What ``serve`` prints once it accepts calls, with its address."""


@dataclass
class Started:
    """A command started by ``start``: its process, its log and its own temporary folder."""

    process: subprocess.Popen[bytes]
    log: Path
    tmpdir: Path
    descendants: list[psutil.Process] = field(default_factory=list)

    def output(self) -> str:
        """Its stdout and stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


def start(argv: list[str], folder: Path, *, env: dict[str, str] | None = None) -> Started:
    """Start ``python -m cli ARGV`` with its own ``TMPDIR`` (``folder/tmp``), logging to ``folder/command.log``."""
    tmpdir = folder / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    log = folder / "command.log"
    environment = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1", **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environment.get("PYTHONPATH", "")) if p)
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli", *argv], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=REPO, env=environment, start_new_session=True)
    return Started(process, log, tmpdir)


def run_cli(*argv: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cli ARGV`` to its end; its exit status and text output."""
    return subprocess.run([sys.executable, "-m", "cli", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout_s, check=False)


def wait_until(started: Started, ready: Callable[[Started], bool], timeout_s: float, what: str) -> None:
    """Poll ``ready`` until true; fail with the command's output when it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready(started):
            return
        if started.process.poll() is not None:
            pytest.fail(f"the command exited ({started.process.returncode}) before {what}:\n{started.output()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"not {what} after {timeout_s:.0f} s:\n{started.output()[-3000:]}")


def listening_address(started: Started, timeout_s: float) -> str:
    """Wait until a started ``serve`` says it listens; the address it printed."""
    wait_until(started, lambda s: LISTENING.search(s.output()) is not None, timeout_s, "listening")
    match = LISTENING.search(started.output())
    assert match is not None
    return match.group(1)


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below ``pid``."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def has_descendant(started: Started, needle: str) -> bool:
    """True when a process below the command has ``needle`` in its command line."""
    for child in descendants(started.process.pid):
        try:
            if needle in " ".join(child.cmdline()):
                return True
        except psutil.Error:
            continue
    return False


def still_running(processes: list[psutil.Process], timeout_s: float = 10.0) -> list[str]:
    """The processes still alive (zombies count as gone) after up to ``timeout_s``; described for a message."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for proc in processes:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def signal_and_check(started: Started, sig: int, *, expected_code: int, timeout_s: float = 90.0) -> str:
    """Record the descendants, send ``sig``, wait; assert the exit status, no descendant and an empty ``TMPDIR``.

    Returns:
        The command's output.
    """
    started.descendants = descendants(started.process.pid)
    started.process.send_signal(sig)
    try:
        code = started.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_everything(started)
        pytest.fail(f"still running {timeout_s:.0f} s after {signal.Signals(sig).name}:\n{started.output()[-3000:]}")
    output = started.output()
    left = still_running(started.descendants)
    assert not left, f"left running after {signal.Signals(sig).name}: {left}\n{output[-3000:]}"
    assert code == expected_code, f"exit {code}, expected {expected_code} after {signal.Signals(sig).name}:\n" \
                                  f"{output[-3000:]}"
    entries = sorted(p.name for p in started.tmpdir.iterdir() if p.name not in THIRD_PARTY_FILES)
    assert entries == [], f"left in TMPDIR: {entries}"
    return output


def kill_everything(started: Started) -> None:
    """Last resort of a failing test: SIGKILL the command and every process it started."""
    for proc in [*descendants(started.process.pid), *started.descendants]:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if started.process.poll() is None:
        started.process.kill()
        started.process.wait(timeout=30)
