"""Bench fixtures: one real ``edgediff bench`` run of the tiny preset (shared), and reports built from numbers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURE_POWER_W = 25.0
CLI_VARIANTS = ("torch-fp32", "onnx-fp32", "torch-fp16")
CLI_RUNS = 2


@dataclass
class CliBench:
    """What the shared CLI run left behind."""

    out: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def cli_bench(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: Path) -> CliBench:
    """``edgediff bench`` as a user runs it: tiny preset, isolated workers, a fixture power reader, 2 runs."""
    out = tmp_path_factory.mktemp("bench") / "report"
    cmd = [sys.executable, "-m", "cli.main", "bench", "--model", "tiny", "--variants", ",".join(CLI_VARIANTS),
           "--steps", "3", "--runs", str(CLI_RUNS), "--warmup", "1", "--idle-s", "0.3",
           "--fixture-power-watts", str(FIXTURE_POWER_W), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return CliBench(out=out, stdout=proc.stdout, stderr=proc.stderr)
