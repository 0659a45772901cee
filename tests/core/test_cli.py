"""The CLI as a user runs it: a real subprocess, exit codes and one-line errors."""

import os
import subprocess
import sys

import pytest
from PIL import Image


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_generate_tiny_writes_a_png(tmp_path):
    out = tmp_path / "x.png"
    proc = run_cli("generate", "--model", "tiny", "--steps", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (64, 64)
    assert "weights: synthetic" in proc.stderr
    assert f"wrote {out}" in proc.stdout


def test_variants_lists_reasons():
    proc = run_cli("variants", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["torch-fp32"]["available"] is True
    assert all(r["available"] or r["reason"] for r in rows.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "steps must be an integer in 1..1000"),
        (["--steps", "1001"], "steps must be an integer in 1..1000"),
        (["--batch", "0"], "batch must be an integer"),
        (["--variant", "nope"], "unknown variant 'nope'"),
        (["--weights", "/nonexistent/weights"], "is not a directory"),
        (["--model", "sdxl"], "unknown model preset"),
        (["--eta", "2"], "eta must be a number in 0..1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = run_cli("generate", "--model", "tiny", *args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "weights: synthetic" not in line]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_unavailable_variant_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("trt-fp16 may be available on CUDA machines")
    proc = run_cli("generate", "--model", "tiny", "--variant", "trt-fp16")
    assert proc.returncode == 2
    assert "unavailable here: needs a CUDA device" in proc.stderr


def test_unknown_command_exit_2():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    assert "unknown command" in proc.stderr
