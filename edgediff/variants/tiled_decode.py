"""Decode latents in overlapping tiles blended linearly: the decoder's activations, and its peak memory, shrink.

The tiles overlap by at least ``min_overlap`` latent pixels and are spread evenly, so every tile has the same shape
(one compiled decoder serves them all). In each overlap the tiles' images are blended with linear ramps, normalised
by the sum of the weights. Tiling is not exact: each tile normalises (GroupNorm) and attends (the mid block's attention)
over itself only; the tests bound the difference to the untiled decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(size: int, tile: int, min_overlap: int) -> list[int]:
    """Origins of evenly spread tiles of side ``tile`` covering ``[0, size)`` with overlaps >= ``min_overlap``.

    Raises:
        ValueError: ``min_overlap`` is not smaller than ``tile``.
    """
    if tile >= size:
        return [0]
    if not 0 <= min_overlap < tile:
        raise ValueError(f"min_overlap must be in 0..{tile - 1}, got {min_overlap}")
    count = math.ceil((size - min_overlap) / (tile - min_overlap))
    count = max(count, 2)
    return [round(i * (size - tile) / (count - 1)) for i in range(count)]


def _ramp(starts: list[int], index: int, length: int, factor: int) -> torch.Tensor:
    """Blend weights along one axis for tile ``index``: linear over its overlaps with the neighbours, 1 elsewhere."""
    weights = torch.ones(length * factor)
    positions = torch.arange(length * factor, dtype=torch.float32) + 0.5
    if index > 0:
        overlap = (starts[index - 1] + length - starts[index]) * factor
        if overlap > 0:
            weights = torch.minimum(weights, (positions / overlap).clamp(max=1.0))
    if index < len(starts) - 1:
        overlap = (starts[index] + length - starts[index + 1]) * factor
        if overlap > 0:
            weights = torch.minimum(weights, ((length * factor - positions) / overlap).clamp(max=1.0))
    return weights


class TiledDecoder:
    """A ``DecoderRunner`` that decodes ``tile`` x ``tile`` latent tiles with ``decode_tile`` and blends them.

    Args:
        decode_tile: Decodes latents ``[B, C, tile, tile]`` to images ``[B, 3, tile*factor, tile*factor]``.
        tile: Tile side in latent pixels.
        min_overlap: Least overlap of neighbouring tiles, in latent pixels.
        factor: Image pixels per latent pixel (4 for celebahq-256).
    """

    def __init__(self, decode_tile: Callable[[torch.Tensor], torch.Tensor], *, tile: int, min_overlap: int,
                 factor: int) -> None:
        self.decode_tile = decode_tile
        self.tile = tile
        self.min_overlap = min_overlap
        self.factor = factor

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode ``latents`` ``[B, C, h, w]`` to ``[B, 3, h*factor, w*factor]`` in [-1, 1]."""
        batch, _, height, width = latents.shape
        f, tile = self.factor, self.tile
        if height < tile or width < tile:
            raise ValueError(f"latents of {height}x{width} are smaller than the {tile}x{tile} tile")
        ys = tile_starts(height, tile, self.min_overlap)
        xs = tile_starts(width, tile, self.min_overlap)
        out = torch.zeros((batch, 3, height * f, width * f))
        total = torch.zeros((height * f, width * f))
        for iy, y in enumerate(ys):
            ramp_y = _ramp(ys, iy, tile, f)
            for ix, x in enumerate(xs):
                image = self.decode_tile(latents[..., y:y + tile, x:x + tile].contiguous())
                weight = ramp_y[:, None] * _ramp(xs, ix, tile, f)[None, :]
                out[..., y * f:(y + tile) * f, x * f:(x + tile) * f] += image * weight
                total[y * f:(y + tile) * f, x * f:(x + tile) * f] += weight
        return out / total
