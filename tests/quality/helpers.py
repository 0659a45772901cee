"""Helpers shared by the quality tests."""

from __future__ import annotations

from edgediff.quality.bench_hook import QUALITY_SAMPLES, QUALITY_SEED
from edgediff.quality.samples import DEFAULT_BATCH

GATE_SAMPLES = QUALITY_SAMPLES
"""Images per variant in the gate tests: the bench's 64 (seeds 0-3 x 16 images, 20 DDIM steps), so a test verdict is
the bench's verdict. (32 images make the digits-FD too noisy for a 10 % limit.)"""
GATE_BATCH = DEFAULT_BATCH


def generate(components, variant: str, samples: int = GATE_SAMPLES, steps: int = 20):
    """``samples`` uint8 images of ``variant`` on the gate seeds."""
    from edgediff.quality.samples import sample_images
    from edgediff.variants import BuildOptions, build_variant

    built = build_variant(variant, components, BuildOptions(threads=2))
    return sample_images(built.pipeline(components), samples=samples, steps=steps, seed=QUALITY_SEED,
                         batch=GATE_BATCH)
