"""TensorRT plans (``model.plan``) built with the ``tensorrt`` Python API from the simplified ONNX graph.

Only on a machine with CUDA and TensorRT; the plan is specific to the GPU and TensorRT version that built it.

A plan accepts only the shapes of its optimisation profile: batch 1..``PROFILE_MAX_BATCH`` at the example's other
dimensions. The in-process runner (``edgediff.variants.tensorrt_engine.TensorRTRunner``) reads the profile back from
the engine and runs a larger batch in chunks; Triton's part models get ``max_batch_size`` no larger than it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgediff.availability import require

FILENAME = "model.plan"
PROFILE_MAX_BATCH = 4
"""Largest batch of the plan's optimisation profile (TensorRT tunes kernels for batch 1, accepts 1..4)."""


def build_plan(
    onnx_path: Path,
    folder: Path,
    input_shapes: dict[str, tuple[int, ...]],
    *,
    fp16: bool = True,
    max_batch: int = PROFILE_MAX_BATCH,
    workspace_bytes: int = 4 << 30,
) -> dict[str, Any]:
    """Parse ``onnx_path`` and build a serialized engine with a dynamic batch profile 1..max_batch.

    Args:
        onnx_path: The simplified ONNX model.
        folder: Where to write ``model.plan``.
        input_shapes: Per input, its shape at batch 1 (the first axis is the batch).
        fp16: Allow fp16 kernels (the study's TensorRT fp16 UNet).
        max_batch: Largest batch of the optimisation profile (``PROFILE_MAX_BATCH``).
        workspace_bytes: Builder workspace limit.

    Returns:
        The export report: file, size, precision, the profile (``{input: [min, opt, max]}`` shapes), TensorRT version.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
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
    ranges = profile_ranges(input_shapes, max_batch)
    for name, (low, opt, high) in ranges.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    path = folder / FILENAME
    path.write_bytes(bytes(engine))
    return {"file": FILENAME, "size_bytes": path.stat().st_size, "fp16": fp16, "max_batch": max_batch,
            "profile": {name: [list(s) for s in shapes] for name, shapes in ranges.items()},
            "tensorrt": trt.__version__}


def profile_ranges(
    input_shapes: dict[str, tuple[int, ...]], max_batch: int = PROFILE_MAX_BATCH
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """The optimisation profile ``build_plan`` gives each input: ``(min, opt, max)`` shapes, batch 1, 1, max_batch.

    Args:
        input_shapes: Per input, its shape at batch 1 (the first axis is the batch).
        max_batch: Largest batch of the profile.
    """
    ranges = {}
    for name, shape in input_shapes.items():
        rest = tuple(shape[1:])
        ranges[name] = ((1, *rest), (1, *rest), (max_batch, *rest))
    return ranges
