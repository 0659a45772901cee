"""TensorRT plans (``model.plan``) built with the ``tensorrt`` Python API from the simplified ONNX graph.

Only on a machine with CUDA and TensorRT; the plan is specific to the GPU and TensorRT version that built it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgediff.availability import require

FILENAME = "model.plan"


def build_plan(
    onnx_path: Path,
    folder: Path,
    input_shapes: dict[str, tuple[int, ...]],
    *,
    fp16: bool = True,
    max_batch: int = 4,
    workspace_bytes: int = 4 << 30,
) -> dict[str, Any]:
    """Parse ``onnx_path`` and build a serialized engine with a dynamic batch profile 1..max_batch.

    Args:
        onnx_path: The simplified ONNX model.
        folder: Where to write ``model.plan``.
        input_shapes: Per input, its shape at batch 1 (the first axis is the batch).
        fp16: Allow fp16 kernels (the study's TensorRT fp16 UNet).
        max_batch: Largest batch of the optimisation profile.
        workspace_bytes: Builder workspace limit.
    """
    trt = require("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, shape in input_shapes.items():
        rest = tuple(shape[1:])
        profile.set_shape(name, (1, *rest), (1, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    path = folder / FILENAME
    path.write_bytes(bytes(engine))
    return {"file": FILENAME, "size_bytes": path.stat().st_size, "fp16": fp16, "max_batch": max_batch,
            "tensorrt": trt.__version__}
