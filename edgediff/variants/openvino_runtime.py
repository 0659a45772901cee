"""OpenVINO variants on CPU: the IR converted from the simplified ONNX, compiled at fp32 or bf16 precision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts.build import build_artifact
from edgediff.artifacts.openvino_ir import FILENAME
from edgediff.availability import cpu_supports_bf16, is_onnxruntime_available, is_openvino_available, require
from edgediff.models.weights import LDMComponents
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}


def compile_ir(path: Path, *, precision: str, threads: int) -> Any:
    """Compile an IR for the CPU with an explicit inference precision.

    OpenVINO picks bf16 by default on CPUs that have it, so fp32 must be asked for.
    """
    ov = require("openvino")
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    return ov.Core().compile_model(str(path), "CPU", config)


def compiled_fn(compiled: Any) -> Callable[..., torch.Tensor]:
    """Call a compiled model like a module (a fresh infer request per call, so calls may run concurrently)."""

    def run(*args: torch.Tensor) -> torch.Tensor:
        request = compiled.create_infer_request()
        request.infer([np.ascontiguousarray(a.cpu().numpy()) for a in args])
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True)).float()

    return run


class OpenVinoVariant(Variant):
    """OpenVINO on the CPU.

    Args:
        precision: ``fp32`` or ``bf16`` (needs a CPU with native bf16: AVX-512 BF16, AMX or Arm BF16).
    """

    backend = "openvino"
    device = "cpu"

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.name = f"openvino-{precision}"
        self.description = f"OpenVINO IR (from the simplified ONNX) on CPU, inference precision {precision}"
        self.tolerance = 1e-4 if precision == "fp32" else 1e-1

    def availability(self) -> Availability:  # noqa: D102
        if not is_openvino_available():
            return Availability.no("needs openvino: pip install 'edgediff[openvino]'")
        if not is_onnxruntime_available():
            return Availability.no("the IR is converted from the ONNX export: pip install 'edgediff[onnx]'")
        if self.precision == "bf16" and not cpu_supports_bf16():
            return Availability.no("this CPU has no native bf16 (AVX-512 BF16, AMX or Arm BF16)")
        return Availability.yes()

    def build(self, components: LDMComponents, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        runners: dict[str, Callable[..., torch.Tensor]] = {}
        threads = options.resolved_threads()
        info: dict[str, Any] = {"device": "cpu", "precision": self.precision, "threads": threads, "artifacts": {}}
        for part in ("unet", "vqdec"):
            folder, report = build_artifact(components, part, "openvino")
            runners[part] = compiled_fn(compile_ir(folder / FILENAME, precision=self.precision, threads=threads))
            info["artifacts"][part] = {"path": str(folder / FILENAME), **report}
        return BuiltVariant(self.name, StatelessUNet(runners["unet"]), runners["vqdec"], info)
