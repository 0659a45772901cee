"""The TensorRT fp16 variant (the study's fastest): an engine built from the simplified ONNX, run on CUDA tensors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgediff.artifacts.build import IO_NAMES, build_artifact
from edgediff.artifacts.tensorrt_plan import FILENAME
from edgediff.availability import is_cuda_available, is_onnxruntime_available, is_tensorrt_available, require
from edgediff.models.weights import LDMComponents
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant


def engine_fn(plan: Path, input_names: list[str], output_name: str) -> Callable[..., torch.Tensor]:
    """Deserialize ``plan`` and return a function running it on CUDA tensors (``execute_async_v3``)."""
    trt = require("tensorrt")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT64: torch.int64,
              trt.DataType.INT32: torch.int32}

    def run(*args: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream()
        inputs = []
        for name, arg in zip(input_names, args, strict=True):
            tensor = arg.to("cuda", dtypes[engine.get_tensor_dtype(name)]).contiguous()
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
            inputs.append(tensor)
        shape = tuple(context.get_tensor_shape(output_name))
        out = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(output_name)], device="cuda")
        context.set_tensor_address(output_name, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.float().cpu()

    return run


class TensorRTVariant(Variant):
    """TensorRT engine with fp16 kernels allowed (inputs and outputs fp32)."""

    name = "trt-fp16"
    backend = "trt"
    precision = "fp16"
    device = "cuda"
    description = "TensorRT engine (fp16) built from the simplified ONNX (CUDA only)"
    tolerance = 5e-2

    def availability(self) -> Availability:  # noqa: D102
        if not is_cuda_available():
            return Availability.no("needs a CUDA device")
        if not is_tensorrt_available():
            return Availability.no("needs the tensorrt Python package: pip install 'edgediff[gpu]'")
        if not is_onnxruntime_available():
            return Availability.no("the engine is built from the ONNX export: pip install 'edgediff[onnx]'")
        return Availability.yes()

    def build(self, components: LDMComponents, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        runners: dict[str, Callable[..., torch.Tensor]] = {}
        info: dict[str, Any] = {"device": "cuda", "precision": "fp16", "artifacts": {}}
        for part in ("unet", "vqdec"):
            folder, report = build_artifact(components, part, "tensorrt-fp16")
            inputs, outputs = IO_NAMES[part]
            runners[part] = engine_fn(folder / FILENAME, inputs, outputs[0])
            info["artifacts"][part] = {"path": str(folder / FILENAME), **report}
        return BuiltVariant(self.name, StatelessUNet(runners["unet"]), runners["vqdec"], info)
