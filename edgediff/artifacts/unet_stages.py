"""The UNet cut into stages of bounded weight size, so a low-memory process can stream them one at a time.

A ``UNet2DModel`` forward is a sequence of layers: ``head`` (time embedding + ``conv_in``), the down blocks' layers
(``down{i}.{j}``: resnet j with its attention; ``down{i}.ds``: the downsampler), the mid block's (``mid.0``: the
first resnet; ``mid.{k}``: attention k-1 and resnet k), the up blocks' (``up{i}.{j}``: concatenate skip, resnet j,
attention j; ``up{i}.us``: the upsampler), and ``tail`` (norm, activation, ``conv_out``). A stage is a contiguous
run of layers; between stages the runner carries the hidden state, the time embedding and the stack of skip
connections. Stage signatures:

* first stage: ``(sample, timestep) -> (hidden, emb, *skips it produced)``;
* middle stage: ``(hidden, emb, *skips it consumes) -> (hidden, *skips it produced)``;
* last stage: ``(hidden, emb, *skips it consumes) -> (noise,)``.

The last stage is always the whole last up block plus ``tail``, so its ``hidden`` input is exactly DeepCache's
deep feature (see ``deepcache_modules``). Chaining the stages reproduces ``UNet2DModel.forward`` op for op (the
tests check it bit-exactly); the layers replay the blocks' own forwards for the block types listed in
``SUPPORTED_BLOCKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from edgediff.artifacts.deepcache_modules import _embed, _finish, check_deepcache_supported
from edgediff.errors import InvalidArgumentError

HEAD, TAIL = "head", "tail"
SUPPORTED_BLOCKS = ("DownBlock2D", "AttnDownBlock2D", "UNetMidBlock2D", "UpBlock2D", "AttnUpBlock2D")


@dataclass(frozen=True)
class Stage:
    """One stage of a plan.

    Attributes:
        layers: Its layers, in order (``head``, ``down0``... ``mid``, ``up0``... ``tail``).
        consumes: Skip tensors it takes from the runner's stack (the top ``consumes`` of them).
        produces: Skip tensors it pushes on the stack.
        params: Its parameter count.
    """

    layers: tuple[str, ...]
    consumes: int
    produces: int
    params: int

    @property
    def first(self) -> bool:
        """Starts from ``(sample, timestep)``."""
        return self.layers[0] == HEAD

    @property
    def last(self) -> bool:
        """Ends with the noise prediction."""
        return self.layers[-1] == TAIL

    def input_names(self) -> list[str]:
        """Graph input names."""
        if self.first:
            return ["sample", "timestep"]
        return ["hidden_in", "emb_in", *(f"skip_in{i}" for i in range(self.consumes))]

    def output_names(self) -> list[str]:
        """Graph output names."""
        if self.last:
            return ["noise_pred"]
        return ["hidden_out", *(["emb_out"] if self.first else []), *(f"skip_out{i}" for i in range(self.produces))]


def check_stageable(unet: Any) -> None:
    """Raise ``InvalidArgumentError`` unless the staged layers replay ``unet``'s blocks exactly."""
    check_deepcache_supported(unet)
    if unet.config.time_embedding_type == "fourier":
        raise InvalidArgumentError("staged UNets support positional time embeddings only")
    blocks = [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]
    for block in blocks:
        if type(block).__name__ not in SUPPORTED_BLOCKS:
            raise InvalidArgumentError(f"staged UNets support {', '.join(SUPPORTED_BLOCKS)}; "
                                       f"got {type(block).__name__}")
        if getattr(block, "s1", None) is not None:
            raise InvalidArgumentError("staged UNets do not support FreeU")


def _layers(unet: Any) -> list[tuple[str, list[torch.nn.Module]]]:
    """The layers of ``unet`` in forward order, with the modules whose parameters each holds."""
    layers: list[tuple[str, list[torch.nn.Module]]] = [(HEAD, [unet.time_embedding, unet.conv_in])]
    for i, block in enumerate(unet.down_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            layers.append((f"down{i}.r{j}", [resnet]))
            if attentions is not None:
                layers.append((f"down{i}.a{j}", [attentions[j]]))
        if block.downsamplers is not None:
            layers.append((f"down{i}.ds", [block.downsamplers]))
    if unet.mid_block is not None:
        mid = unet.mid_block
        layers.append(("mid.r0", [mid.resnets[0]]))
        for k, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:], strict=True)):
            if attn is not None:
                layers.append((f"mid.a{k}", [attn]))
            layers.append((f"mid.r{k + 1}", [resnet]))
    for i, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            layers.append((f"up{i}.r{j}", [resnet]))
            if attentions is not None:
                layers.append((f"up{i}.a{j}", [attentions[j]]))
        if block.upsamplers is not None:
            layers.append((f"up{i}.us", [block.upsamplers]))
    layers.append((TAIL, [unet.conv_norm_out, unet.conv_out]))
    return layers


def _parse(name: str) -> tuple[str, int, str]:
    """``"up2.r1"`` -> ``("up", 2, "r1")``; ``"mid.a0"`` -> ``("mid", 0, "a0")``."""
    block, sub = name.split(".")
    kind = block.rstrip("0123456789")
    return kind, int(block[len(kind):] or 0), sub


def _pushes_skip(unet: Any, name: str) -> bool:
    """Whether a layer's output joins the skip stack (a down block's layer output, after its attention if any)."""
    if name in (HEAD, TAIL):
        return name == HEAD
    kind, index, sub = _parse(name)
    if kind != "down":
        return False
    return sub == "ds" or sub.startswith("a") or getattr(unet.down_blocks[index], "attentions", None) is None


