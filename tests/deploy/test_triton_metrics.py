"""``TRITON_METRICS`` (the dashboard's allow-list) against a real Triton: the one bundled in nvidia-pytriton (2.51).

A one-model repository (a Python-backend identity) is served on free loopback ports, one inference is made so the
per-model families have samples, and the metrics endpoint must list every allowed name with the ``model`` label.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

from edgediff.constants import TRITON_METRICS

from .test_dashboard_metrics import TRITON_LABELS, _samples

PROBE_MODEL = "probe"
CONFIG = f"""name: "{PROBE_MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
MODEL_PY = '''import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
                for r in requests]
'''


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_triton_serves_every_allowed_metric(tmp_path: Path) -> None:
    pytest.importorskip("pytriton", reason="nvidia-pytriton (Triton's bundled server) is not installed")
    from services.triton.launcher import TritonServer

    model_dir = tmp_path / "repo" / PROBE_MODEL
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(CONFIG)
    (model_dir / "1" / "model.py").write_text(MODEL_PY)
    http_port, grpc_port, metrics_port = _free_ports(3)
    server = TritonServer(tmp_path / "repo", http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                          startup_timeout_s=120.0, log_file=tmp_path / "triton.log")
    with server:
        body = json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [2.0]}]}).encode()
        request = urllib.request.Request(f"{server.http_url}/v2/models/{PROBE_MODEL}/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["outputs"][0]["data"] == [2.0]
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            served = _samples(response.read().decode())
    missing = sorted(set(TRITON_METRICS) - set(served))
    assert not missing, f"Triton does not serve {missing}; it serves {sorted(served)}"
    for name in TRITON_METRICS:
        assert served[name] >= TRITON_LABELS, (name, served[name])
