"""Fidelity of a variant against the baseline on the same seeds: PSNR and SSIM of the images, max |latent error|.

SSIM follows Wang et al. (2004) as scikit-image computes it with ``gaussian_weights=True``: an 11x11 Gaussian
window (sigma 1.5, truncated at 3.5 sigma), population covariances, ``K1 = 0.01``, ``K2 = 0.03``, the mean over the
"valid" positions where the window lies inside the image, computed per colour channel and averaged. It is written
in numpy (separable filtering over sliding windows) so that scikit-image is not a dependency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
UINT8_RANGE = 255.0


def _as_float_images(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` (or ``[H, W, C]``/``[H, W]``) -> float64 ``[N, H, W, C]``."""
    arr = np.asarray(images, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None, :, :, None]
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], [H, W, C] or [H, W], got shape {arr.shape}")
    return arr


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")


def psnr_db(images: np.ndarray, reference: np.ndarray, data_range: float = UINT8_RANGE) -> float:
    """Peak signal-to-noise ratio in dB over all pixels of all images; ``inf`` when they are identical.

    Args:
        images: Images to score (uint8 NHWC from the pipeline, or any array of that layout).
        reference: The baseline's images, same shape.
        data_range: Peak value (255 for uint8).
    """
    a, b = _as_float_images(images), _as_float_images(reference)
    _check_pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def gaussian_kernel(sigma: float = SSIM_SIGMA, truncate: float = SSIM_TRUNCATE) -> np.ndarray:
    """Normalised 1-D Gaussian taps with radius ``int(truncate * sigma + 0.5)`` (11 taps for sigma 1.5)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``x`` ``[N, H, W, C]`` along H then W."""
    k = taps.size
    rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ taps
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=2) @ taps


def ssim_per_image(images: np.ndarray, reference: np.ndarray, data_range: float = UINT8_RANGE) -> np.ndarray:
    """SSIM of each image against its reference (mean over channels), shape ``[N]``.

    Raises:
        ValueError: shapes differ, or an image is smaller than the 11x11 window.
    """
    a, b = _as_float_images(images), _as_float_images(reference)
    _check_pair(a, b)
    taps = gaussian_kernel()
    if a.shape[1] < taps.size or a.shape[2] < taps.size:
        raise ValueError(f"SSIM needs images of at least {taps.size}x{taps.size} pixels, got {a.shape[1:3]}")
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(axis=(1, 2, 3))


def ssim(images: np.ndarray, reference: np.ndarray, data_range: float = UINT8_RANGE) -> float:
    """Mean SSIM over the images (1.0 when identical)."""
    return float(ssim_per_image(images, reference, data_range).mean())


def max_abs_error(values: Any, reference: Any) -> float:
    """Largest absolute elementwise difference (final latents of a variant vs the baseline's)."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    _check_pair(a, b)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


@dataclass(frozen=True)
class Fidelity:
    """A variant's outputs against the baseline's on the same seeds.

    Attributes:
        reference: The baseline variant's name.
        images: How many images were compared.
        psnr_db: PSNR in dB (``inf`` when identical).
        ssim: Mean SSIM, 1.0 when identical.
        max_abs_latent_error: Largest |latent - baseline latent|; ``None`` when latents are not available (through
            the gateway, which returns images only).
    """

    reference: str
    images: int
    psnr_db: float
    ssim: float
    max_abs_latent_error: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``psnr_db`` is the string ``"inf"`` for identical images (JSON has no infinity)."""
        return {
            "available": True,
            "reason": None,
            "reference": self.reference,
            "images": self.images,
            "psnr_db": "inf" if math.isinf(self.psnr_db) else self.psnr_db,
            "ssim": self.ssim,
            "max_abs_latent_error": self.max_abs_latent_error,
        }


def unavailable(reference: str, reason: str) -> dict[str, Any]:
    """The JSON form of fidelity that could not be computed, with the reason."""
    return {"available": False, "reason": reason, "reference": reference, "images": 0, "psnr_db": None,
            "ssim": None, "max_abs_latent_error": None}


def compare_outputs(
    images: np.ndarray,
    reference_images: np.ndarray,
    *,
    reference: str,
    latents: np.ndarray | None = None,
    reference_latents: np.ndarray | None = None,
) -> Fidelity:
    """PSNR, SSIM and max |latent error| of one variant's outputs against the baseline's (same seeds, same order).

    Args:
        images: The variant's uint8 images ``[N, H, W, 3]``.
        reference_images: The baseline's images for the same seeds.
        reference: The baseline's name.
        latents: The variant's final latents ``[N, C, h, w]``, or None.
        reference_latents: The baseline's final latents, or None.
    """
    latent_error = None
    if latents is not None and reference_latents is not None:
        latent_error = max_abs_error(latents, reference_latents)
    return Fidelity(
        reference=reference,
        images=int(_as_float_images(images).shape[0]),
        psnr_db=psnr_db(images, reference_images),
        ssim=ssim(images, reference_images),
        max_abs_latent_error=latent_error,
    )
