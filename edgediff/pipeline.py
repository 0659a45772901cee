"""DDIM sampling over a UNet runner and a decoder runner, with per-stage timings.

The pipeline only wires components: the math of each step is diffusers' ``DDIMScheduler``, the networks are whatever
runners a variant built (eager torch, TorchScript, ONNX Runtime, OpenVINO, TensorRT, or a Triton BLS call). The loop
follows diffusers' ``LDMPipeline`` exactly (initial noise on a CPU generator, ``init_noise_sigma``,
``scale_model_input``, ``latents / vqvae.scaling_factor`` before decoding), and additionally passes the generator to
``scheduler.step`` so that ``eta > 0`` is deterministic too.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgediff.io import atomic_write_bytes
from edgediff.request import MAX_BATCH as MAX_BATCH  # the pipeline's limits live with the request
from edgediff.request import MAX_STEPS as MAX_STEPS
from edgediff.schedulers import check_scheduler, make_scheduler, step_kwargs


class UNetFn(Protocol):
    """Predict the noise for ``sample`` (fp32 NCHW) at integer ``timestep`` (shape ``[batch]``); returns fp32 NCHW."""

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """Run one UNet evaluation."""
        ...


class UNetRunner(Protocol):
    """A UNet that runs one way; ``sequence()`` gives the callable for one generation (DeepCache keeps state there).

    A callable that holds resources outside this process (a stateful Triton model's sequences) also has ``close()``;
    the pipeline calls it once when the generation ends, finished or not, and it must not raise.
    """

    def sequence(self) -> UNetFn:
        """A callable for one generation (called once per pipeline call)."""
        ...


class DecoderRunner(Protocol):
    """Decode scaled latents (fp32 NCHW) to images in [-1, 1] (fp32 NCHW)."""

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode."""
        ...


class GenerationCancelled(Exception):
    """Raised inside the loop when the caller's ``should_stop`` says so (e.g. a gRPC deadline passed)."""


@dataclass
class StageTimings:
    """Wall-clock seconds per stage of one generation.

    Attributes:
        denoise_s: The DDIM loop (all UNet calls and scheduler steps).
        decode_s: The VQ decoder.
        total_s: Everything from the initial noise to the uint8 images.
        step_s: Each DDIM step's duration.
    """

    denoise_s: float
    decode_s: float
    total_s: float
    step_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"denoise_s": self.denoise_s, "decode_s": self.decode_s, "total_s": self.total_s, "step_s": self.step_s}


@dataclass
class GenerationResult:
    """What one call of the pipeline produced.

    Attributes:
        images: uint8 array ``[batch, height, width, 3]``.
        latents: The final (unscaled) latents before decoding, fp32 ``[batch, C, h, w]``.
        timings: Per-stage timings.
        metadata: Preset, variant, steps, eta, seed, batch and weights origin; written into PNG text chunks.
    """

    images: np.ndarray
    latents: torch.Tensor
    timings: StageTimings
    metadata: dict[str, str]

    def png_bytes(self, index: int = 0) -> bytes:
        """Encode image ``index`` as PNG with the metadata as text chunks (deterministic bytes)."""
        return encode_png(self.images[index], self.metadata)

    def save(self, path: str | Path) -> list[Path]:
        """Write every image as PNG atomically; ``x.png`` with batch 3 gives ``x.png``, ``x-1.png``, ``x-2.png``."""
        base = Path(path)
        paths = []
        for i in range(self.images.shape[0]):
            target = base if i == 0 else base.with_name(f"{base.stem}-{i}{base.suffix or '.png'}")
            atomic_write_bytes(target, self.png_bytes(i))
            paths.append(target)
        return paths


def encode_png(image: np.ndarray, metadata: dict[str, str]) -> bytes:
    """Encode one uint8 ``[height, width, 3]`` image as PNG with ``metadata`` as ``edgediff:<key>`` text chunks.

    The bytes are deterministic: the same pixels and metadata (in the same order) give the same file, whether the
    image came from the in-process pipeline or from Triton (the gateway encodes Triton's ``IMAGE`` output with this).
    """
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(f"edgediff:{key}", value)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def run_metadata(
    base: dict[str, str], *, steps: int, eta: float, seed: int, batch: int, scheduler: str = "ddim"
) -> dict[str, str]:
    """The metadata of one generation: ``base`` (preset, variant, weights...), then the run's arguments.

    The order is the order of the PNG text chunks; the gateway builds the PNGs of Triton's images with this, so they
    equal the in-process ones byte for byte.
    """
    return {**base, "steps": str(steps), "eta": str(eta), "seed": str(seed), "batch": str(batch),
            "scheduler": scheduler}


