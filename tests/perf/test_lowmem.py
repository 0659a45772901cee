"""openvino-int8-lowmem: staged UNet reproduces the UNet, runs from a spec alone, tiled decode close to untiled."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from edgediff.artifacts.deepcache_modules import UNetFullWithFeature
from edgediff.artifacts.modules import DecoderModule
from edgediff.artifacts.unet_stages import UNetStage, plan_stages, run_stages
from edgediff.models import load_components
from edgediff.models.spec import ModelSpec
from edgediff.models.weights import weights_origin
from edgediff.pipeline import to_uint8_images
from edgediff.variants import BuildOptions, build_variant, get_variant
from edgediff.variants.tiled_decode import TiledDecoder, tile_starts
from tests.perf.conftest import SEED, STEPS, rel_err, skip_unless_available

NAME = "openvino-int8-lowmem"


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("max_params", [None, 1, 60_000, 10**9])
def test_stages_chain_to_the_unet_bit_exactly(tiny_components, max_params):
    unet = tiny_components.unet
    stages = plan_stages(unet, max_params)
    assert stages[0].first and stages[-1].last and stages[-1].layers[0] == f"up{len(unet.up_blocks) - 1}.r0"
    modules = [UNetStage(unet, stage) for stage in stages]
    sample, timestep = torch.randn((2, 3, 16, 16)), torch.tensor([999, 1])
    with torch.no_grad():
        noise, feature = run_stages(stages, lambda i, x: modules[i](*x), sample, timestep)
        ref_noise, ref_feature = UNetFullWithFeature(unet)(sample, timestep)
    assert torch.equal(noise, ref_noise) and torch.equal(feature, ref_feature)


def test_celebahq_stage_plan_bounds_resident_weights():
    from diffusers import UNet2DModel

    from edgediff.artifacts.lowmem import STAGE_MAX_PARAMS
    from edgediff.models import get_preset

    with torch.device("meta"):
        unet = UNet2DModel(**get_preset("celebahq-256").unet_config)
    stages = plan_stages(unet, STAGE_MAX_PARAMS)
    assert sum(s.params for s in stages) == sum(p.numel() for p in unet.parameters())
    assert max(s.params for s in stages) <= STAGE_MAX_PARAMS  # int8: at most 25 MB of weights per stage
    assert sum(s.consumes for s in stages) == sum(s.produces for s in stages)


def test_decoder_trunk_and_tail_are_the_decoder_bit_exactly(tiny_components):
    from edgediff.artifacts.decoder_parts import DecoderTail, DecoderTrunk

    latents = torch.randn((2, *tiny_components.preset.latent_shape))
    with torch.no_grad():
        split = DecoderTail(tiny_components.vqvae)(DecoderTrunk(tiny_components.vqvae)(latents))
        whole = DecoderModule(tiny_components.vqvae)(latents)
    assert torch.equal(split, whole)


def test_tile_starts_cover_evenly():
    assert tile_starts(64, 40, 8) == [0, 24]
    assert tile_starts(64, 32, 8) == [0, 16, 32]
    assert tile_starts(16, 16, 2) == [0]
    for size, tile, overlap in [(64, 40, 8), (17, 10, 2), (100, 33, 5)]:
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_tiled_decoder_blends_to_the_exact_image_for_a_local_decoder():
    """With a decoder that is purely local (nearest upsampling), tiling and blending change nothing."""
    decode = lambda z: torch.nn.functional.interpolate(z, scale_factor=4)  # noqa: E731
    latents = torch.randn((2, 3, 20, 20))
    tiled = TiledDecoder(decode, tile=12, min_overlap=3, factor=4)(latents)
    assert torch.allclose(tiled, decode(latents), atol=1e-6)


# Stated tolerance of tiled decoding itself (the decoder tail normalises over each tile; the trunk, with the global
# attention, runs whole): PSNR of the tiled image vs the untiled image of the same decoder, on the tiny preset's
# synthetic (random) weights, tile 8 of 16 latent pixels. Measured 22.7 dB (fp32) and 22.6 dB (int8). Random weights
# are a harsh case; the trained digits preset is where the quality gate judges.
TILED_PSNR_DB = 18.0


def test_tiled_torch_decoder_vs_untiled(tiny_components, baseline_result, monkeypatch):
    import edgediff.variants.openvino_lowmem as lowmem
    from edgediff.artifacts.decoder_parts import DecoderTail, DecoderTrunk

    monkeypatch.setattr(lowmem, "DECODER_MIN_TILE", 0)
    tile, overlap = lowmem.decoder_tile(tiny_components.preset.latent_shape[1], lowmem.DECODER_TILE_FRACTION)
    assert (tile, overlap) == (9, 2)
    latents = baseline_result.latents / tiny_components.scaling_factor
    with torch.no_grad():
        untiled = to_uint8_images(DecoderModule(tiny_components.vqvae)(latents))
        hidden = DecoderTrunk(tiny_components.vqvae)(latents)
        tail = DecoderTail(tiny_components.vqvae)
        tiled = to_uint8_images(TiledDecoder(tail, tile=tile, min_overlap=overlap, factor=4)(hidden))
    assert psnr_db(tiled, untiled) >= TILED_PSNR_DB


@pytest.fixture(scope="module")
def lowmem_built(tiny_components):
    """The low-memory variant on tiny, tiling its 16 x 16 latents (the default decodes latents that small whole)."""
    import edgediff.variants.openvino_lowmem as lowmem

    skip_unless_available(NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lowmem, "DECODER_MIN_TILE", 0)
        return build_variant(NAME, tiny_components, BuildOptions(deepcache_interval=3))


def test_small_latents_decode_whole():
    from edgediff.variants.openvino_lowmem import DECODER_TILE_FRACTION, decoder_tile

    assert decoder_tile(8, DECODER_TILE_FRACTION) is None  # digits
    assert decoder_tile(16, DECODER_TILE_FRACTION) is None  # tiny
    assert decoder_tile(64, DECODER_TILE_FRACTION) == (36, 8)  # celebahq-256: 2 x 2 tiles
    assert tile_starts(64, 36, 8) == [0, 28]


@pytest.mark.slow
def test_lowmem_decodes_like_its_untiled_twin(tiny_components, baseline_result, lowmem_built, monkeypatch):
    """Same latents through the low-memory decoder tiled and whole (the same int8 artifact, compiled whole)."""
    import edgediff.variants.openvino_lowmem as lowmem

    latents = baseline_result.latents / tiny_components.scaling_factor
    tiled = lowmem_built.decoder(latents)
    assert lowmem_built.info["decoder_tile"] is not None
    monkeypatch.setattr(lowmem, "DECODER_TILE_FRACTION", None)
    twin = build_variant(NAME, tiny_components, BuildOptions(deepcache_interval=3))
    assert twin.info["decoder_tile"] is None
    assert psnr_db(to_uint8_images(tiled), to_uint8_images(twin.decoder(latents))) >= TILED_PSNR_DB


@pytest.mark.slow
def test_lowmem_matches_baseline_within_tolerance(tiny_components, baseline_result):
    skip_unless_available(NAME)
    result = build_variant(NAME, tiny_components).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert rel_err(result.latents, baseline_result.latents) <= get_variant(NAME).tolerance


@pytest.mark.slow
def test_lowmem_runs_from_a_spec_without_torch_modules(tiny_components, lowmem_built, monkeypatch):
    """Artifacts cached (by the fixture): the spec path loads no module and spawns no export process."""
    import edgediff.artifacts.prepare as prepare
    import edgediff.models.weights as weights

    def forbidden(*args, **kwargs):
        raise AssertionError("the low-memory path must not load the torch model or export")

    monkeypatch.setattr(weights, "load_modules", forbidden)  # every way to the torch modules goes through it
    monkeypatch.setattr(prepare, "prepare_in_subprocess", forbidden)
    variant = get_variant(NAME)
    spec = variant.load_model(tiny_components.preset)
    assert isinstance(spec, ModelSpec) and spec.fingerprint() == tiny_components.fingerprint()
    assert spec.scaling_factor == tiny_components.scaling_factor
    built = build_variant(NAME, spec, BuildOptions(deepcache_interval=3))
    result = built.pipeline(spec)(seed=SEED, steps=STEPS)
    expected = lowmem_built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert torch.equal(result.latents, expected.latents)
    assert result.metadata["variant"] == NAME and result.metadata["weights_sha256"] == spec.weights.sha256
    assert not spec.has_modules


def test_missing_artifacts_are_exported_in_a_child_process(tiny_components, monkeypatch, tmp_path):
    """With an empty cache the spec path asks a child process to export (recorded here, not run)."""
    import edgediff.artifacts.prepare as prepare

    skip_unless_available(NAME)
    calls = []
    monkeypatch.setenv("EDGEDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(prepare, "prepare_in_subprocess", lambda **kwargs: calls.append(kwargs) or {})
    with pytest.raises(Exception, match="manifest"):
        get_variant(NAME).load_model(tiny_components.preset)
    assert calls == [{"model": "tiny", "weights": None, "weights_seed": 0, "variant": NAME, "deepcache": 1}]


@pytest.mark.slow
def test_prepare_child_process_reports_cached_artifacts(lowmem_built):
    from edgediff.artifacts.prepare import prepare_in_subprocess

    summary = prepare_in_subprocess(model="tiny", weights=None, weights_seed=0, variant=NAME, deepcache=3)
    assert summary["variant"] == NAME
    assert all(report["cached"] for report in summary["artifacts"].values())
    assert set(summary["artifacts"]) == set(lowmem_built.info["artifacts"])


def test_weights_origin_matches_load_components(tiny_components, tmp_path):
    from edgediff.models import save_components

    assert weights_origin(tiny_components.preset) == tiny_components.weights
    folder = save_components(tiny_components, tmp_path / "w")
    loaded = load_components(tiny_components.preset, folder, warn=False)
    assert weights_origin(tiny_components.preset, folder) == loaded.weights
    assert ModelSpec.from_components(loaded).fingerprint() == loaded.fingerprint()


@pytest.mark.slow
def test_lowmem_with_many_small_stages(tiny_components, baseline_result, monkeypatch):
    """A fine plan (some stages hold only an attention layer, whose graph has no time-embedding input) still runs."""
    import edgediff.artifacts.lowmem as artifacts

    skip_unless_available(NAME)
    monkeypatch.setattr(artifacts, "STAGE_MAX_PARAMS", 20_000)
    built = build_variant(NAME, tiny_components)
    assert len(built.info["stages"]) > 8 and ["down1.a0"] in built.info["stages"]
    result = built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert rel_err(result.latents, baseline_result.latents) <= get_variant(NAME).tolerance


def test_diffusers_imports_without_dynamo_and_dynamo_stays_importable():
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from edgediff.variants.openvino_lowmem import import_diffusers_without_dynamo\n"
        "import_diffusers_without_dynamo()\n"
        "assert 'diffusers.utils.torch_utils' in sys.modules and 'torch._dynamo' not in sys.modules\n"
        "from edgediff.pipeline import initial_latents\n"
        "from diffusers import DDIMScheduler\n"
        "initial_latents(torch.Generator().manual_seed(0), 1, (3, 8, 8)); DDIMScheduler().set_timesteps(4)\n"
        "import torch._dynamo\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
