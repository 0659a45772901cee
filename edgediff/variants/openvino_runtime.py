"""OpenVINO variants on CPU: the IR from the simplified ONNX at fp32 or bf16 precision, and its int8 quantization.

The int8 IR is NNCF post-training quantization calibrated on the pipeline's own DDIM trajectories
(``edgediff.artifacts.openvino_int8``).

A process that runs these variants holds no torch module: ``load_model`` describes the model from its configs, and
``build`` compiles the cached IRs; what the cache lacks is exported by a child process
(``edgediff.artifacts.prepare_worker``), whose fp32 model and calibration memory go with it when it exits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts import prepare
from edgediff.artifacts.build import OPENVINO_INT8_WC, UNET_FULL, UNET_SHALLOW, build_artifact, find_artifact
from edgediff.artifacts.openvino_int8 import LINEAR_WEIGHTS
from edgediff.artifacts.openvino_ir import FILENAME
from edgediff.availability import (
    cpu_supports_bf16,
    is_module_available,
    is_onnxruntime_available,
    is_openvino_available,
    require,
)
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec, describe_model
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, PartFn, Variant
from edgediff.variants.deepcache import check_interval, unet_runner
from edgediff.variants.mapped_weights import releasing_mapped_pages
from edgediff.variants.openvino_lowmem import import_diffusers_without_dynamo

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16"}
INT8_TOLERANCE = 2e-1
"""Relative L2 error of the final latents vs torch-fp32 allowed to ``openvino-int8`` (measured on the tiny preset)."""


def int8_ir_format() -> str:
    """The int8 IR this CPU runs (in-process and in Triton's part models alike).

    ``openvino-int8`` where the CPU has native bf16 (what stays in floating point runs at bf16); elsewhere, where
    that part compiles at fp32, ``openvino-int8-wc``: the same IR with its linear weights compressed to int8 too
    (124 MB less on celebahq-256's UNet and no slower; ``edgediff.artifacts.openvino_int8.LINEAR_WEIGHTS``).
    """
    return "openvino-int8" if cpu_supports_bf16() else OPENVINO_INT8_WC


STATIC_BATCH = 1
"""IRs whose only dynamic axis is the batch are compiled for one item with static shapes, and a batch runs item by
item. Static shapes let the CPU plugin plan memory and kernels once. Measured on celebahq-256, bf16, this 2-core
Zen 4 (2026-11-25): full UNet 0.272 -> 0.258 s, shallow branch 0.071 -> 0.068 s, int8 decoder 0.669 -> 0.640 s per
item; a batch of 4 full-UNet calls took 1.02 s dynamic vs 0.98 s item by item, so CPUs lose nothing by it. An item
then never depends on the batch it came in (nor on how Triton splits a batch into part calls), and one compiled model
holds the weights once."""


def static_batch_shapes(model: Any, batch: int) -> dict[Any, list[int]] | None:
    """Input shapes of ``model`` with the (dynamic) first axis set to ``batch``; None when another axis is dynamic."""
    shapes = {}
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or any(dim.is_dynamic for dim in list(shape)[1:]):
            return None
        shapes[port] = [batch, *(dim.get_length() for dim in list(shape)[1:])]
    return shapes


def compile_ir(path: Path, *, precision: str, threads: int, batch: int | None = None) -> Any:
    """Compile an IR for the CPU with an explicit inference precision.

    OpenVINO picks bf16 by default on CPUs that have it, so fp32 must be asked for. The weights file is mapped, and
    the pages the compile reads are given back as it goes (``mapped_weights``): the compiled model holds its own
    packed copy, so the process holds the weights once, not twice.

    Args:
        path: The ``model.xml``.
        precision: ``fp32`` or ``bf16`` (of what runs in floating point).
        threads: Intra-op threads.
        batch: Compile with static shapes for this batch size (when only the batch axis is dynamic); None keeps
            the IR's shapes.
    """
    ov = require("openvino")
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    core = ov.Core()
    with releasing_mapped_pages(Path(path).with_suffix(".bin")):  # the plugin packs its own copy of the weights
        model = core.read_model(str(path))
        if batch is not None and (shapes := static_batch_shapes(model, batch)) is not None:
            model.reshape(shapes)
        return core.compile_model(model, "CPU", config)


def compiled_fn(compiled: Any) -> Callable[..., torch.Tensor]:
    """Call a compiled model like a module (a fresh infer request per call, so calls may run concurrently).

    Inputs are shared with OpenVINO, not copied (the DeepCache feature is the loop's largest tensor); outputs are
    copied out of the request.

    A model with several outputs (the DeepCache ``unet-full`` part) gives a tuple of them.
    """
    count = len(compiled.outputs)

    def run(*args: torch.Tensor) -> Any:
        request = compiled.create_infer_request()
        request.infer([np.ascontiguousarray(a.cpu().numpy()) for a in args], share_inputs=True)
        outputs = [torch.from_numpy(np.array(request.get_output_tensor(i).data, copy=True)).float()
                   for i in range(count)]
        return outputs[0] if count == 1 else tuple(outputs)

    return run


def ir_fn(path: Path, *, precision: str, threads: int) -> Callable[..., torch.Tensor]:
    """An IR as a function, batch by batch of ``STATIC_BATCH`` items.

    Compiled with static shapes for ``STATIC_BATCH`` items and called item by item when only its batch axis is
    dynamic; otherwise compiled as it is and called with the whole batch.
    """
    compiled = compile_ir(path, precision=precision, threads=threads, batch=STATIC_BATCH)
    fn = compiled_fn(compiled)
    if any(port.get_partial_shape().is_dynamic for port in compiled.inputs):
        return fn

    def run(*args: torch.Tensor) -> Any:
        batch = args[0].shape[0]
        if batch == STATIC_BATCH:
            return fn(*args)
        items = [fn(*(a[i:i + STATIC_BATCH] for a in args)) for i in range(0, batch, STATIC_BATCH)]
        if isinstance(items[0], tuple):
            return tuple(torch.cat(outputs) for outputs in zip(*items, strict=True))
        return torch.cat(items)

    return run


class OpenVinoVariant(Variant):
    """OpenVINO on the CPU.

    Args:
        precision: Of the UNet: ``fp32``, ``bf16`` (needs a CPU with native bf16: AVX-512 BF16, AMX or Arm BF16) or
            ``int8`` (the NNCF-quantized IR; what stays in floating point runs in bf16 where the CPU has it, else
            fp32).
        decoder_precision: Of the VQ decoder, when it differs (``openvino-bf16-int8dec``: bf16 UNet, int8 decoder);
            None means the UNet's.
    """

    backend = "openvino"
    device = "cpu"
    supports_deepcache = True

    def __init__(self, precision: str, decoder_precision: str | None = None) -> None:
        self.precision = precision
        self.decoder_precision = decoder_precision or precision
        mixed = self.decoder_precision != precision
        self.name = f"openvino-{precision}" + (f"-{self.decoder_precision}dec" if mixed else "")
        if mixed:
            self.description = (f"OpenVINO on CPU: UNet at inference precision {precision}, VQ decoder "
                                f"{self.decoder_precision} (NNCF quantization calibrated on DDIM latents)")
        elif precision == "int8":
            self.description = ("OpenVINO int8 (NNCF post-training quantization calibrated on DDIM trajectories) "
                                "on CPU, the rest in bf16 where the CPU has it")
        else:
            self.description = f"OpenVINO IR (from the simplified ONNX) on CPU, inference precision {precision}"
        # the tolerance bounds the final latents, which only the UNet's precision changes
        self.tolerance = {"fp32": 1e-4, "bf16": 1e-1, "int8": INT8_TOLERANCE}[precision]

    def part_precision(self, part: str) -> str:
        """The precision of ``part`` (``vqdec`` or a UNet part)."""
        return self.decoder_precision if part == "vqdec" else self.precision

    def availability(self) -> Availability:  # noqa: D102
        if not is_openvino_available():
            return Availability.no("needs openvino: pip install 'edgediff[openvino]'")
        if not is_onnxruntime_available():
            return Availability.no("the IR is converted from the ONNX export: pip install 'edgediff[onnx]'")
        if "bf16" in (self.precision, self.decoder_precision) and not cpu_supports_bf16():
            return Availability.no("this CPU has no native bf16 (AVX-512 BF16, AMX or Arm BF16)")
        if "int8" in (self.precision, self.decoder_precision) and not is_module_available("nncf"):
            return Availability.no("int8 quantization needs nncf: pip install 'edgediff[openvino]'")
        return Availability.yes()

    def compile_precision(self) -> str:
        """The inference precision given to the compiler (int8 models: bf16 where the CPU has it, else fp32)."""
        if self.precision == "int8":
            return "bf16" if cpu_supports_bf16() else "fp32"
        return self.precision

    def part_format(self, part: str) -> str:
        """The artifact format of ``part``: the fp32 IR, or this CPU's int8 IR (``int8_ir_format``)."""
        return int8_ir_format() if self.part_precision(part) == "int8" else "openvino"

    def gate_settings(self) -> dict[str, Any]:
        """The int8 linear weights' compression, where one of this variant's parts uses it (``part_format``)."""
        if OPENVINO_INT8_WC in (self.part_format("unet"), self.part_format("vqdec")):
            return {"int8_linear_weights": LINEAR_WEIGHTS}
        return {}

    @staticmethod
    def _parts(options: BuildOptions) -> list[str]:
        unet_parts = ["unet"] if check_interval(options.deepcache_interval) == 1 else [UNET_FULL, UNET_SHALLOW]
        return [*unet_parts, "vqdec"]

    def prepare(self, model: ModelSpec, options: BuildOptions) -> dict[str, Any]:
        """Export (or find) the IR of each part the options need, without compiling them."""
        reports = {}
        for part in self._parts(options):
            folder, report = build_artifact(model, part, self.part_format(part))
            reports[part] = {"path": str(folder / FILENAME), **report}
        return reports

    def find(self, model: ModelSpec, options: BuildOptions) -> dict[str, Any] | None:
        """The cached IR of each part the options need (same form as ``prepare``), or None when one is missing."""
        reports = {}
        for part in self._parts(options):
            found = find_artifact(model, part, self.part_format(part))
            if found is None:
                return None
            reports[part] = {"path": str(found[0] / FILENAME), **found[1]}
        return reports

    def load_model(self, preset: ModelPreset, weights: str | None = None, *, seed: int = 0) -> ModelSpec:
        """The model described from its configs, no module built (``build`` needs only the cached IRs).

        Diffusers (the samplers) is imported without ``torch._dynamo`` (about 65 MB), which nothing here needs.
        """
        import_diffusers_without_dynamo()
        return describe_model(preset, weights, seed=seed)

    def artifacts(self, model: ModelSpec, options: BuildOptions) -> dict[str, Any]:
        """The IRs ``build`` compiles: from the cache, else exported.

        The export runs here when ``model`` has its modules in memory already, else in a child process, so a
        process that described its model (``load_model``) never builds the fp32 model nor keeps calibration memory.

        Raises:
            EdgediffError: the export failed, or left the cache without an artifact.
        """
        found = self.find(model, options)
        if found is not None:
            return found
        if model.has_modules:
            return self.prepare(model, options)
        prepare.prepare_in_subprocess(model=model.preset.name, weights=model.weights.path,
                                      weights_seed=model.weights.seed or 0, variant=self.name,
                                      deepcache=options.deepcache_interval)
        found = self.find(model, options)
        if found is None:
            raise EdgediffError(f"{self.name}: artifacts still missing from the cache after exporting them")
        return found

    def load_part(
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cpu"
    ) -> PartFn:
        """The IR compiled at ``compile_precision`` (``ir_fn``); CPU only."""
        if device != "cpu":
            raise EdgediffError(f"variant {self.name} runs on the CPU only, not on {device}")
        return ir_fn(Path(artifact), precision=self.compile_precision(), threads=options.resolved_threads())

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        info: dict[str, Any] = {"device": "cpu", "precision": self.precision,
                                "compile_precision": self.compile_precision(), "threads": options.resolved_threads(),
                                "artifacts": self.artifacts(model, options),
                                "deepcache_interval": options.deepcache_interval}

        def part_fn(part: str) -> PartFn:
            return self.load_part(part, Path(info["artifacts"][part]["path"]), options, preset=model.preset)

        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)
