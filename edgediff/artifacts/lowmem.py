"""Artifacts of the low-memory variant: int8 UNet stages, an int8 decoder for one latent tile, and the model spec.

All are int8 OpenVINO IR quantized with NNCF on the pipeline's own calibration trajectories (the same recorded
inputs as ``openvino-int8``, pushed through the fp32 stages, or cropped to the tile). They are built by a process
that holds the fp32 model (``edgediff.artifacts.prepare_worker``) and found later by fingerprint alone
(``find_*``), so the low-memory process never builds a torch module.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgediff.artifacts import calibration, onnx_export, openvino_int8, openvino_ir
from edgediff.artifacts.cache import cached_build, find_cached
from edgediff.artifacts.decoder_parts import DecoderTail, DecoderTrunk
from edgediff.artifacts.unet_stages import Stage, UNetStage, plan_stages, run_stages
from edgediff.constants import VQDEC_INPUT, VQDEC_OUTPUT
from edgediff.models.spec import ModelSpec


def _kind(model: ModelSpec, name: str) -> str:
    return f"{model.preset.name}-{name}"


def _int8_extra(model: ModelSpec, **more: Any) -> dict[str, Any]:
    return {"opset": onnx_export.OPSET, "quantization": openvino_int8.QUANTIZATION,
            "calibration": calibration.calibration_config(model), **more}


def _export_int8(module: torch.nn.Module, example: tuple[torch.Tensor, ...], in_names: list[str],
                 out_names: list[str], samples: list[tuple[torch.Tensor, ...]], folder: Path,
                 *, dynamic_spatial: bool = False) -> dict[str, Any]:
    """ONNX export + onnxsim -> OpenVINO IR -> NNCF int8, keeping only the int8 IR in ``folder``."""
    onnx_dir, ir_dir = folder / "onnx", folder / "fp32"
    onnx_dir.mkdir()
    ir_dir.mkdir()
    report = {"onnx": onnx_export.export_onnx(module, example, in_names, out_names, onnx_dir,
                                              dynamic_spatial=dynamic_spatial)}
    openvino_ir.export_openvino(onnx_dir / onnx_export.FILENAME, ir_dir)
    named = [dict(zip(in_names, (t.numpy() for t in sample), strict=True)) for sample in samples]
    report.update(openvino_int8.quantize_ir(ir_dir / openvino_ir.FILENAME, named, folder))
    shutil.rmtree(onnx_dir)
    shutil.rmtree(ir_dir)
    return report


# --- the manifest: model spec + stage plan ----------------------------------------------------------------------

MANIFEST_KIND = "lowmem-manifest"


STAGE_MAX_PARAMS = 25_000_000
"""Largest stage, in parameters (int8: 25 MB of weights; OpenVINO holds about twice that while a stage runs)."""


def stage_plan(components: ModelSpec) -> list[Stage]:
    """The stage plan of the low-memory variant."""
    return plan_stages(components.unet, STAGE_MAX_PARAMS)


def build_manifest(components: ModelSpec) -> tuple[ModelSpec, list[Stage]]:
    """Cache the ``ModelSpec`` and the stage plan of ``components`` (what a low-memory process cannot compute)."""
    spec = ModelSpec.from_components(components)
    stages = stage_plan(components)

    def build(folder: Path) -> dict[str, Any]:
        spec.save(folder)
        return {"stages": [asdict(stage) for stage in stages]}

    cached_build(spec.fingerprint(), _kind(spec, MANIFEST_KIND), build, extra={"stage_max_params": STAGE_MAX_PARAMS})
    return spec, stages


def find_manifest(fingerprint: str, preset_name: str) -> tuple[ModelSpec, list[Stage]] | None:
    """The cached spec and stage plan of the model with this fingerprint, or None."""
    found = find_cached(fingerprint, f"{preset_name}-{MANIFEST_KIND}", extra={"stage_max_params": STAGE_MAX_PARAMS})
    if found is None:
        return None
    folder, report = found
    stages = [Stage(**{**stage, "layers": tuple(stage["layers"])}) for stage in report["stages"]]
    return ModelSpec.load(folder), stages


# --- UNet stages --------------------------------------------------------------------------------------------------

def _stage_kind(model: ModelSpec, index: int, count: int) -> str:
    return _kind(model, f"unet-stage{index}of{count}-openvino-int8")


STAGE_CALIBRATION_SAMPLES = 48
"""UNet calls, evenly spread over the calibration trajectories, whose stage inputs calibrate the stages (every
stage's inputs of every call are held at once: 160 calls took 9 GB for celebahq-256, 48 take about 3)."""


def build_stages(components: ModelSpec, stages: list[Stage]) -> list[tuple[Path, dict[str, Any]]]:
    """Build (or find) every stage's int8 IR; returns each stage's ``(folder, report)``."""
    memo: dict[str, list[list[tuple[torch.Tensor, ...]]]] = {}

    def stage_samples() -> list[list[tuple[torch.Tensor, ...]]]:
        if "samples" not in memo:  # every stage's inputs for the chosen UNet calls, through the fp32 stages
            modules = [UNetStage(components.unet, stage).eval() for stage in stages]
            per_stage: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in stages]

            def record(index: int, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                per_stage[index].append(tuple(t.clone() for t in inputs))
                return modules[index](*inputs)

            calls = calibration.part_samples(calibration.calibration_set(components), "unet")
            step = max(1, len(calls) // STAGE_CALIBRATION_SAMPLES)
            with torch.no_grad():
                for sample, timestep in calls[::step][:STAGE_CALIBRATION_SAMPLES]:
                    run_stages(stages, record, sample, timestep)
            memo["samples"] = per_stage
        return memo["samples"]

    results = []
    for index, stage in enumerate(stages):
        def build(folder: Path, index: int = index, stage: Stage = stage) -> dict[str, Any]:
            samples = stage_samples()[index]
            module = UNetStage(components.unet, stage).eval()
            return _export_int8(module, samples[0], stage.input_names(), stage.output_names(), samples, folder)

        kind = _stage_kind(components, index, len(stages))
        extra = _int8_extra(components, stage=asdict(stage), samples=STAGE_CALIBRATION_SAMPLES)
        results.append(cached_build(components.fingerprint(), kind, build, extra=extra))
    return results


def find_stages(spec: ModelSpec, stages: list[Stage]) -> list[tuple[Path, dict[str, Any]]] | None:
    """The cached stage IRs of ``spec``'s model for the plan ``stages``, or None when any is missing."""
    results = []
    for index, stage in enumerate(stages):
        found = find_cached(spec.fingerprint(), _stage_kind(spec, index, len(stages)),
                            extra=_int8_extra(spec, stage=asdict(stage), samples=STAGE_CALIBRATION_SAMPLES))
        if found is None:
            return None
        results.append(found)
    return results


# --- the decoder: trunk (whole) and tail (any size, tiled) -------------------------------------------------------

DECODER_PARTS = {"vqdec-trunk": "vqdec-trunk-openvino-int8", "vqdec-tail": "vqdec-tail-anysize-openvino-int8"}
"""Part -> cache name of the two decoder artifacts."""
TRUNK_OUTPUT, TAIL_INPUT = "trunk_hidden", "tail_hidden"


def build_decoder(components: ModelSpec) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Build (or find) the int8 decoder trunk and tail (see ``decoder_parts``); returns ``{part: (folder, report)}``.

    The trunk is calibrated on the calibration latents, the tail on the fp32 trunk's outputs for them (whole, not
    tiled: tiling reuses the very same int8 weights and ranges). The tail's height and width are dynamic, so it
    compiles for a tile or for the whole map.
    """
    memo: dict[str, list[tuple[torch.Tensor, ...]]] = {}

    def trunk_samples() -> list[tuple[torch.Tensor, ...]]:
        if "trunk" not in memo:
            memo["trunk"] = calibration.part_samples(calibration.calibration_set(components), "vqdec")
        return memo["trunk"]

    def build_trunk(folder: Path) -> dict[str, Any]:
        samples = trunk_samples()
        return _export_int8(DecoderTrunk(components.vqvae).eval(), samples[0], [VQDEC_INPUT], [TRUNK_OUTPUT],
                            samples, folder)

    def build_tail(folder: Path) -> dict[str, Any]:
        trunk = DecoderTrunk(components.vqvae).eval()
        with torch.no_grad():
            samples = [(trunk(*sample),) for sample in trunk_samples()]
        return _export_int8(DecoderTail(components.vqvae).eval(), samples[0], [TAIL_INPUT], [VQDEC_OUTPUT], samples,
                            folder, dynamic_spatial=True)

    builders = {"vqdec-trunk": build_trunk, "vqdec-tail": build_tail}
    return {part: cached_build(components.fingerprint(), _kind(components, name), builders[part],
                               extra=_int8_extra(components))
            for part, name in DECODER_PARTS.items()}


def find_decoder(spec: ModelSpec) -> dict[str, tuple[Path, dict[str, Any]]] | None:
    """The cached decoder trunk and tail of ``spec``'s model, or None when either is missing."""
    found = {part: find_cached(spec.fingerprint(), _kind(spec, name), extra=_int8_extra(spec))
             for part, name in DECODER_PARTS.items()}
    if any(value is None for value in found.values()):
        return None
    return found  # type: ignore[return-value]
