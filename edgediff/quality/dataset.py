"""The reference dataset: scikit-learn's handwritten digits, upsampled to 32x32, with one fixed train/test split.

``sklearn.datasets.load_digits`` ships with scikit-learn (1797 images of 8x8 pixels, 16 grey levels, labels 0-9), so
nothing is downloaded. Every consumer (the autoencoder, the UNet, the classifier, the digits-FD reference) reads the
images through this module, so they all see the same pixels and the same split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from edgediff.pipeline import to_uint8_images

IMAGE_SIZE = 32
"""Side in pixels of the upsampled images (the ``digits`` preset's image size)."""
TEST_FRACTION = 0.2
SPLIT_SEED = 0
"""The train/test split is stratified by label and fixed by this seed; it never depends on a training seed."""
NUM_CLASSES = 10


@dataclass(frozen=True)
class DigitsSplit:
    """One part of the dataset.

    Attributes:
        images: fp32 ``[N, 1, 32, 32]`` in [-1, 1] (background -1, ink +1).
        labels: int64 ``[N]``, 0-9.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def rgb(self) -> torch.Tensor:
        """The images as 3 identical channels ``[N, 3, 32, 32]`` in [-1, 1]: what the autoencoder reads and writes."""
        return self.images.expand(-1, 3, -1, -1).contiguous()

    def uint8_nhwc(self) -> np.ndarray:
        """The images as the pipeline outputs them: uint8 ``[N, 32, 32, 3]``."""
        return to_uint8_images(self.rgb())


def upsample(images_8x8: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Scale sklearn's 0..16 grey levels to [-1, 1] and upsample bicubically to ``size`` (clamped to [-1, 1]).

    Args:
        images_8x8: ``[N, 8, 8]`` values in 0..16.
        size: Output side in pixels.
    """
    x = torch.from_numpy(np.asarray(images_8x8, dtype=np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(-1.0, 1.0).contiguous()


@lru_cache(maxsize=1)
def load_split() -> tuple[DigitsSplit, DigitsSplit]:
    """The (train, test) splits: 1437 and 360 images, stratified by label, always the same."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    images = upsample(digits.images)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return (
        DigitsSplit(images[train_idx], labels[train_idx]),
        DigitsSplit(images[test_idx], labels[test_idx]),
    )


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation of ``range(n)`` per epoch, the last partial batch dropped."""
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
