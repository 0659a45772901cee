"""openvino-int8: NNCF post-training quantization, calibrated on the pipeline's trajectories, within tolerance."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgediff.artifacts.build import build_artifact
from edgediff.artifacts.calibration import SEEDS, calibration_set, part_samples
from edgediff.artifacts.openvino_int8 import quantize_ir
from edgediff.variants import BuildOptions, build_variant, get_variant
from tests.perf.conftest import SEED, STEPS, rel_err, skip_unless_available

NAME = "openvino-int8"
pytestmark = pytest.mark.slow  # the first test here quantizes the tiny model (about 20 s)


def test_calibration_comes_from_the_pipelines_own_trajectories(tiny_components):
    cset = calibration_set(tiny_components)
    steps = tiny_components.preset.default_steps
    assert cset.seeds == SEEDS and SEED not in SEEDS  # calibration never sees the seeds the tests compare on
    assert len(cset.unet) == len(SEEDS) * steps
    timesteps = sorted({int(t[0]) for _, t, _ in cset.unet}, reverse=True)
    assert len(timesteps) == steps and timesteps[0] > timesteps[-1]
    assert len(part_samples(cset, "unet-shallow")[0]) == 3
    assert cset.vqdec and cset.vqdec[0].shape[1:] == tiny_components.preset.latent_shape


def test_int8_matches_baseline_within_tolerance(tiny_components, baseline_result):
    skip_unless_available(NAME)
    built = build_variant(NAME, tiny_components)
    result = built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    err = rel_err(result.latents, baseline_result.latents)
    assert 0 < err <= get_variant(NAME).tolerance
    report = built.info["artifacts"]["unet"]
    assert report["fake_quantize_nodes"] > 0 and report["samples"] == len(SEEDS) * tiny_components.preset.default_steps


def test_int8_ir_stores_int8_weights(tiny_components):
    skip_unless_available(NAME)
    fp32, _ = build_artifact(tiny_components, "unet", "openvino")
    int8, report = build_artifact(tiny_components, "unet", "openvino-int8")
    assert report["cached"] is True  # built by the previous test, found by content hash
    assert (int8 / "model.bin").stat().st_size < 0.5 * (fp32 / "model.bin").stat().st_size


def test_without_bf16_the_int8_variant_runs_the_ir_with_compressed_linear_weights(tiny_components, baseline_result,
                                                                                   monkeypatch):
    # where the CPU has no bf16 the int8 model's linear weights would be packed at fp32: they are int8 there too
    import openvino as ov

    from edgediff.artifacts.openvino_int8 import float_linear_weights
    from edgediff.variants import openvino_runtime

    skip_unless_available(NAME)
    monkeypatch.setattr(openvino_runtime, "cpu_supports_bf16", lambda: False)
    int8, _ = build_artifact(tiny_components, "unet", "openvino-int8")
    wc, report = build_artifact(tiny_components, "unet", "openvino-int8-wc")
    core = ov.Core()
    before, after = (core.read_model(str(folder / "model.xml")) for folder in (int8, wc))
    assert report["compressed_layers"] > 0 and report["fake_quantize_nodes"] > 0  # still the int8 convolutions
    assert float_linear_weights(after) == float_linear_weights(before) - report["compressed_layers"]
    left = {op.get_friendly_name() for op in after.get_ops() if op.get_type_name() == "MatMul"
            and any(i.get_source_output().get_node().get_type_name() == "Constant" for i in op.inputs())}
    assert left and all("time_embedding" in name for name in left)  # only the time-embedding MLP stays in fp
    compressed = {op.get_friendly_name() for op in after.get_ops() if op.get_type_name() == "MatMul"} - left
    assert any("time_emb_proj" in name for name in compressed)  # the blocks' projections of it are int8
    assert (wc / "model.bin").stat().st_size < (int8 / "model.bin").stat().st_size
    built = build_variant(NAME, tiny_components)
    assert built.info["compile_precision"] == "fp32"
    assert Path(built.info["artifacts"]["unet"]["path"]).parent == wc
    assert Path(built.info["artifacts"]["vqdec"]["path"]).parent.name.startswith("tiny-vqdec-openvino-int8-wc-")
    result = built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert 0 < rel_err(result.latents, baseline_result.latents) <= get_variant(NAME).tolerance


def _quantized_consumers(xml) -> list[str]:
    """Names of the nodes that read a FakeQuantize output (the int8 operations) in an IR."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return [target.get_node().get_friendly_name() for op in model.get_ops() if op.get_type_name() == "FakeQuantize"
            for target in op.output(0).get_target_inputs()]


def test_keep_float_leaves_the_named_layers_in_floating_point(tiny_components, tmp_path):
    # the mechanism of benchmarks/int8_recipes.py (mixed precision on chosen layers); the artifacts pass none
    skip_unless_available(NAME)
    fp32, _ = build_artifact(tiny_components, "unet", "openvino")
    shipped, shipped_report = build_artifact(tiny_components, "unet", "openvino-int8")
    assert shipped_report["quantization"]["keep_float"] == []
    last = len(tiny_components.preset.unet_config["up_block_types"]) - 1
    readers = rf".*/up_blocks\.{last}/resnets\.\d+/(conv1|conv_shortcut)/.*"
    assert [name for name in _quantized_consumers(shipped / "model.xml") if re.fullmatch(readers, name)]
    samples = [{"sample": s.numpy(), "timestep": t.numpy()}
               for s, t in part_samples(calibration_set(tiny_components), "unet")[:8]]
    report = quantize_ir(fp32 / "model.xml", samples, tmp_path, keep_float=[readers],
                         overrides={"fast_bias_correction": True})
    consumers = _quantized_consumers(tmp_path / "model.xml")
    assert report["quantization"]["keep_float"] == [readers] and "fast_bias_correction" in report["quantization"][
        "overrides"]
    assert not [name for name in consumers if re.fullmatch(readers, name)]
    assert [name for name in consumers if f"/up_blocks.{last}/" in name and "/conv2/" in name]  # the rest: int8


def test_int8_with_deepcache(tiny_components):
    skip_unless_available(NAME)
    options = BuildOptions(deepcache_interval=3)
    reference = build_variant("torch-fp32", tiny_components, options).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    result = build_variant(NAME, tiny_components, options).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert rel_err(result.latents, reference.latents) <= get_variant(NAME).tolerance


def test_mixed_variant_quantizes_only_the_decoder(tiny_components):
    # openvino-bf16-int8dec: the UNet is openvino-bf16's IR (no FakeQuantize), the decoder is openvino-int8's
    name = "openvino-bf16-int8dec"
    skip_unless_available(name)
    built = build_variant(name, tiny_components)
    artifacts = built.info["artifacts"]
    assert "fake_quantize_nodes" not in artifacts["unet"] and artifacts["vqdec"]["fake_quantize_nodes"] > 0
    bf16, int8 = (build_variant(v, tiny_components).info["artifacts"] for v in ("openvino-bf16", NAME))
    assert artifacts["unet"]["path"] == bf16["unet"]["path"] and artifacts["vqdec"]["path"] == int8["vqdec"]["path"]
    result = built.pipeline(tiny_components)(seed=SEED, steps=STEPS)
    reference = build_variant("openvino-bf16", tiny_components).pipeline(tiny_components)(seed=SEED, steps=STEPS)
    assert (result.latents == reference.latents).all()  # same UNet, same compiled precision: same latents
    assert result.images.shape == reference.images.shape and (result.images != reference.images).any()
