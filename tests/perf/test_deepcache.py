"""DeepCache: the full module is the UNet exactly, interval 1 is no cache exactly, larger intervals stay close."""

from __future__ import annotations

import pytest
import torch

from edgediff.artifacts.build import UNET_FULL, UNET_SHALLOW, part_inputs, part_module
from edgediff.artifacts.deepcache_modules import UNetFullWithFeature, UNetShallow, feature_shape
from edgediff.errors import InvalidArgumentError
from edgediff.variants import BASELINE, BuildOptions, build_variant, get_variant
from edgediff.variants.deepcache import DeepCacheUNet
from tests.perf.conftest import SEED, STEPS, rel_err, skip_unless_available

# Stated tolerance of DeepCache itself: relative L2 error of the final latents vs the uncached run of the same
# backend, on the tiny preset (synthetic weights), 8 steps. Measured: 1.0e-2 at interval 2, 1.3e-2 at 3.
DEEPCACHE_TOLERANCE = 5e-2


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn((2, 3, 16, 16), generator=generator), torch.tensor([981, 21])


def test_full_module_reproduces_unet_bit_exactly(tiny_components, inputs):
    sample, timestep = inputs
    with torch.no_grad():
        reference = tiny_components.unet(sample, timestep, return_dict=False)[0]
        noise, feature = UNetFullWithFeature(tiny_components.unet)(sample, timestep)
    assert torch.equal(noise, reference)
    assert tuple(feature.shape) == feature_shape(tiny_components.preset.unet_config, batch=2)


def test_shallow_branch_with_a_fresh_feature_is_the_full_unet(tiny_components, inputs):
    sample, timestep = inputs
    with torch.no_grad():
        noise, feature = UNetFullWithFeature(tiny_components.unet)(sample, timestep)
        shallow = UNetShallow(tiny_components.unet)(sample, timestep, feature)
    assert torch.equal(shallow, noise)


def test_parts_are_registered_for_export(tiny_components):
    full_inputs = part_inputs(tiny_components, UNET_FULL)
    shallow_inputs = part_inputs(tiny_components, UNET_SHALLOW)
    assert len(full_inputs) == 2 and len(shallow_inputs) == 3
    with torch.no_grad():
        _, feature = part_module(tiny_components, UNET_FULL)(*full_inputs)
    assert feature.shape == shallow_inputs[2].shape


def _runner_result(components, interval):
    full = UNetFullWithFeature(components.unet).eval()
    shallow = UNetShallow(components.unet).eval()
    built = build_variant(BASELINE, components)
    built.unet = DeepCacheUNet(lambda s, t: full(s, t), lambda s, t, f: shallow(s, t, f), interval)
    return built.pipeline(components)(seed=SEED, steps=STEPS)


def test_interval_1_equals_no_cache_exactly(tiny_components, baseline_result):
    result = _runner_result(tiny_components, 1)
    assert torch.equal(result.latents, baseline_result.latents)
    assert (result.images == baseline_result.images).all()


def test_interval_3_is_close_to_no_cache(tiny_components, baseline_result):
    result = _runner_result(tiny_components, 3)
    err = rel_err(result.latents, baseline_result.latents)
    assert 0 < err <= DEEPCACHE_TOLERANCE


def test_runner_calls_full_every_interval_and_keeps_state_per_generation():
    calls: list[str] = []

    def full(sample, timestep):
        calls.append("full")
        return sample + 1, sample * 0 + timestep.float()[:, None, None, None]

    def shallow(sample, timestep, feature):
        calls.append("shallow")
        return feature

    runner = DeepCacheUNet(full, shallow, 3)
    first, second = runner.sequence(), runner.sequence()
    x = torch.zeros((1, 1, 2, 2))
    outputs = [first(x, torch.tensor([t])) for t in (900, 800, 700, 600)]
    assert calls == ["full", "shallow", "shallow", "full"]
    assert float(outputs[1].max()) == 900.0  # the cached feature of step 0
    calls.clear()
    second(x, torch.tensor([5]))  # a new generation starts with a full step, whatever the other one cached
    assert calls == ["full"]


def test_invalid_interval_is_refused(tiny_components):
    with pytest.raises(InvalidArgumentError, match="--deepcache"):
        DeepCacheUNet(lambda s, t: (s, s), lambda s, t, f: s, 0)
    with pytest.raises(InvalidArgumentError, match="--deepcache"):
        build_variant(BASELINE, tiny_components, BuildOptions(deepcache_interval=-2))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch-bf16", "jit-fp32", "onnx-fp32", "openvino-fp32", "openvino-bf16"])
def test_every_backend_supports_deepcache(name, tiny_components):
    """Each backend's DeepCache run stays within its own tolerance of torch-fp32's DeepCache run."""
    skip_unless_available(name)
    variant = get_variant(name)
    assert variant.supports_deepcache
    options = BuildOptions(deepcache_interval=3)
    reference = build_variant(BASELINE, tiny_components, options).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    result = build_variant(name, tiny_components, options).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert rel_err(result.latents, reference.latents) <= max(variant.tolerance, 1e-6)
