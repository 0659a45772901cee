"""torch-*-lowmem: compact weights file, streamed layers reproduce torch-fp32, tolerances on the tiny preset.

Peak memory is measured by ``benchmarks/lowmem_peak.py`` in a fresh process (benchmarks/RESULTS.md), not here.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgediff.artifacts.torch_compact import CompactWeights, build_compact, find_compact, quantize_per_channel
from edgediff.models.spec import ModelSpec
from edgediff.variants import BuildOptions, build_variant, get_variant
from edgediff.variants.torch_lowmem import TOLERANCES, TorchLowMemoryVariant
from tests.perf.conftest import SEED, STEPS, rel_err


def test_compact_file_is_safetensors_and_close_to_the_weights(tiny_components):
    from safetensors import safe_open

    state = {f"unet.{k}": v for k, v in tiny_components.unet.state_dict().items()}
    for dtype in ("fp32", "int8"):
        folder, report = build_compact(tiny_components, dtype)
        path = folder / "weights.safetensors"
        with safe_open(str(path), framework="pt") as fh:  # the reference reader accepts the file as written
            keys = set(fh.keys())
        assert set(state) <= keys and not any(k.startswith("vqvae.encoder.") for k in keys)
        weights = CompactWeights(path)
        assert weights.dtype == dtype and report["bytes"] == path.stat().st_size
        for name, value in state.items():
            got = weights.get(name)
            assert got.dtype == torch.float32 and got.shape == value.shape
            if dtype == "fp32":
                assert torch.equal(got, value), name
        if dtype == "int8":
            assert report["int8_tensors"] > 0
        weights.close()


def test_int8_per_channel_error_is_half_a_step():
    weight = torch.randn(16, 8, 3, 3) * torch.logspace(-3, 1, 16)[:, None, None, None]
    q, scale = quantize_per_channel(weight)
    back = q.float() * scale[:, None, None, None]
    assert q.dtype == torch.int8 and scale.shape == (16,)
    assert torch.all((back - weight).abs() <= scale[:, None, None, None] / 2 + 1e-7)


def test_mapped_pages_are_dropped_after_materialising(tiny_components):
    folder, _ = build_compact(tiny_components, "int8")
    path = folder / "weights.safetensors"
    weights = CompactWeights(path)
    for name in weights.names():
        weights.get(name)
    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        pytest.skip("no /proc/self/smaps on this system")
    text = smaps.read_text()
    section = text[text.index(str(path)):]
    rss_kb = int(re.search(r"\nRss:\s+(\d+) kB", section).group(1))
    assert rss_kb * 1024 < path.stat().st_size / 4, f"{rss_kb} kB of the {path.stat().st_size} B file stay mapped"
    weights.close()


def test_fp32_storage_reproduces_torch_fp32_bit_exactly(tiny_components, baseline_result):
    built = TorchLowMemoryVariant("fp32").build(tiny_components, BuildOptions())
    result = built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert torch.equal(result.latents, baseline_result.latents)
    assert np.array_equal(result.images, baseline_result.images)


@pytest.mark.parametrize("name", ["torch-int8-lowmem", "torch-int8-lowmem-dc3"])
def test_variant_within_its_tolerance_of_torch_fp32(tiny_components, baseline_result, name):
    variant = get_variant(name)
    spec = variant.load_model(tiny_components.preset, seed=0)  # from the cache: no torch modules built
    assert isinstance(spec, ModelSpec) and spec.fingerprint() == tiny_components.fingerprint()
    result = build_variant(name, spec, BuildOptions()).pipeline(spec)(seed=SEED, steps=STEPS)
    assert rel_err(result.latents, baseline_result.latents) <= variant.tolerance
    diff = np.abs(result.images.astype(np.int16) - baseline_result.images.astype(np.int16))
    assert diff.mean() < 2.0  # mean absolute pixel error, of 255


def test_tolerances_order_by_storage_precision():
    assert TOLERANCES["fp32"] < TOLERANCES["int8"]


def test_cache_finds_the_file_by_fingerprint(tiny_components):
    build_compact(tiny_components, "int8")
    found = find_compact(tiny_components.fingerprint(), tiny_components.preset.name, "int8")
    assert found is not None and found[0].is_file() and found[2].preset.name == tiny_components.preset.name
    assert find_compact("0" * 64, tiny_components.preset.name, "int8") is None
