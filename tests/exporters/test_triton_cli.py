"""``edgediff triton`` as a user runs it: a real subprocess over a real repository, good and broken."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporters.repository import export_repository
from tests.exporters.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def triton_cli(repo: Path, *extra: str) -> subprocess.Popen:
    ports = sorted({free_port() for _ in range(3)})
    args = ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    return subprocess.Popen([sys.executable, "-m", "cli.main", "triton", "--repo", str(repo), *args, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ), start_new_session=True)


@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cli") / "model_repository"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo)
    return repo


def test_triton_serves_until_sigterm(onnx_repo):
    proc = triton_cli(onnx_repo)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(line.startswith("Ctrl-C") for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        out = "".join(lines)
        assert "ready" in out and "ldm_onnx_fp32 (READY)" in out, out + proc.stderr.read()
        assert "gRPC    127.0.0.1:" in out and "/metrics" in out
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_missing_artifact_is_refused_before_triton_starts(tmp_path):
    repo = tmp_path / "broken"
    export_repository(model="tiny", target="cpu", variants=["onnx-fp32"], repo=repo)
    (repo / "unet_onnx_fp32" / "1" / "model.onnx").unlink()
    proc = triton_cli(repo, "--startup-timeout", "120")
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, err
    # the manifest's sizes and hashes are checked first: the damaged repository is never served
    assert err.startswith("edgediff triton: error: model repository")
    assert "unet_onnx_fp32/1/model.onnx is missing" in err and "it will not be served" in err
    assert "tritonserver exited" not in err
