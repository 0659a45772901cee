"""``edgediff serve`` / ``python -m cli serve`` as real processes: flags, graceful SIGTERM, the phone setup."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from edgediff.constants import METRIC_GATEWAY_IN_FLIGHT
from services.gateway.client import GeneratorClient
from tests.gateway.conftest import free_port, scrape
from tests.process.helpers import REPO, kill_everything, listening_address, run_cli, start


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(tmp_path: Path) -> None:
    metrics_port = free_port()
    started = start(["serve", "--backend", "local", "--model", "tiny", "--port", "0", "--metrics-port",
                     str(metrics_port), "--shutdown-grace", "30"], tmp_path)
    try:
        target = listening_address(started, 90)
        answers: list[object] = []
        with GeneratorClient(target, timeout_s=60) as client:
            client.wait_serving(timeout_s=30)
            assert len(client.generate(seed=2, steps=2).images) == 1

            def long_call() -> None:
                try:
                    answers.append(client.generate(seed=3, steps=150))
                except grpc.RpcError as exc:
                    answers.append(exc)

            thread = threading.Thread(target=long_call)
            thread.start()
            deadline = time.monotonic() + 20
            while scrape(metrics_port)[(METRIC_GATEWAY_IN_FLIGHT, ())] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            started.process.send_signal(signal.SIGTERM)
            thread.join(timeout=60)
            assert started.process.wait(timeout=60) == 0
        assert len(answers) == 1 and not isinstance(answers[0], grpc.RpcError), answers
        assert len(answers[0].images) == 1  # type: ignore[attr-defined]
        with GeneratorClient(target, timeout_s=2) as client, pytest.raises(grpc.RpcError) as info:
            client.list_variants()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        kill_everything(started)


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "words"), [
    (["--max-concurrency", "0"], "--max-concurrency must be >= 1"),
    (["--variant", "nope"], "unknown variant 'nope'"),
])
def test_bad_flags_exit_2_with_one_line(flags: list[str], words: str) -> None:
    proc = run_cli("serve", "--backend", "local", "--model", "tiny", "--port", "0", "--metrics-port", "0",
                   "--no-preload", *flags, timeout_s=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgediff serve: error:")]
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


PHONE_SCRIPT = """
import sys
BLOCKED = ("tritonclient", "onnxruntime", "openvino", "onnx", "onnxsim", "tensorrt")
for name in BLOCKED:
    sys.modules[name] = None  # as on a phone: importing them fails
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
with GatewayServer(GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0)) as server:
    with GeneratorClient(server.target, timeout_s=60) as client:
        assert client.generate(seed=1, steps=2).images[0].startswith(b"\\x89PNG")
        rows = {v.name: v for v in client.list_variants().variants}
assert rows["torch-fp32"].available
assert not rows["onnx-fp32"].available and "pip install" in rows["onnx-fp32"].reason, rows["onnx-fp32"]
assert not rows["openvino-fp32"].available
loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED and sys.modules[m] is not None]
assert not loaded, loaded
print("phone ok")
"""


@pytest.mark.slow
def test_local_backend_needs_no_triton_onnx_or_openvino() -> None:
    proc = subprocess.run([sys.executable, "-c", PHONE_SCRIPT], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "phone ok" in proc.stdout
