"""torch-bf16 runs channels_last (measured faster on the CPU) without touching the shared fp32 components."""

from __future__ import annotations

import torch

from edgediff.variants import BASELINE, build_variant, get_variant
from tests.perf.conftest import SEED, STEPS, rel_err, skip_unless_available


def test_bf16_channels_last_leaves_the_baseline_untouched(tiny_components, baseline_result):
    skip_unless_available("torch-bf16")  # CPUs without native bf16 do not offer it (emulated: slower than fp32)
    built = build_variant("torch-bf16", tiny_components)
    assert built.info["channels_last"] is True
    result = built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert result.latents.is_contiguous()
    assert rel_err(result.latents, baseline_result.latents) <= get_variant("torch-bf16").tolerance
    assert tiny_components.unet.conv_in.weight.is_contiguous()  # the shared modules keep their layout
    again = build_variant(BASELINE, tiny_components).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert torch.equal(again.latents, baseline_result.latents)