def initial_latents(generator: torch.Generator, batch: int, latent_shape: tuple[int, int, int]) -> torch.Tensor:
    """The starting noise: diffusers' ``randn_tensor`` on a CPU generator (the same numbers on every device)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((batch, *latent_shape), generator=generator, dtype=torch.float32)


def to_uint8_images(decoded: torch.Tensor) -> np.ndarray:
    """Map decoder output in [-1, 1] (NCHW) to uint8 NHWC as diffusers does: ``(x / 2 + 0.5).clamp(0, 1)``."""
    images = (decoded.float() / 2 + 0.5).clamp(0, 1)
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)


class LDMPipeline:
    """Unconditional latent diffusion: a sampler (DDIM by default) over a UNet runner, then a decoder runner.

    Args:
        unet: The UNet runner of a variant.
        decoder: The decoder runner of a variant.
        scheduler_config: ``DDIMScheduler`` keyword arguments (from the preset or the weights folder).
        latent_shape: (channels, height, width) of the latents.
        scaling_factor: Latents are divided by this before decoding (diffusers' ``vqvae.config.scaling_factor``).
        metadata: Fixed metadata (preset, variant, weights) merged into every result.
        scheduler: The sampler calls use when they name none: ``ddim``, ``dpmpp`` or ``unipc``
            (``edgediff.schedulers``).
    """

    def __init__(
        self,
        unet: UNetRunner,
        decoder: DecoderRunner,
        scheduler_config: dict[str, Any],
        latent_shape: tuple[int, int, int],
        scaling_factor: float,
        metadata: dict[str, str] | None = None,
        scheduler: str = "ddim",
    ) -> None:
        self.unet = unet
        self.decoder = decoder
        self.scheduler_config = dict(scheduler_config)
        self.latent_shape = tuple(latent_shape)
        self.scaling_factor = float(scaling_factor)
        self.metadata = dict(metadata or {})
        self.scheduler = check_scheduler(scheduler)

    def make_scheduler(self, name: str | None = None) -> Any:
        """A fresh scheduler ``name`` (default: the pipeline's) over the model's config.

        One per call, so concurrent generations do not share timestep state.
        """
        return make_scheduler(name or self.scheduler, self.scheduler_config)

    def denoise(
        self,
        latents: torch.Tensor,
        *,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        scheduler: str | None = None,
    ) -> tuple[torch.Tensor, list[float]]:
        """Run the sampling loop from ``latents``; returns the final latents and each step's seconds."""
        name = scheduler or self.scheduler
        extra = step_kwargs(name, eta=eta, generator=generator)
        scheduler = self.make_scheduler(name)
        scheduler.set_timesteps(steps)
        latents = latents * scheduler.init_noise_sigma
        unet_fn = self.unet.sequence()
        step_s: list[float] = []
        try:
            for index, t in enumerate(scheduler.timesteps):
                if should_stop is not None and should_stop():
                    raise GenerationCancelled(f"cancelled before step {index + 1}/{steps}")
                t0 = time.perf_counter()
                model_input = scheduler.scale_model_input(latents, t)
                timestep = torch.full((latents.shape[0],), int(t), dtype=torch.int64)
                noise = unet_fn(model_input, timestep)
                latents = scheduler.step(noise, t, latents, **extra).prev_sample
                step_s.append(time.perf_counter() - t0)
                if on_step is not None:
                    on_step(index + 1, steps)
        finally:
            close = getattr(unet_fn, "close", None)
            if close is not None:
                close()
        return latents, step_s

    def __call__(
        self,
        *,
        seed: int = 0,
        steps: int = 20,
        eta: float = 0.0,
        batch: int = 1,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        scheduler: str | None = None,
    ) -> GenerationResult:
        """Generate ``batch`` images.

        Args:
            seed: Seeds the initial noise (and the DDIM noise when ``eta > 0``).
            steps: DDIM steps, 1..1000.
            eta: DDIM eta, 0 (deterministic DDIM) .. 1 (DDPM-like).
            batch: Images per call.
            should_stop: Polled before each step; returning True raises ``GenerationCancelled``.
            on_step: Called with (step, steps) after each step (progress bars).
            scheduler: ``ddim``, ``dpmpp`` or ``unipc``; None uses the pipeline's (``edgediff.schedulers``).

        ``seed``, ``steps``, ``eta`` and ``batch`` are trusted: they were checked where the request entered
        (``edgediff.request.GenerationRequest.validated`` in the CLI, the gateway or Triton's pipeline model) or are
        the program's own constants, and are not checked again here.

        Raises:
            GenerationCancelled: ``should_stop`` returned True.
        """
        scheduler = check_scheduler(scheduler or self.scheduler, eta=eta)
        t_start = time.perf_counter()
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = initial_latents(generator, batch, self.latent_shape)
        with torch.inference_mode():
            latents, step_s = self.denoise(
                latents, steps=steps, eta=eta, generator=generator, should_stop=should_stop, on_step=on_step,
                scheduler=scheduler,
            )
            t_denoised = time.perf_counter()
            if should_stop is not None and should_stop():
                raise GenerationCancelled("cancelled before decoding")
            decoded = self.decoder(latents / self.scaling_factor)
            images = to_uint8_images(decoded)
        t_end = time.perf_counter()
        timings = StageTimings(
            denoise_s=t_denoised - t_start, decode_s=t_end - t_denoised, total_s=t_end - t_start, step_s=step_s
        )
        metadata = run_metadata(self.metadata, steps=steps, eta=eta, seed=seed, batch=batch, scheduler=scheduler)
        return GenerationResult(images=images, latents=latents, timings=timings, metadata=metadata)
