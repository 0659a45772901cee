"""Image-quality metrics that need no download: confident share, Frechet distance, and FID from a user's Inception.

The Frechet distance between two Gaussians is ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, computed as
pytorch-fid and clean-fid do (``scipy.linalg.sqrtm``; a small diagonal offset when the product is singular; the
imaginary round-off dropped). The digits-FD applies it to the digits classifier's features; FID applies it to the
2048 pool features of the TorchScript Inception of the StyleGAN2-ADA / clean-fid metrics
(``inception-2015-12-05.pt``), which the user provides: nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.errors import InvalidArgumentError, WeightsError

CONFIDENCE_THRESHOLD = 0.9
"""An image counts as a recognisable digit when the classifier gives its top class at least this probability."""
INCEPTION_SIZE = 299
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a set of feature vectors (float64)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        """Statistics of ``features [N, D]`` (N >= 2; unbiased covariance as numpy's ``cov``)."""
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] < 2:
            raise InvalidArgumentError(f"need at least 2 feature vectors [N, D], got shape {list(feats.shape)}")
        return cls(mu=feats.mean(axis=0), sigma=np.cov(feats, rowvar=False), count=feats.shape[0])


def frechet_distance(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """Frechet distance between the Gaussians fitted to two feature sets (0 for identical statistics).

    Args:
        a: First statistics.
        b: Second statistics (same dimension).
        eps: Diagonal offset added to both covariances when their product is singular.
    """
    from scipy import linalg

    if a.mu.shape != b.mu.shape:
        raise InvalidArgumentError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = a.mu - b.mu
    with warnings.catch_warnings():  # a singular product (fewer samples than dimensions) is handled just below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(a.sigma.dot(b.sigma))
    if not np.isfinite(covmean).all():
        offset = np.eye(a.sigma.shape[0]) * eps
        covmean = linalg.sqrtm((a.sigma + offset).dot(b.sigma + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    value = float(diff.dot(diff) + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def confident_share(probs: np.ndarray, threshold: float = CONFIDENCE_THRESHOLD) -> float:
    """Share (0..1) of rows of ``probs [N, classes]`` whose largest probability is >= ``threshold``."""
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] == 0:
        raise InvalidArgumentError(f"probabilities must be [N, classes] with N >= 1, got shape {list(p.shape)}")
    return float((p.max(axis=1) >= threshold).mean())


def load_image_folder(folder: str | os.PathLike[str], *, size: int | None = None) -> np.ndarray:
    """Every image in ``folder`` (sorted by name; .png/.jpg/.jpeg/.bmp/.webp) as uint8 RGB ``[N, H, W, 3]``.

    Args:
        folder: The folder.
        size: Resize each image to ``size x size`` (PIL bicubic); required when the images differ in size.

    Raises:
        InvalidArgumentError: the folder is missing, holds no images, or sizes differ and ``size`` is None.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise InvalidArgumentError(f"{root} is not a directory")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise InvalidArgumentError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in paths:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BICUBIC)
            images.append(np.asarray(rgb, dtype=np.uint8))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InvalidArgumentError(f"images in {root} differ in size ({sorted(shapes)[:3]}...); pass a size")
    return np.stack(images)


def load_inception(path: str | os.PathLike[str]) -> Any:
    """Load the TorchScript Inception feature extractor (``inception-2015-12-05.pt``) on the CPU.

    Raises:
        WeightsError: the file is missing or is not a TorchScript module.
    """
    import torch

    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"--inception-weights: {file} does not exist (the TorchScript inception-2015-12-05.pt)")
    try:
        with warnings.catch_warnings():  # the detector is TorchScript by definition; torch deprecates jit.load
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(file), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise WeightsError(f"--inception-weights: {file} is not a TorchScript module: {exc}") from exc


def inception_features(model: Any, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Inception pool features of uint8 ``[N, H, W, 3]`` images, float64 ``[N, D]`` (D = 2048 for the real one).

    Each image is resized to 299x299 (PIL bicubic, as clean-fid), then ``model(uint8 NCHW, return_features=True)``.
    """
    import torch
    from PIL import Image

    array = np.asarray(images)
    if array.ndim != 4 or array.dtype != np.uint8 or array.shape[-1] != 3:
        raise InvalidArgumentError(f"images must be uint8 [N, H, W, 3], got {array.dtype} {list(array.shape)}")
    feats = []
    for start in range(0, array.shape[0], batch):
        chunk = [
            np.asarray(Image.fromarray(im).resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BICUBIC), dtype=np.uint8)
            if im.shape[:2] != (INCEPTION_SIZE, INCEPTION_SIZE) else im
            for im in array[start:start + batch]
        ]
        x = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            out = model(x, return_features=True)
        feats.append(out.double().reshape(out.shape[0], -1).numpy())
    return np.concatenate(feats)


def fid(images: np.ndarray, reference_dir: str | os.PathLike[str], inception_weights: str | os.PathLike[str]) -> float:
    """FID between ``images`` (uint8 NHWC) and the images in ``reference_dir``, with the user's Inception file."""
    model = load_inception(inception_weights)
    reference = load_image_folder(reference_dir, size=INCEPTION_SIZE)
    return frechet_distance(FeatureStats.of(inception_features(model, images)),
                            FeatureStats.of(inception_features(model, reference)))
