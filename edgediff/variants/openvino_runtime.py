"""OpenVINO variants on CPU: the IR from the simplified ONNX at fp32 or bf16 precision, and its int8 quantization.

The int8 IR is NNCF post-training quantization calibrated on the pipeline's own DDIM trajectories
(``edgediff.artifacts.openvino_int8``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts.build import UNET_FULL, UNET_SHALLOW, build_artifact
from edgediff.artifacts.openvino_ir import FILENAME
from edgediff.availability import (
    cpu_supports_bf16,
    is_module_available,
    is_onnxruntime_available,
    is_openvino_available,
    require,
)
from edgediff.models.weights import LDMComponents
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, Variant
from edgediff.variants.deepcache import check_interval, unet_runner

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}
INT8_TOLERANCE = 2e-1
"""Relative L2 error of the final latents vs torch-fp32 allowed to ``openvino-int8`` (measured on the tiny preset)."""


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
    """Call a compiled model like a module (a fresh infer request per call, so calls may run concurrently).

    A model with several outputs (the DeepCache ``unet-full`` part) gives a tuple of them.
    """
    count = len(compiled.outputs)

    def run(*args: torch.Tensor) -> Any:
        request = compiled.create_infer_request()
        request.infer([np.ascontiguousarray(a.cpu().numpy()) for a in args])
        outputs = [torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True)).float()
                   for i in range(count)]
        return outputs[0] if count == 1 else tuple(outputs)

    return run


class OpenVinoVariant(Variant):
    """OpenVINO on the CPU.

    Args:
        precision: ``fp32``, ``bf16`` (needs a CPU with native bf16: AVX-512 BF16, AMX or Arm BF16) or ``int8``
            (the NNCF-quantized IR of UNet and decoder; what stays in floating point runs in bf16 where the CPU has
            it, else fp32).
    """

    backend = "openvino"
    device = "cpu"
    supports_deepcache = True

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.name = f"openvino-{precision}"
        if precision == "int8":
            self.description = ("OpenVINO int8 (NNCF post-training quantization calibrated on DDIM trajectories) "
                                "on CPU, the rest in bf16 where the CPU has it")
        else:
            self.description = f"OpenVINO IR (from the simplified ONNX) on CPU, inference precision {precision}"
        self.tolerance = {"fp32": 1e-4, "bf16": 1e-1, "int8": INT8_TOLERANCE}[precision]

    def availability(self) -> Availability:  # noqa: D102
        if not is_openvino_available():
            return Availability.no("needs openvino: pip install 'edgediff[openvino]'")
        if not is_onnxruntime_available():
            return Availability.no("the IR is converted from the ONNX export: pip install 'edgediff[onnx]'")
        if self.precision == "bf16" and not cpu_supports_bf16():
            return Availability.no("this CPU has no native bf16 (AVX-512 BF16, AMX or Arm BF16)")
        if self.precision == "int8" and not is_module_available("nncf"):
            return Availability.no("int8 quantization needs nncf: pip install 'edgediff[openvino]'")
        return Availability.yes()

    def compile_precision(self) -> str:
        """The inference precision given to the compiler (int8 models: bf16 where the CPU has it, else fp32)."""
        if self.precision == "int8":
            return "bf16" if cpu_supports_bf16() else "fp32"
        return self.precision

    def _artifact(self, components: LDMComponents, part: str) -> dict[str, Any]:
        folder, report = build_artifact(components, part, "openvino-int8" if self.precision == "int8" else "openvino")
        return {"path": str(folder / FILENAME), **report}

    def prepare(self, components: LDMComponents, options: BuildOptions) -> dict[str, Any]:
        """Export (or find) the IR of each part the options need, without compiling them."""
        unet_parts = ["unet"] if check_interval(options.deepcache_interval) == 1 else [UNET_FULL, UNET_SHALLOW]
        return {part: self._artifact(components, part) for part in [*unet_parts, "vqdec"]}

    def build(self, components: LDMComponents, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        threads = options.resolved_threads()
        precision = self.compile_precision()
        info: dict[str, Any] = {"device": "cpu", "precision": self.precision, "compile_precision": precision,
                                "threads": threads, "artifacts": {}, "deepcache_interval": options.deepcache_interval}

        def part_fn(part: str) -> Callable[..., torch.Tensor]:
            info["artifacts"][part] = self._artifact(components, part)
            return compiled_fn(compile_ir(Path(info["artifacts"][part]["path"]), precision=precision, threads=threads))

        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)
