"""The variant interface: "a UNet and a VQ decoder that run one way", and what building one returns."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgediff.constants import ENV_THREADS
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec, load_components
from edgediff.pipeline import DecoderRunner, LDMPipeline, UNetFn, UNetRunner


@dataclass(frozen=True)
class Availability:
    """Whether a variant can run here, and if not, why (``trt-fp16: needs a CUDA device``)."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Availability:
        """Available."""
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Availability:
        """Unavailable, with the reason shown to the user."""
        return cls(False, reason)


@dataclass(frozen=True)
class BuildOptions:
    """Options every variant understands.

    Attributes:
        threads: Intra-op threads; None means ``$EDGEDIFF_THREADS`` or the number of physical cores.
        deepcache_interval: DeepCache: recompute the deep UNet features every N steps (1 = off).
        progress: Show progress bars for long exports.
    """

    threads: int | None = None
    deepcache_interval: int = 1
    progress: bool = False

    def resolved_threads(self) -> int:
        """The thread count to use."""
        return resolve_threads(self.threads)


def resolve_threads(threads: int | None = None) -> int:
    """``threads``, else ``$EDGEDIFF_THREADS``, else physical cores (psutil), else logical cores."""
    if threads:
        return int(threads)
    env = os.environ.get(ENV_THREADS)
    if env:
        return int(env)
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


PartFn = Callable[..., Any]
"""A loaded part: tensors in, a tensor (or a tuple of them, the DeepCache ``unet-full`` part) out as fp32."""


class StatelessUNet:
    """A ``UNetRunner`` over a plain function: every generation uses the same callable."""

    def __init__(self, fn: UNetFn) -> None:
        self.fn = fn

    def sequence(self) -> UNetFn:
        """The function itself (no per-generation state)."""
        return self.fn


@dataclass
class BuiltVariant:
    """A variant ready to run: its runners and what was built for it.

    Attributes:
        name: Variant name (``onnx-fp32``).
        unet: The UNet runner.
        decoder: The decoder runner.
        info: Artifacts (paths, export reports), precision, device, threads: for reports and manifests.
    """

    name: str
    unet: UNetRunner
    decoder: DecoderRunner
    info: dict[str, Any] = field(default_factory=dict)

    def pipeline(self, model: ModelSpec) -> LDMPipeline:
        """An ``LDMPipeline`` over this variant's runners, with the metadata every output carries."""
        metadata = {
            "preset": model.preset.name,
            "variant": self.name,
            "weights": model.weights.kind,
            "weights_sha256": model.weights.sha256,
        }
        return LDMPipeline(
            unet=self.unet,
            decoder=self.decoder,
            scheduler_config=model.scheduler_config,
            latent_shape=model.preset.latent_shape,
            scaling_factor=model.scaling_factor,
            metadata=metadata,
        )


class Variant(abc.ABC):
    """One way of running the model.

    Attributes:
        name: Registry name, ``<backend>-<precision>`` (``torch-fp32``, ``openvino-bf16``...).
        backend: Backend family (``torch``, ``jit``, ``onnx``, ``openvino``, ``trt``, ``compile``).
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        device: ``cpu`` or ``cuda``.
        description: One line for ``edgediff variants``.
        tolerance: Largest relative L2 error of the final latents vs ``torch-fp32`` that this variant is allowed on
            the same seed (checked by the tests; reduced precisions are looser).
    """

    name: str
    backend: str
    precision: str
    device: str
    description: str
    tolerance: float = 1e-4
    supports_deepcache: bool = False

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this variant can run on this machine (cheap: no export, no model load)."""

    @abc.abstractmethod
    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:
        """Export or wrap the model and return runners (artifacts come from the cache when present).

        A variant touches ``model.unet``/``model.vqvae`` only when it needs them (to run them, or to export an
        artifact the cache lacks): the modules load then, once.
        """

    def load_part(
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cpu"
    ) -> PartFn:
        """Load one part's artifact as this variant runs it: the one loader of a variant's artifacts.

        ``build`` loads the artifacts it exported with it, and Triton's Python-backend part model
        (``exporters.part_runtime``) the copy in its model folder, so a part served by Triton computes what the
        variant computes in-process.

        Args:
            part: ``unet``, ``vqdec``, ``unet-full`` or ``unet-shallow`` (``edgediff.artifacts.build.PARTS``).
            artifact: The artifact file (``model.onnx``, ``model.xml``, ``model.pt``, ``model.plan``), or the
                diffusers weights folder of eager PyTorch.
            options: Threads (the other options are the variant's, not the part's).
            preset: The architecture (eager PyTorch builds the module from it).
            device: ``cpu`` or ``cuda[:N]``.

        Raises:
            EdgediffError: this variant does not run a part from one artifact, or not on ``device``.
        """
        raise EdgediffError(f"variant {self.name} does not run a part from a single artifact")

    def load_model(self, preset: ModelPreset, weights: str | None = None, *, seed: int = 0) -> ModelSpec:
        """The model as ``build`` needs it; by default with its modules loaded, so ``build`` times no loading.

        A variant that runs from exported artifacts alone returns a spec from the artifact cache instead, whose
        modules are never loaded.

        Args:
            preset: The architecture.
            weights: Weights folder, or None (``$EDGEDIFF_WEIGHTS``, bundled, or synthetic weights).
            seed: Seed of synthetic weights.
        """
        return load_components(preset, weights, seed=seed, warn=False)

    def prepare(self, model: ModelSpec, options: BuildOptions) -> dict[str, Any]:
        """Build (or find in the cache) every artifact this variant needs; returns ``{part: report}``.

        The default builds the whole variant; variants with exported artifacts override it to skip loading them.
        """
        return dict(self.build(model, options).info.get("artifacts", {}))

    def gate_settings(self) -> dict[str, Any]:
        """What, besides its name and sampler, changes what this variant computes on this machine; empty by default.

        ``edgediff tune`` records it with the row it gated, and refuses a profile gated under other settings (its
        verdict was about other numbers) until ``--revalidate``.
        """
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The registry's row for this variant (availability included)."""
        avail = self.availability()
        return {
            "name": self.name,
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "available": avail.ok,
            "reason": avail.reason,
            "description": self.description,
        }


def to_cpu_float(out: torch.Tensor | tuple[torch.Tensor, ...]) -> Any:
    """A module's output (a tensor, or a tuple of them for multi-output parts) as CPU fp32, same structure."""
    if isinstance(out, tuple | list):
        return tuple(o.float().cpu() for o in out)
    return out.float().cpu()


def torch_fn(module: Callable[..., torch.Tensor], device: str) -> Callable[..., torch.Tensor]:
    """Wrap a tensor-in, tensor-out module so inputs move to ``device`` and outputs come back as CPU fp32.

    A module with several outputs (the DeepCache ``unet-full`` part) gives a tuple of them.
    """

    def run(*args: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = module(*(a.to(device) for a in args))
        return to_cpu_float(out)

    return run
