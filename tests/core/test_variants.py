"""Every available variant against torch-fp32 on the tiny preset, same seed (tolerances are each variant's own)."""

import numpy as np
import pytest

from edgediff.errors import InvalidArgumentError, UnknownVariantError, VariantUnavailableError
from edgediff.variants import BASELINE, BuildOptions, all_variants, build_variant, get_variant, parse_variant_list

STEPS = 6
FAST = [pytest.param(v.name, marks=pytest.mark.gpu) if v.device == "cuda" else v.name  # CUDA-only: gpu tests
        for v in all_variants() if v.name != "compile"]


@pytest.fixture(scope="module")
def baseline(tiny_components):
    return build_variant(BASELINE, tiny_components).pipeline(tiny_components)(seed=7, steps=STEPS, batch=2)


def _rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _check(name, components, baseline):
    variant = get_variant(name)
    avail = variant.availability()
    if not avail.ok:
        pytest.skip(f"{name}: {avail.reason}")
    result = build_variant(name, components).pipeline(components)(seed=7, steps=STEPS, batch=2)
    assert result.images.shape == baseline.images.shape == (2, 64, 64, 3)
    assert result.images.dtype == np.uint8
    err = _rel_err(result.latents, baseline.latents)
    # Stated tolerances: fp32 variants 1e-4 relative L2 error of the final latents, fp16 5e-2, bf16 1e-1.
    assert err <= max(variant.tolerance, 1e-6), f"{name}: relative latent error {err:.2e} > {variant.tolerance:.0e}"
    return result


@pytest.mark.parametrize("name", FAST)
def test_variant_matches_baseline(name, tiny_components, baseline):
    _check(name, tiny_components, baseline)


@pytest.mark.slow
def test_compile_matches_baseline(tiny_components, baseline):
    _check("compile", tiny_components, baseline)


def test_cuda_only_variants_say_why_here():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for name in ("torch-fp16", "jit-fp16", "trt-fp16", "onnx-fp16"):
        avail = get_variant(name).availability()
        assert not avail.ok
        assert "CUDA" in avail.reason


def test_registry_errors(tiny_components):
    with pytest.raises(UnknownVariantError, match="choose one of"):
        get_variant("tensorrt-int4")
    with pytest.raises(UnknownVariantError):
        parse_variant_list("torch-fp32,nope")
    assert parse_variant_list("all")[0] == BASELINE
    unavailable = next((v for v in all_variants() if not v.availability().ok), None)
    if unavailable is not None:
        with pytest.raises(VariantUnavailableError, match=unavailable.availability().reason[:20]):
            build_variant(unavailable.name, tiny_components)


def test_deepcache_refused_where_unsupported(tiny_components, monkeypatch):
    from edgediff.variants import Availability, Variant, registry

    class NoDeepCache(Variant):  # every available backend supports DeepCache now; TensorRT does not, but needs CUDA
        name, backend, precision, device, description = "nodeepcache-fp32", "test", "fp32", "cpu", "test double"

        def availability(self):
            return Availability.yes()

        def build(self, components, options):
            raise AssertionError("must be refused before building")

    monkeypatch.setitem(registry._VARIANTS, NoDeepCache.name, NoDeepCache())
    with pytest.raises(InvalidArgumentError, match="--deepcache"):
        build_variant(NoDeepCache.name, tiny_components, BuildOptions(deepcache_interval=3))


def test_exports_are_cached(tiny_components):
    from edgediff.artifacts.build import build_artifact

    if not get_variant("onnx-fp32").availability().ok:
        pytest.skip("onnxruntime missing")
    first_dir, _first = build_artifact(tiny_components, "unet", "onnx-fp32")
    second_dir, second = build_artifact(tiny_components, "unet", "onnx-fp32")
    assert first_dir == second_dir
    assert second["cached"] is True
    assert second["ops_before"] and second["ops_after"]
    assert sum(second["ops_after"].values()) <= sum(second["ops_before"].values())
