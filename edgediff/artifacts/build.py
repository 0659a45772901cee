"""Build (or fetch from the cache) one artifact of one part of a model: the entry point of all exporters."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from edgediff.artifacts import calibration, onnx_export, openvino_int8, openvino_ir, tensorrt_plan, torchscript
from edgediff.artifacts.cache import cached_build, find_cached
from edgediff.artifacts.deepcache_modules import UNetFullWithFeature, UNetShallow, feature_shape
from edgediff.artifacts.modules import DecoderModule, PrecisionWrapper, UNetModule, example_inputs
from edgediff.constants import (
    UNET_FEATURE,
    UNET_INPUT_SAMPLE,
    UNET_INPUT_TIMESTEP,
    UNET_OUTPUT,
    VQDEC_INPUT,
    VQDEC_OUTPUT,
)
from edgediff.models.spec import ModelSpec

UNET_FULL = "unet-full"
"""DeepCache: the whole UNet, returning the noise and the deep feature."""
UNET_SHALLOW = "unet-shallow"
"""DeepCache: the shallow branch over a cached deep feature."""
PARTS = ("unet", "vqdec", UNET_FULL, UNET_SHALLOW)
OPENVINO_INT8_WC = "openvino-int8-wc"
"""``openvino-int8`` with its floating-point linear weights compressed to int8 (``openvino_int8.LINEAR_WEIGHTS``),
for CPUs without native bf16."""
FORMATS = ("torchscript-fp32", "torchscript-fp16", "onnx-fp32", "onnx-fp16", "openvino", "openvino-int8",
           OPENVINO_INT8_WC, "tensorrt-fp16")
IO_NAMES = {
    "unet": ([UNET_INPUT_SAMPLE, UNET_INPUT_TIMESTEP], [UNET_OUTPUT]),
    "vqdec": ([VQDEC_INPUT], [VQDEC_OUTPUT]),
    UNET_FULL: ([UNET_INPUT_SAMPLE, UNET_INPUT_TIMESTEP], [UNET_OUTPUT, UNET_FEATURE]),
    UNET_SHALLOW: ([UNET_INPUT_SAMPLE, UNET_INPUT_TIMESTEP, UNET_FEATURE], [UNET_OUTPUT]),
}


def part_module(components: ModelSpec, part: str) -> torch.nn.Module:
    """The tensor-in, tensor-out fp32 CPU module of ``part`` (one of ``PARTS``)."""
    if part == "unet":
        return UNetModule(components.unet).eval()
    if part == "vqdec":
        return DecoderModule(components.vqvae).eval()
    if part == UNET_FULL:
        return UNetFullWithFeature(components.unet).eval()
    if part == UNET_SHALLOW:
        return UNetShallow(components.unet).eval()
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")


def part_inputs(components: ModelSpec, part: str, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Example inputs of ``part`` at ``batch``."""
    if part in (UNET_FULL, UNET_SHALLOW):
        inputs = example_inputs(components.preset.latent_shape, batch)["unet"]
        if part == UNET_FULL:
            return inputs
        generator = torch.Generator().manual_seed(1)
        return (*inputs, torch.randn(feature_shape(components.preset.unet_config, batch), generator=generator))
    return example_inputs(components.preset.latent_shape, batch)[part]


def artifact_request(model: ModelSpec, part: str, fmt: str) -> tuple[str, dict[str, Any]]:
    """The cache ``kind`` and ``extra`` (settings that change the bytes) of an artifact."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    extra: dict[str, Any] = {"opset": onnx_export.OPSET}
    if fmt in ("openvino-int8", OPENVINO_INT8_WC):
        config = (calibration.decoder_calibration_config(model) if part == "vqdec"
                  else calibration.calibration_config(model))
        extra.update(quantization=openvino_int8.QUANTIZATION, calibration=config)
    if fmt == OPENVINO_INT8_WC:
        extra.update(linear_weights=openvino_int8.LINEAR_WEIGHTS)
    return f"{model.preset.name}-{part}-{fmt}", extra


def find_artifact(
    model: ModelSpec, part: str, fmt: str, *, root: Path | None = None
) -> tuple[Path, dict] | None:
    """``(folder, report)`` of a finished artifact in the cache, or None; never exports (no modules needed)."""
    kind, extra = artifact_request(model, part, fmt)
    return find_cached(model.fingerprint(), kind, extra=extra, root=root)


def build_artifact(components: ModelSpec, part: str, fmt: str, *, root: Path | None = None) -> tuple[Path, dict]:
    """Return ``(folder, report)`` of the artifact, exporting it only when the cache has no finished copy.

    Args:
        components: Model and weights (their fingerprint keys the cache).
        part: ``unet`` or ``vqdec``.
        fmt: One of ``FORMATS``.
        root: Cache root override.
    """
    kind, extra = artifact_request(components, part, fmt)
    fingerprint = components.fingerprint()
    in_names, out_names = IO_NAMES[part]

    def build(folder: Path) -> dict[str, Any]:
        inputs = part_inputs(components, part)
        if fmt.startswith("torchscript"):
            if fmt == "torchscript-fp32":
                return torchscript.export_torchscript(part_module(components, part), inputs, folder)
            module = PrecisionWrapper(copy.deepcopy(part_module(components, part)), torch.float16).cuda()
            return torchscript.export_torchscript(module, tuple(t.cuda() for t in inputs), folder)
        if fmt == "onnx-fp32":
            return onnx_export.export_onnx(part_module(components, part), inputs, in_names, out_names, folder)
        if fmt == OPENVINO_INT8_WC:
            int8, int8_report = build_artifact(components, part, "openvino-int8", root=root)
            quantized = {k: int8_report[k] for k in ("quantize_s", "samples", "fake_quantize_nodes", "quantization")
                         if k in int8_report}
            return {**quantized, **openvino_int8.compress_linear_weights(int8 / openvino_ir.FILENAME, folder)}
        source, _ = build_artifact(components, part, "onnx-fp32", root=root)
        if fmt == "onnx-fp16":
            return _convert_fp16(source / onnx_export.FILENAME, folder)
        if fmt == "openvino":
            return openvino_ir.export_openvino(source / onnx_export.FILENAME, folder)
        if fmt == "openvino-int8":
            ir, _ = build_artifact(components, part, "openvino", root=root)
            cset = (calibration.decoder_calibration_set(components) if part == "vqdec"
                    else calibration.calibration_set(components))
            samples = calibration.part_samples(cset, part)
            named = [dict(zip(in_names, (t.numpy() for t in sample), strict=True)) for sample in samples]
            return openvino_int8.quantize_ir(ir / openvino_ir.FILENAME, named, folder)
        shapes = {name: tuple(t.shape) for name, t in zip(in_names, inputs, strict=True)}
        return tensorrt_plan.build_plan(source / onnx_export.FILENAME, folder, shapes)

    return cached_build(fingerprint, kind, build, extra=extra, root=root)


def _convert_fp16(onnx_path: Path, folder: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True, disable_shape_infer=True)
    path = folder / onnx_export.FILENAME
    onnx.save_model(model, str(path))
    return {"file": onnx_export.FILENAME, "size_bytes": path.stat().st_size, "ops_fp16": onnx_export.op_counts(model)}
