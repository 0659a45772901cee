"""Tensor-in, tensor-out wrappers of the diffusers modules: what every exporter traces."""

from __future__ import annotations

from typing import Any

import torch


class UNetModule(torch.nn.Module):
    """``UNet2DModel`` as ``(sample [B,C,H,W] fp32, timestep [B] int64) -> noise [B,C,H,W]``."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.unet(sample, timestep, return_dict=False)[0]


class DecoderModule(torch.nn.Module):
    """``VQModel.decode`` (codebook lookup included) as ``(latents [B,C,h,w]) -> image [B,3,H,W] in [-1, 1]``."""

    def __init__(self, vqvae: Any) -> None:
        super().__init__()
        self.vqvae = vqvae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.vqvae.decode(latents, return_dict=False)[0]


def example_inputs(latent_shape: tuple[int, int, int], batch: int = 1) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example inputs for tracing: ``{"unet": (sample, timestep), "vqdec": (latents,)}``."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((batch, *latent_shape), generator=generator)
    timestep = torch.full((batch,), 500, dtype=torch.int64)
    return {"unet": (sample, timestep), "vqdec": (sample.clone(),)}


class PrecisionWrapper(torch.nn.Module):
    """Run ``inner`` in ``dtype`` behind fp32 inputs and outputs (integer inputs pass through unchanged).

    Every artifact keeps fp32 tensors at its boundary, so the Triton configs and the pipeline are the same for all
    precisions; the cast happens inside the graph.
    """

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # noqa: D102
        cast = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        out = self.inner(*cast)
        if isinstance(out, tuple):  # multi-output parts (DeepCache's unet-full)
            return tuple(o.float() for o in out)
        return out.float()
