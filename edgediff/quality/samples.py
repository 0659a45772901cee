"""Generate the fixed set of images a quality score is computed on: the same seeds for every variant."""

from __future__ import annotations

import numpy as np

from edgediff.errors import InvalidArgumentError
from edgediff.pipeline import LDMPipeline

DEFAULT_SAMPLES = 64
DEFAULT_BATCH = 16


def sample_images(
    pipeline: LDMPipeline,
    *,
    samples: int = DEFAULT_SAMPLES,
    steps: int = 20,
    seed: int = 0,
    batch: int = DEFAULT_BATCH,
    eta: float = 0.0,
    scheduler: str | None = None,
) -> np.ndarray:
    """Generate ``samples`` images as uint8 ``[N, H, W, 3]``.

    Calls with seeds ``seed, seed + 1, ...`` of up to ``batch`` images each, so two variants given the same arguments
    start from exactly the same noise.

    Args:
        pipeline: The variant's pipeline.
        samples: How many images (>= 1).
        steps: DDIM steps.
        seed: Seed of the first call.
        batch: Images per call.
        eta: DDIM eta.
        scheduler: ``ddim``, ``dpmpp`` or ``unipc``; None uses the pipeline's.
    """
    if samples < 1:
        raise InvalidArgumentError(f"--samples must be >= 1, got {samples}")
    chunks = []
    done = 0
    call = 0
    while done < samples:
        n = min(batch, samples - done)
        chunks.append(pipeline(seed=seed + call, steps=steps, eta=eta, batch=n, scheduler=scheduler).images)
        done += n
        call += 1
    return np.concatenate(chunks)


def image_grid(images: np.ndarray, *, cols: int = 4, scale: int = 3, border_px: int = 2) -> np.ndarray:
    """Tile uint8 ``[N, H, W, 3]`` images into one uint8 image (for READMEs and reports).

    ``cols`` images per row, each upscaled ``scale`` times (nearest neighbour), ``border_px`` black pixels between.
    """
    n, h, w, c = images.shape
    rows = -(-n // cols)
    big = images.repeat(scale, axis=1).repeat(scale, axis=2)
    hs, ws = h * scale, w * scale
    grid = np.zeros((rows * hs + (rows + 1) * border_px, cols * ws + (cols + 1) * border_px, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = border_px + r * (hs + border_px), border_px + k * (ws + border_px)
        grid[y:y + hs, x:x + ws] = big[i]
    return grid
