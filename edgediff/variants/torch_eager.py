"""Plain PyTorch variants: fp32 (the baseline), fp16 on CUDA, bf16 autocast on CPU, and ``torch.compile``."""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Callable

import torch

from edgediff.artifacts.build import part_module
from edgediff.availability import is_cuda_available
from edgediff.models.weights import LDMComponents
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant


def default_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``: the baseline runs where the accelerated variants run."""
    return "cuda" if is_cuda_available() else "cpu"


def _autocast_fn(module: torch.nn.Module, device: str, dtype: torch.dtype | None) -> Callable[..., torch.Tensor]:
    def run(*args: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(device_type=device, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = module(*(a.to(device) for a in args))
        return out.float().cpu()

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

    def __init__(self, name: str, precision: str, description: str, tolerance: float) -> None:
        self.name = name
        self.precision = precision
        self.description = description
        self.tolerance = tolerance
        self.device = "cuda" if precision == "fp16" else ("cpu" if precision == "bf16" else "auto")

    def availability(self) -> Availability:  # noqa: D102
        if self.precision == "fp16" and not is_cuda_available():
            return Availability.no("needs a CUDA device (fp16 kernels on CPU are slower than fp32)")
        return Availability.yes()

    def _device(self) -> str:
        return default_device() if self.device == "auto" else self.device

    def build(self, components: LDMComponents, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        device = self._device()
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())
        unet = part_module(components, "unet")
        vqdec = part_module(components, "vqdec")
        autocast = None
        if self.precision == "fp16":
            unet, vqdec = copy.deepcopy(unet).half(), copy.deepcopy(vqdec).half()
        elif self.precision == "bf16":
            autocast = torch.bfloat16
        unet, vqdec = unet.to(device), vqdec.to(device)
        if device == "cuda" and self.precision == "fp16":
            unet_fn = _cast_fn(unet, device, torch.float16)
            dec_fn = _cast_fn(vqdec, device, torch.float16)
        else:
            unet_fn = _autocast_fn(unet, device, autocast)
            dec_fn = _autocast_fn(vqdec, device, autocast)
        info = {"device": device, "precision": self.precision, "threads": torch.get_num_threads()}
        return BuiltVariant(self.name, StatelessUNet(unet_fn), dec_fn, info)


def _cast_fn(module: torch.nn.Module, device: str, dtype: torch.dtype) -> Callable[..., torch.Tensor]:
    def run(*args: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = module(*(a.to(device, dtype) if a.is_floating_point() else a.to(device) for a in args))
        return out.float().cpu()

    return run


class CompileVariant(Variant):
    """``torch.compile`` (inductor) of the fp32 modules; the first call (a warm-up) compiles."""

    name = "compile"
    backend = "compile"
    precision = "fp32"
    device = "auto"
    description = "torch.compile (inductor), fp32; compiles on the first call"
    tolerance = 1e-3

    def availability(self) -> Availability:  # noqa: D102
        if not is_cuda_available() and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            return Availability.no("torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH")
        return Availability.yes()

    def build(self, components: LDMComponents, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        device = default_device()
        if device == "cpu":
            torch.set_num_threads(options.resolved_threads())
        unet = torch.compile(part_module(components, "unet").to(device), dynamic=False)
        vqdec = torch.compile(part_module(components, "vqdec").to(device), dynamic=False)
        unet_fn = _autocast_fn(unet, device, None)
        dec_fn = _autocast_fn(vqdec, device, None)
        return BuiltVariant(self.name, StatelessUNet(unet_fn), dec_fn, {"device": device, "precision": "fp32"})
