"""Plain PyTorch variants: fp32 (the baseline), fp16 on CUDA, bf16 autocast on CPU, and ``torch.compile``."""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from edgediff.artifacts.build import part_module
from edgediff.artifacts.modules import DecoderModule, UNetModule
from edgediff.availability import cpu_supports_bf16, is_cuda_available
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.models.weights import load_submodel
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, PartFn, Variant, to_cpu_float
from edgediff.variants.deepcache import unet_runner

PART_SUBFOLDER = {"unet": "unet", "vqdec": "vqvae"}
"""Sub-folder of the diffusers weights layout that holds each part: eager PyTorch's artifact is a weights folder."""


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``: the baseline runs where the accelerated variants run."""
    return "cuda" if is_cuda_available() else "cpu"


def autocast_fn(module: torch.nn.Module, device: str, dtype: torch.dtype | None,
                channels_last: bool = False) -> Callable[..., torch.Tensor]:
    """Wrap ``module``: inputs to ``device`` (channels-last if asked), optional autocast to ``dtype``, CPU fp32 out."""

    def run(*args: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device_type=device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        if channels_last:
            args = tuple(a.to(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args)
        with torch.inference_mode(), ctx:
            out = module(*(a.to(device) for a in args))
        out = to_cpu_float(out)
        if channels_last:
            return tuple(o.contiguous() for o in out) if isinstance(out, tuple) else out.contiguous()
        return out

    return run


class TorchVariant(Variant):
    """Eager PyTorch at a given precision.

    Args:
        name: Registry name.
        precision: ``fp32``, ``fp16`` (weights cast, CUDA only) or ``bf16`` (CPU autocast).
        description: One line.
        tolerance: Allowed relative latent error vs torch-fp32.
    """

    backend = "torch"
    supports_deepcache = True

    def __init__(self, name: str, precision: str, description: str, tolerance: float) -> None:
        self.name = name
        self.precision = precision
        self.description = description
        self.tolerance = tolerance
        self.device = "cuda" if precision == "fp16" else ("cpu" if precision == "bf16" else "auto")
        # channels_last measured on the 2-core Zen 4 CPU (benchmarks/RESULTS.md): bf16 UNet step 0.55 -> 0.42 s,
        # decode 1.18 -> 1.04 s. The fp32 baseline stays the study's plain eager model.
        self.channels_last = precision == "bf16"

    def availability(self) -> Availability:  # noqa: D102
        if self.precision == "fp16" and not is_cuda_available():
            return Availability.no("needs a CUDA device (fp16 kernels on CPU are slower than fp32)")
        if self.precision == "bf16" and self._device() == "cpu" and not cpu_supports_bf16():
            return Availability.no("this CPU has no native bf16 (AVX-512 BF16, AMX or Arm BF16): bf16 would be "
                                   "emulated, slower than fp32")
        return Availability.yes()

    def _device(self) -> str:
        return default_device() if self.device == "auto" else self.device

    def _runner(self, module: torch.nn.Module, device: str) -> PartFn:
        """``module`` run as this variant runs it on ``device`` (precision, memory layout); CPU fp32 outputs."""
        module = module.to(device)
        if device.startswith("cuda") and self.precision == "fp16":
            return _cast_fn(module, device, torch.float16)
        if self.channels_last:  # on a copy: the shared model keeps its layout for the other variants
            module = copy.deepcopy(module).to(memory_format=torch.channels_last)
        return autocast_fn(module, device, torch.bfloat16 if self.precision == "bf16" else None,
                           channels_last=self.channels_last)

    def load_part(
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cpu"
    ) -> PartFn:
        """The part's module from a diffusers weights folder, run as ``build`` runs the loaded model's.

        ``artifact/unet`` or ``artifact/vqvae`` holds the part (``PART_SUBFOLDER``).
        """
        if part not in PART_SUBFOLDER:
            raise EdgediffError(f"variant {self.name} loads {' and '.join(PART_SUBFOLDER)} from weights, not {part!r}")
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())
        module = load_submodel(preset, Path(artifact), PART_SUBFOLDER[part])
        return self._runner((UNetModule if part == "unet" else DecoderModule)(module).eval(), device)

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        device = self._device()
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())
        if self.precision == "fp16":  # one fp16 copy of the modules, shared by every part
            model = copy.copy(model)
            model.unet = copy.deepcopy(model.unet).half()
            model.vqvae = copy.deepcopy(model.vqvae).half()

        def part_fn(part: str) -> PartFn:
            return self._runner(part_module(model, part), device)

        info = {"device": device, "precision": self.precision, "threads": torch.get_num_threads(),
                "deepcache_interval": options.deepcache_interval, "channels_last": self.channels_last}
        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)


def _cast_fn(module: torch.nn.Module, device: str, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    def run(*args: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = module(*(a.to(device, dtype) if a.is_floating_point() else a.to(device) for a in args))
        return to_cpu_float(out)

    return run


class CompileVariant(Variant):
    """``torch.compile`` (inductor) of the fp32 modules; the first call (a warm-up) compiles."""

    name = "compile"
    backend = "compile"
    precision = "fp32"
    device = "auto"
    description = "torch.compile (inductor), fp32; compiles on the first call"
    tolerance = 1e-3
    supports_deepcache = True

    def availability(self) -> Availability:  # noqa: D102
        if not is_cuda_available() and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            return Availability.no("torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH")
        return Availability.yes()

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        device = default_device()
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())

        def part_fn(part: str) -> Callable[..., torch.Tensor]:
            return autocast_fn(torch.compile(part_module(model, part).to(device), dynamic=False), device, None)

        info = {"device": device, "precision": "fp32", "deepcache_interval": options.deepcache_interval}
        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)
