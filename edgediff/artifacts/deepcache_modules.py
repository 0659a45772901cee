"""DeepCache as two tensor-in, tensor-out modules every backend can trace or export.

DeepCache (Ma et al., 2023) reuses a UNet's deep features across adjacent denoising steps: the high-level features
change slowly, so at most steps only the shallowest skip branch needs recomputing. For a diffusers ``UNet2DModel``:

* ``UNetFullWithFeature(sample, timestep) -> (noise, feature)`` runs the whole UNet exactly as
  ``UNet2DModel.forward`` does and also returns ``feature``: the input of the last up block (the output of
  ``up_blocks[:-1]``);
* ``UNetShallow(sample, timestep, feature) -> noise`` runs only the shallow branch: the time embedding,
  ``conv_in``, the layers of ``down_blocks[0]`` (not its downsampler), then ``up_blocks[-1]`` on the cached deep
  ``feature`` with the fresh shallow skips, then ``conv_norm_out`` / ``conv_act`` / ``conv_out``.

The full module reproduces ``UNet2DModel.forward`` op for op (checked bit-exactly by the tests), so a cache interval
of 1 gives exactly the uncached result.
"""

from __future__ import annotations

from typing import Any

import torch

from edgediff.errors import InvalidArgumentError


def check_deepcache_supported(unet: Any) -> None:
    """Raise ``InvalidArgumentError`` when ``unet`` has a structure the DeepCache modules do not reproduce.

    Supported: ``UNet2DModel`` without class conditioning and without skip (score-SDE) blocks, with at least two
    resolution levels.
    """
    if len(unet.down_blocks) < 2:
        raise InvalidArgumentError("--deepcache: the UNet has a single resolution level; nothing deep to cache")
    if getattr(unet, "class_embedding", None) is not None:
        raise InvalidArgumentError("--deepcache: class-conditional UNets are not supported")
    blocks = [*unet.down_blocks, *unet.up_blocks]
    if any(hasattr(block, "skip_conv") for block in blocks):
        raise InvalidArgumentError("--deepcache: UNets with skip (score-SDE) blocks are not supported")


def feature_shape(unet_config: dict[str, Any], batch: int = 1) -> tuple[int, int, int, int]:
    """Shape of the cached deep feature: the output of ``up_blocks[-2]`` (upsampled to the input resolution)."""
    size = unet_config["sample_size"]
    return (batch, unet_config["block_out_channels"][1], size, size)


def _embed(unet: Any, sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 0-1 of ``UNet2DModel.forward``: centre the input, broadcast the timesteps, embed them."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    timesteps = timestep
    if len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
    t_emb = unet.time_proj(timesteps).to(dtype=unet.dtype)
    emb = unet.time_embedding(t_emb)
    return sample, timesteps, emb


def _finish(unet: Any, hidden: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Step 6 of ``UNet2DModel.forward`` (no skip blocks, so no skip sample)."""
    hidden = unet.conv_norm_out(hidden)
    hidden = unet.conv_act(hidden)
    hidden = unet.conv_out(hidden)
    if unet.config.time_embedding_type == "fourier":
        timesteps = timesteps.reshape((hidden.shape[0], *([1] * len(hidden.shape[1:]))))
        hidden = hidden / timesteps
    return hidden


class UNetFullWithFeature(torch.nn.Module):
    """``(sample [B,C,H,W] fp32, timestep [B] int64) -> (noise [B,C,H,W], feature [B,F,H,W])``: the whole UNet.

    Args:
        unet: A ``diffusers.UNet2DModel`` (see ``check_deepcache_supported``).
    """

    def __init__(self, unet: Any) -> None:
        super().__init__()
        check_deepcache_supported(unet)
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        unet = self.unet
        sample, timesteps, emb = _embed(unet, sample, timestep)
        hidden = unet.conv_in(sample)
        res_samples: tuple[torch.Tensor, ...] = (hidden,)
        for block in unet.down_blocks:
            hidden, block_res = block(hidden_states=hidden, temb=emb)
            res_samples += block_res
        if unet.mid_block is not None:
            hidden = unet.mid_block(hidden, emb)
        for block in unet.up_blocks[:-1]:
            block_res = res_samples[-len(block.resnets):]
            res_samples = res_samples[: -len(block.resnets)]
            hidden = block(hidden, block_res, emb)
        feature = hidden
        last = unet.up_blocks[-1]
        hidden = last(hidden, res_samples[-len(last.resnets):], emb)
        return _finish(unet, hidden, timesteps), feature


class UNetShallow(torch.nn.Module):
    """``(sample, timestep, feature) -> noise``: the shallow branch over a cached deep feature.

    Args:
        unet: A ``diffusers.UNet2DModel`` (see ``check_deepcache_supported``).
    """

    def __init__(self, unet: Any) -> None:
        super().__init__()
        check_deepcache_supported(unet)
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:  # noqa: D102
        unet = self.unet
        sample, timesteps, emb = _embed(unet, sample, timestep)
        hidden = unet.conv_in(sample)
        res_samples: tuple[torch.Tensor, ...] = (hidden,)
        first = unet.down_blocks[0]
        attentions = getattr(first, "attentions", None)
        for index, resnet in enumerate(first.resnets):  # the first block's layers, without its downsampler
            hidden = resnet(hidden, emb)
            if attentions is not None:
                hidden = attentions[index](hidden)
            res_samples += (hidden,)
        last = unet.up_blocks[-1]
        hidden = last(feature, res_samples[-len(last.resnets):], emb)
        return _finish(unet, hidden, timesteps)
