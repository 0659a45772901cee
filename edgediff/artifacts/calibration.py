"""Calibration inputs for post-training quantization, taken from the pipeline's own DDIM trajectories.

The fp32 PyTorch UNet (the baseline) runs the real ``LDMPipeline`` on a few seeds that the benchmarks never use;
every UNet call's inputs are recorded, with the deep feature DeepCache caches, so each step of each trajectory is one
calibration sample for ``unet``, ``unet-full`` and ``unet-shallow``. The decoder is calibrated on the final latents
and on the clean-latent predictions (x0) of the last steps, scaled as the pipeline scales them before decoding.
"""

from __future__ import annotations

import logging
import sys
import time
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
    if key not in _MEMO:
        _MEMO[key] = _record(components, SEEDS, components.preset.default_steps, "ddim", "int8 calibration (UNet)")
    return _MEMO[key]


DECODER_SEEDS = tuple(range(1000, 1004))
"""Trajectories of the decoder's own calibration set (``decoder_calibration_set``)."""
DECODER_SCHEDULER, DECODER_STEPS = "dpmpp", 10
"""The decoder only sees the end of a trajectory, so its calibration trajectories are sampled with DPM-Solver++ at
10 steps (the latents it decodes in use): a quarter of the UNet calls of the UNet's set, which keeps the first
fast image of a fresh machine (``openvino-fp32-int8dec``) minutes away instead of a quarter of an hour."""


def decoder_calibration_config(model: ModelSpec) -> dict[str, object]:
    """The settings of ``decoder_calibration_set`` (the cache key of int8 decoders)."""
    return {"seeds": list(DECODER_SEEDS), "scheduler": DECODER_SCHEDULER, "steps": DECODER_STEPS,
            "decoder_last_steps": DECODER_LAST_STEPS}


_DECODER_MEMO: dict[str, CalibrationSet] = {}


def decoder_calibration_set(components: ModelSpec) -> CalibrationSet:
    """The decoder's calibration set: ``DECODER_SEEDS`` short DPM-Solver++ trajectories (memoised per model)."""
    key = components.fingerprint()
    if key not in _DECODER_MEMO:
        _DECODER_MEMO[key] = _record(components, DECODER_SEEDS, DECODER_STEPS, DECODER_SCHEDULER,
                                     "int8 calibration (decoder)")
    return _DECODER_MEMO[key]


def _record(components: ModelSpec, seeds: tuple[int, ...], steps: int, scheduler: str, what: str) -> CalibrationSet:
    """Run the fp32 UNet over ``seeds`` and record every UNet call's and the decoder's inputs.

    Prints one progress line per trajectory with the estimated time left (calibration takes minutes on a CPU).
    """
    recorder = _Recorder(components)
    pipeline = LDMPipeline(recorder, recorder, components.scheduler_config, components.preset.latent_shape,
                           components.scaling_factor, scheduler=scheduler)
    vqdec: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for index, seed in enumerate(seeds, start=1):
        recorder.x0.clear()
        pipeline(seed=seed, steps=steps)
        vqdec.extend(x / components.scaling_factor for x in recorder.x0[-DECODER_LAST_STEPS:-1])
        vqdec.append(recorder.final[-1])
        elapsed = time.perf_counter() - t0
        eta = elapsed / index * (len(seeds) - index)
        print(f"{what}, {components.preset.name}: trajectory {index}/{len(seeds)} ({scheduler} {steps} steps) in "
              f"{elapsed:.0f} s, about {eta:.0f} s left for the trajectories", file=sys.stderr, flush=True)
    return CalibrationSet(unet=recorder.unet_samples, vqdec=vqdec, steps=steps, seeds=seeds)


def part_samples(cset: CalibrationSet, part: str) -> list[tuple[torch.Tensor, ...]]:
    """The calibration inputs of an artifact part, each a tuple in the part's input order."""
    if part in ("unet", "unet-full"):
        return [(sample, timestep) for sample, timestep, _ in cset.unet]
    if part == "unet-shallow":
        return list(cset.unet)
    if part == "vqdec":
        return [(latents,) for latents in cset.vqdec]
    raise ValueError(f"no calibration inputs for part {part!r}")
