"""The committed gRPC code is what grpcio-tools generates from the proto today (regenerate it when this fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "services/proto/edgediff/v1/generator.proto"
GENERATED = ("generator_pb2.py", "generator_pb2_grpc.py", "generator_pb2.pyi")
REGENERATE = (f"{sys.executable} -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. {PROTO}")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (pip install 'edgediff[dev]')")
    src = tmp_path / "src"
    (src / PROTO).parent.mkdir(parents=True)
    shutil.copy(REPO / PROTO, src / PROTO)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{src}", f"--python_out={out}", f"--grpc_python_out={out}",
           f"--pyi_out={out}", str(src / PROTO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in GENERATED:
        fresh = (out / Path(PROTO).parent / name).read_bytes()
        committed = (REPO / Path(PROTO).parent / name).read_bytes()
        assert fresh == committed, f"{name} is stale; regenerate from the repo root: {REGENERATE}"


def test_imports_use_the_services_package() -> None:
    from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc

    assert generator_pb2.DESCRIPTOR.package == "edgediff.v1"
    assert generator_pb2_grpc.GeneratorStub.__module__ == "services.proto.edgediff.v1.generator_pb2_grpc"
    text = (REPO / Path(PROTO).parent / "generator_pb2_grpc.py").read_text()
    assert "from services.proto.edgediff.v1 import generator_pb2" in text