def _skip_counts(unet: Any, names: tuple[str, ...]) -> tuple[int, int]:
    """(consumed from outside, produced for outside) skips of a run of layers."""
    local = consumed = 0
    for name in names:
        if _pushes_skip(unet, name):
            local += 1
        elif name.startswith("up") and _parse(name)[2].startswith("r"):
            if local:
                local -= 1
            else:
                consumed += 1
    return consumed, local


def plan_stages(unet: Any, max_params: int | None = None) -> list[Stage]:
    """Cut ``unet`` into stages of at most ``max_params`` parameters (a larger single layer is a stage of its own).

    The last up block and ``tail`` always form the last stage (DeepCache's shallow end).

    Args:
        unet: A ``diffusers.UNet2DModel`` (see ``check_stageable``).
        max_params: Budget per stage; None means one stage per block-sized run (the largest block's size).
    """
    check_stageable(unet)
    layers = [(name, sum(p.numel() for m in modules for p in m.parameters())) for name, modules in _layers(unet)]
    if max_params is None:
        blocks: dict[str, int] = {}
        for name, size in layers:
            blocks[name.split(".")[0]] = blocks.get(name.split(".")[0], 0) + size
        max_params = max(blocks.values())
    last_up = f"up{len(unet.up_blocks) - 1}."
    groups: list[list[tuple[str, int]]] = [[]]
    in_last = False
    for name, size in layers:
        current = groups[-1]
        starts_last = name.startswith(last_up) and not in_last
        in_last = in_last or starts_last
        over = bool(current) and sum(s for _, s in current) + size > max_params and not in_last
        if current and (over or starts_last):
            groups.append([])
        groups[-1].append((name, size))
    stages = []
    for group in groups:
        names = tuple(name for name, _ in group)
        consumes, produces = _skip_counts(unet, names)
        stages.append(Stage(layers=names, consumes=consumes, produces=produces, params=sum(s for _, s in group)))
    return stages


class UNetStage(torch.nn.Module):
    """One stage as a tensor-in, tensor-out module (see the module docstring for its signature).

    Args:
        unet: The ``diffusers.UNet2DModel``.
        stage: Which layers.
    """

    def __init__(self, unet: Any, stage: Stage) -> None:
        super().__init__()
        self.unet = unet
        self.stage = stage

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: D102
        unet, stage = self.unet, self.stage
        timesteps = None
        if stage.first:
            hidden, timesteps, emb = _embed(unet, inputs[0], inputs[1])
            stack: tuple[torch.Tensor, ...] = ()
        else:
            hidden, emb, stack = inputs[0], inputs[1], tuple(inputs[2:])
        for name in stage.layers:
            if name == HEAD:
                hidden = unet.conv_in(hidden)
                stack += (hidden,)
            elif name == TAIL:  # positional time embeddings only: _finish does not read the timesteps
                return (_finish(unet, hidden, timesteps),)
            else:
                hidden, stack = _layer(unet, name, hidden, emb, stack)
        return (hidden, *((emb,) if stage.first else ()), *stack)


def _layer(unet: Any, name: str, hidden: torch.Tensor, emb: torch.Tensor,
           stack: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Replay one layer of a block's forward (diffusers' ``DownBlock2D``... ``AttnUpBlock2D``, in their order)."""
    kind, index, sub = _parse(name)
    if kind == "mid":
        mid = unet.mid_block
        if sub.startswith("a"):
            return mid.attentions[int(sub[1:])](hidden, temb=emb), stack
        return mid.resnets[int(sub[1:])](hidden, emb), stack
    block = (unet.down_blocks if kind == "down" else unet.up_blocks)[index]
    if sub == "ds":
        for downsampler in block.downsamplers:
            resnet_type = getattr(block, "downsample_type", None) == "resnet"
            hidden = downsampler(hidden, temb=emb) if resnet_type else downsampler(hidden)
    elif sub == "us":
        for upsampler in block.upsamplers:
            resnet_type = getattr(block, "upsample_type", None) == "resnet"
            hidden = upsampler(hidden, temb=emb) if resnet_type else upsampler(hidden, None)
    elif sub.startswith("a"):
        hidden = block.attentions[int(sub[1:])](hidden)
    elif kind == "down":
        hidden = block.resnets[int(sub[1:])](hidden, emb)
    else:  # an up block's resnet takes the top skip
        hidden = block.resnets[int(sub[1:])](torch.cat([hidden, stack[-1]], dim=1), emb)
        stack = stack[:-1]
    if _pushes_skip(unet, name):
        stack = (*stack, hidden)
    return hidden, stack


StageCall = Callable[[int, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]
"""``(stage index, inputs) -> outputs`` of one backend."""


def run_stages(stages: list[Stage], call: StageCall, sample: torch.Tensor,
               timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain the stages through ``call``; returns ``(noise, feature)``.

    The feature is the last stage's hidden input: DeepCache's deep feature.
    """
    stack: list[torch.Tensor] = []
    hidden = emb = sample
    for index, stage in enumerate(stages):
        if stage.first:
            inputs: tuple[torch.Tensor, ...] = (sample, timestep)
        else:
            consumed = stack[len(stack) - stage.consumes:]
            del stack[len(stack) - stage.consumes:]
            inputs = (hidden, emb, *consumed)
        outputs = call(index, inputs)
        if stage.last:
            return outputs[0], hidden
        hidden = outputs[0]
        if stage.first:
            emb = outputs[1]
        stack.extend(outputs[2 if stage.first else 1:])
    raise ValueError("the stage plan has no last stage")
