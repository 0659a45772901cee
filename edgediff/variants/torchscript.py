"""TorchScript variants: trace + freeze, fp32 (CPU or CUDA) and fp16 (CUDA); the same ``model.pt`` Triton serves."""

from __future__ import annotations

from pathlib import Path

import torch

from edgediff.artifacts.build import build_artifact, part_inputs, part_module
from edgediff.artifacts.torchscript import FILENAME, trace_module
from edgediff.availability import is_cuda_available
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, PartFn, Variant, torch_fn
from edgediff.variants.deepcache import unet_runner
from edgediff.variants.torch_eager import default_device


class JitVariant(Variant):
    """A traced and frozen TorchScript module.

    Args:
        precision: ``fp32`` or ``fp16`` (CUDA only).
    """

    backend = "jit"
    supports_deepcache = True

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.name = f"jit-{precision}"
        self.device = "cuda" if precision == "fp16" else "auto"
        self.description = f"TorchScript trace + freeze, {precision}" + (" (CUDA)" if precision == "fp16" else "")
        self.tolerance = 1e-4 if precision == "fp32" else 5e-2

    def availability(self) -> Availability:  # noqa: D102
        if self.precision == "fp16" and not is_cuda_available():
            return Availability.no("needs a CUDA device")
        return Availability.yes()

    def load_part(
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cpu"
    ) -> PartFn:
        """The TorchScript module on ``device`` (``torch.jit.load``); CPU fp32 outputs."""
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())
        return torch_fn(torch.jit.load(str(artifact), map_location=device), device)

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        device = default_device() if self.device == "auto" else self.device
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())
        info: dict = {"device": device, "precision": self.precision, "artifacts": {},
                      "deepcache_interval": options.deepcache_interval}

        def part_fn(part: str) -> PartFn:
            if self.precision == "fp16" or device == "cpu":
                folder, report = build_artifact(model, part, f"torchscript-{self.precision}")
                info["artifacts"][part] = {"path": str(folder / FILENAME), **report}
                return self.load_part(part, folder / FILENAME, options, preset=model.preset, device=device)
            # fp32 on CUDA: trace on the device itself
            module = trace_module(part_module(model, part).to(device),
                                  tuple(t.to(device) for t in part_inputs(model, part)))
            return torch_fn(module, device)

        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)
