"""edgediff: serve a latent diffusion model on edge devices and measure what each image costs."""

from __future__ import annotations

__version__ = "0.1.0"
