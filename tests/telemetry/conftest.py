from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """A monotonic clock the test moves by hand; ``advance`` doubles as the monitor's ``sleep``."""

    def __init__(self, t_s: float = 1000.0) -> None:
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s

    def advance(self, dt_s: float) -> None:
        self.t_s += dt_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def device_root(tmp_path: Path) -> Path:
    """A writable root holding the proc tree, the RAPL tree and a discharging Android battery."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "proc", root, dirs_exist_ok=True)
    shutil.copytree(FIXTURES / "rapl", root, dirs_exist_ok=True)
    shutil.copytree(FIXTURES / "android" / "discharging_negative_uA", root, dirs_exist_ok=True)
    return root


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A writable root holding only the proc tree (no power sensor at all)."""
    root = tmp_path / "proc_root"
    shutil.copytree(FIXTURES / "proc", root)
    return root


@pytest.fixture
def start_exporter(tmp_path: Path):
    """Start ``python -m cli exporter ARGS`` on a free port; returns ``(process, port, log_path)``.

    NVML and tegrastats probing are off so the test behaves the same on every machine; any process still running at
    teardown is killed.
    """
    started: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, int, Path]:
        log = tmp_path / f"exporter-{len(started)}.log"
        argv = [sys.executable, "-m", "cli", "exporter", "--port", "0", "--no-nvml", "--tegrastats-command", ""]
        with log.open("w") as stderr:
            proc = subprocess.Popen(
                [*argv, *args],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        started.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(r"serving metrics on http://[\d.]+:(\d+)/metrics", log.read_text())
            if found:
                return proc, int(found.group(1)), log
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"the exporter did not start:\n{log.read_text()}")

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
