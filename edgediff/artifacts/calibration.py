"""Calibration inputs for post-training quantization, taken from the pipeline's own DDIM trajectories.

The fp32 PyTorch UNet (the baseline) runs the real ``LDMPipeline`` on a few seeds that the benchmarks never use;
every UNet call's inputs are recorded, with the deep feature DeepCache caches, so each step of each trajectory is one
calibration sample for ``unet``, ``unet-full`` and ``unet-shallow``. The decoder is calibrated on the final latents
and on the clean-latent predictions (x0) of the last steps, scaled as the pipeline scales them before decoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from edgediff.artifacts.deepcache_modules import UNetFullWithFeature
from edgediff.models.spec import ModelSpec
from edgediff.pipeline import LDMPipeline, UNetFn

logger = logging.getLogger(__name__)

SEEDS = tuple(range(1000, 1008))
"""Trajectory seeds: far from the seeds the benchmarks and tests generate with (0, 1, 2...). Eight trajectories:
two left the small digits UNet's int8 ranges too narrow (see ``openvino_int8.QUANTIZATION``)."""
DECODER_LAST_STEPS = 4
"""Decoder samples per trajectory: the final latents and the x0 predictions of the steps before the last."""


@dataclass
class CalibrationSet:
    """Recorded inputs, in pipeline order.

    Attributes:
        unet: ``(sample, timestep, feature)`` per UNet call (batch 1; ``feature`` is the deep feature of that call).
        vqdec: Scaled latents as the decoder receives them (batch 1).
        steps: DDIM steps of each trajectory.
        seeds: Trajectory seeds.
    """

    unet: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    vqdec: list[torch.Tensor]
    steps: int
    seeds: tuple[int, ...]

    def describe(self) -> dict[str, object]:
        """What the calibration was, for artifact reports and cache keys."""
        return {"seeds": list(self.seeds), "steps": self.steps, "unet_samples": len(self.unet),
                "vqdec_samples": len(self.vqdec)}


def calibration_config(model: ModelSpec) -> dict[str, object]:
    """The settings that determine the calibration set (part of the int8 artifacts' cache keys)."""
    return {"seeds": list(SEEDS), "steps": model.preset.default_steps, "decoder_last_steps": DECODER_LAST_STEPS}


class _Recorder:
    """A UNet runner and decoder that record their inputs (the decoder returns a blank image)."""

    def __init__(self, components: ModelSpec) -> None:
        self.module = UNetFullWithFeature(components.unet).eval()
        from diffusers import DDIMScheduler

        self.alphas_cumprod = DDIMScheduler.from_config(components.scheduler_config).alphas_cumprod
        self.scaling_factor = components.scaling_factor
        self.unet_samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.x0: list[torch.Tensor] = []
        self.final: list[torch.Tensor] = []
        self.image_size = components.preset.image_size

    def sequence(self) -> UNetFn:
        def run(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                noise, feature = self.module(sample, timestep)
            self.unet_samples.append((sample.clone(), timestep.clone(), feature))
            alpha = self.alphas_cumprod[int(timestep[0])]
            self.x0.append((sample - (1 - alpha).sqrt() * noise) / alpha.sqrt())
            return noise

        return run

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        self.final.append(latents.clone())
        return torch.zeros((latents.shape[0], 3, self.image_size, self.image_size))


_MEMO: dict[str, CalibrationSet] = {}


def calibration_set(components: ModelSpec) -> CalibrationSet:
    """Record the calibration set of ``components`` (memoised per model fingerprint within the process)."""
    key = components.fingerprint()
    if key in _MEMO:
        return _MEMO[key]
    steps = components.preset.default_steps
    recorder = _Recorder(components)
    pipeline = LDMPipeline(recorder, recorder, components.scheduler_config, components.preset.latent_shape,
                           components.scaling_factor)
    vqdec: list[torch.Tensor] = []
    for seed in SEEDS:
        recorder.x0.clear()
        pipeline(seed=seed, steps=steps)
        vqdec.extend(x / components.scaling_factor for x in recorder.x0[-DECODER_LAST_STEPS:-1])
        vqdec.append(recorder.final[-1])
        logger.info("calibration: trajectory of seed %d recorded (%d steps)", seed, steps)
    result = CalibrationSet(unet=recorder.unet_samples, vqdec=vqdec, steps=steps, seeds=SEEDS)
    _MEMO[key] = result
    return result


def part_samples(cset: CalibrationSet, part: str) -> list[tuple[torch.Tensor, ...]]:
    """The calibration inputs of an artifact part, each a tuple in the part's input order."""
    if part in ("unet", "unet-full"):
        return [(sample, timestep) for sample, timestep, _ in cset.unet]
    if part == "unet-shallow":
        return list(cset.unet)
    if part == "vqdec":
        return [(latents,) for latents in cset.vqdec]
    raise ValueError(f"no calibration inputs for part {part!r}")
