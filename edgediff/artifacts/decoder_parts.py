"""The VQ decoder in two parts, so the low-memory variant can tile only where tiling is cheap and nearly exact.

* ``DecoderTrunk(latents) -> hidden``: codebook lookup, ``post_quant_conv``, the decoder's ``conv_in`` and mid
  block, at latent resolution (64 x 64 for celebahq-256). Its attention is global over the latent map, so it always
  runs whole: exact, and small (8 MB per activation at 512 channels).
* ``DecoderTail(hidden) -> image``: the up blocks and the output head, where the activations grow with the image
  (256 x 256) and the memory goes. Only this part is tiled.

``tail(trunk(z))`` is ``VQModel.decode(z)`` op for op (checked bit-exactly by the tests).
"""

from __future__ import annotations

from typing import Any

import torch

from edgediff.errors import InvalidArgumentError


def check_splittable(vqvae: Any) -> None:
    """Raise ``InvalidArgumentError`` for VQ models the two parts do not reproduce (spatial norm, no codebook)."""
    config = vqvae.config
    if config.norm_type != "group" or config.lookup_from_codebook:
        raise InvalidArgumentError("the split decoder supports VQ models with group norm and codebook quantization")


class _DecoderPart(torch.nn.Module):
    """A part of a splittable ``diffusers.VQModel``'s decoder (checked with ``check_splittable``).

    Args:
        vqvae: A ``diffusers.VQModel``.
    """

    def __init__(self, vqvae: Any) -> None:
        super().__init__()
        check_splittable(vqvae)
        self.vqvae = vqvae


class DecoderTrunk(_DecoderPart):
    """``(latents [B,C,h,w]) -> hidden [B,F,h,w]``: quantize, ``post_quant_conv``, ``conv_in``, mid block."""

    def forward(self, latents: torch.Tensor) -> torch.Tensor:  # noqa: D102
        quant, _, _ = self.vqvae.quantize(latents)
        hidden = self.vqvae.decoder.conv_in(self.vqvae.post_quant_conv(quant))
        return self.vqvae.decoder.mid_block(hidden, None)


class DecoderTail(_DecoderPart):
    """``(hidden [B,F,h,w]) -> image [B,3,H,W]`` in [-1, 1]: the up blocks and the output head."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # noqa: D102
        decoder = self.vqvae.decoder
        for up_block in decoder.up_blocks:
            hidden = up_block(hidden, None)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(hidden)))
