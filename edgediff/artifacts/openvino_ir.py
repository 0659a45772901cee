"""OpenVINO IR artifacts (``model.xml`` + ``model.bin``) converted from the simplified ONNX graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgediff.availability import require

FILENAME = "model.xml"


def export_openvino(onnx_path: Path, folder: Path) -> dict[str, Any]:
    """Convert ``onnx_path`` to IR in ``folder`` (fp32 weights; precision is chosen at compile time)."""
    ov = require("openvino")
    model = ov.convert_model(str(onnx_path))
    path = folder / FILENAME
    ov.save_model(model, str(path), compress_to_fp16=False)
    size = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return {"file": FILENAME, "size_bytes": size}
