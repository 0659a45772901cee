"""DeepCache for any backend: a stateful UNet runner over a "full" and a "shallow" function.

Every ``cache_interval`` steps (steps 0, N, 2N, ...) the runner calls the full UNet, which returns the noise and the
deep feature; in between it calls only the shallow branch with the cached feature (see
``edgediff.artifacts.deepcache_modules``). The cache lives in the callable that ``sequence()`` returns, one per
generation, so concurrent generations never share features. Interval 1 calls the full UNet at every step and gives
exactly the uncached result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edgediff.errors import InvalidArgumentError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.pipeline import UNetFn, UNetRunner
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, PartFn, StatelessUNet, Variant

FULL_PART = "unet-full"
"""Artifact part of the full UNet that also returns the deep feature."""
SHALLOW_PART = "unet-shallow"
"""Artifact part of the shallow branch that takes the cached deep feature."""

DEEPCACHE_TOLERANCE = 5e-2
"""Relative latent error DeepCache may add to a variant's own tolerance (tiny preset, interval 3: 1.3e-2 measured)."""

FullFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(sample, timestep) -> (noise, feature)``."""
ShallowFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(sample, timestep, feature) -> noise``."""


def check_interval(interval: int) -> int:
    """Return ``interval`` if it is an integer >= 1, else raise ``InvalidArgumentError`` naming ``--deepcache``."""
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise InvalidArgumentError(f"--deepcache must be an integer >= 1 (1 = off), got {interval!r}")
    return interval


class DeepCacheUNet:
    """A ``UNetRunner`` that recomputes the deep features every ``interval`` steps.

    Args:
        full: The full UNet returning ``(noise, feature)``.
        shallow: The shallow branch ``(sample, timestep, feature) -> noise``.
        interval: Full steps happen at step indices 0, interval, 2*interval, ...
    """

    def __init__(self, full: FullFn, shallow: ShallowFn, interval: int) -> None:
        self.full = full
        self.shallow = shallow
        self.interval = check_interval(interval)

    def sequence(self) -> UNetFn:
        """A fresh callable for one generation, with its own step counter and feature cache."""
        full, shallow, interval = self.full, self.shallow, self.interval
        step = 0
        cached: torch.Tensor | None = None

        def run(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            nonlocal step, cached
            fresh = cached is None or step % interval == 0 or cached.shape[0] != sample.shape[0]
            step += 1
            if fresh:
                noise, cached = full(sample, timestep)
                return noise
            return shallow(sample, timestep, cached)

        return run


def unet_runner(part_fn: Callable[[str], Callable[..., object]], interval: int) -> UNetRunner:
    """The UNet runner of a variant: plain when ``interval`` is 1, else DeepCache over the two DeepCache parts.

    Args:
        part_fn: Builds the backend's function for an artifact part (``"unet"``, ``FULL_PART``, ``SHALLOW_PART``);
            the full part's function returns ``(noise, feature)``.
        interval: ``BuildOptions.deepcache_interval``.
    """
    if check_interval(interval) == 1:
        return StatelessUNet(part_fn("unet"))  # type: ignore[arg-type]
    return DeepCacheUNet(part_fn(FULL_PART), part_fn(SHALLOW_PART), interval)  # type: ignore[arg-type]


class DeepCacheVariant(Variant):
    """A registered combination: ``base`` with DeepCache at a fixed interval, named ``<base>-dc<interval>``.

    DeepCache is an option of every variant (``--deepcache N``); registering a combination lets benchmarks compare
    it with the uncached baseline in one run, and lets a server name it as one variant.

    Args:
        base: The variant to run with DeepCache.
        interval: Full UNet every ``interval`` steps.
    """

    supports_deepcache = True

    def __init__(self, base: Variant, interval: int) -> None:
        if not base.supports_deepcache or check_interval(interval) < 2:
            raise ValueError(f"{base.name} with DeepCache interval {interval}: not a DeepCache combination")
        self.base = base
        self.interval = interval
        self.name = f"{base.name}-dc{interval}"
        self.backend, self.precision, self.device = base.backend, base.precision, base.device
        self.description = f"{base.description}; DeepCache, full UNet every {interval} steps"
        self.tolerance = base.tolerance + DEEPCACHE_TOLERANCE

    def availability(self) -> Availability:  # noqa: D102
        return self.base.availability()

    def _options(self, options: BuildOptions) -> BuildOptions:
        if options.deepcache_interval not in (1, self.interval):
            raise InvalidArgumentError(f"--deepcache: variant {self.name} runs DeepCache every {self.interval} steps; "
                                       f"got --deepcache {options.deepcache_interval} (use 1 or {self.interval})")
        return dataclasses.replace(options, deepcache_interval=self.interval)

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        built = self.base.build(model, self._options(options))
        built.name = self.name
        return built

    def prepare(self, model: ModelSpec, options: BuildOptions) -> dict[str, Any]:  # noqa: D102
        return self.base.prepare(model, self._options(options))

    def gate_settings(self) -> dict[str, Any]:  # noqa: D102
        return self.base.gate_settings()

    def load_model(self, preset: ModelPreset, weights: str | None = None, *, seed: int = 0) -> ModelSpec:  # noqa: D102
        return self.base.load_model(preset, weights, seed=seed)

    def load_part(  # noqa: D102
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cpu"
    ) -> PartFn:
        return self.base.load_part(part, artifact, options, preset=preset, device=device)
