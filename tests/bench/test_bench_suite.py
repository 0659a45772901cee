"""The bench in this process: fidelity of a perturbed variant, energy with a fixture power reader, the quality hook,
and a bench through a real gateway."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgediff.bench.report_writers import render_markdown, write_outputs
from edgediff.bench.runner import TelemetryOptions
from edgediff.bench.schema import validate_report
from edgediff.bench.suite import BenchConfig, run_bench
from edgediff.variants import registry
from edgediff.variants.base import Availability, BuiltVariant, StatelessUNet, Variant

pytestmark = pytest.mark.slow
PERTURBED = "perturbed-fp32"
FIXTURE_W = 40.0


class PerturbedVariant(Variant):
    """torch-fp32 whose noise prediction is deliberately off by 5% plus an offset (a broken export, simulated)."""

    name = PERTURBED
    backend = "torch"
    precision = "fp32"
    device = "cpu"
    description = "test only: torch-fp32 with a perturbed UNet output"

    def availability(self) -> Availability:
        return Availability.yes()

    def build(self, components, options) -> BuiltVariant:
        base = registry.get_variant("torch-fp32").build(components, options)
        fn = base.unet.sequence()
        return BuiltVariant(self.name, StatelessUNet(lambda s, t: fn(s, t) * 1.05 + 0.02), base.decoder,
                            {**base.info, "perturbed": True})


@pytest.fixture
def perturbed_variant(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(registry._VARIANTS, PERTURBED, PerturbedVariant())
    return PERTURBED


def _config(tmp_path: Path, variants: list[str], **kwargs) -> BenchConfig:
    options = {"model": "tiny", "variants": variants, "steps": 4, "runs": 2, "warmup": 1, "isolate": False,
               "telemetry": TelemetryOptions(enabled=False), "out": tmp_path}
    options.update(kwargs)
    return BenchConfig(**options)


def test_fidelity_drops_for_a_perturbed_variant_and_quality_hook_runs(perturbed_variant: str, tmp_path: Path) -> None:
    calls = []

    def quality(variant: str, images: np.ndarray, context: dict) -> dict:
        calls.append((variant, images.shape, context["seeds"], context["baseline_images"] is not None))
        return {"summary": f"{variant}: mean pixel {images.mean():.1f}", "mean_pixel": float(images.mean())}

    report, runs = run_bench(_config(tmp_path, [perturbed_variant]), quality_fn=quality, progress=None)
    base, bad = report["variants"]
    assert (base["name"], base["requested"], base["role"]) == ("torch-fp32", False, "baseline")
    assert base["fidelity"]["psnr_db"] == "inf" and base["fidelity"]["ssim"] == 1.0
    assert base["fidelity"]["max_abs_latent_error"] == 0.0
    assert math.isfinite(bad["fidelity"]["psnr_db"]) and bad["fidelity"]["psnr_db"] < 60
    assert bad["fidelity"]["ssim"] < 1.0 and bad["fidelity"]["max_abs_latent_error"] > 1e-3
    assert bad["energy"]["available"] is False and "--no-energy" in bad["energy"]["reason"]
    assert [c[0] for c in calls] == ["torch-fp32", PERTURBED]
    assert calls[1][1] == (2, 64, 64, 3) and calls[1][2] == [0, 1] and calls[1][3] is True
    assert bad["quality"]["mean_pixel"] == pytest.approx(float(runs[PERTURBED].images.mean()))
    paths = write_outputs(report, tmp_path)
    validate_report(report)
    md = paths["md"].read_text()
    assert "### Quality" in md and f"{PERTURBED}: mean pixel" in md
    assert "torch-fp32 (baseline, not requested)" in md


def test_energy_per_image_is_watts_times_latency_with_a_fixture_reader(tmp_path: Path) -> None:
    telemetry = TelemetryOptions(idle_s=0.0, fixture_power_w=FIXTURE_W)
    report, _ = run_bench(_config(tmp_path, ["torch-fp32"], steps=10, runs=3, telemetry=telemetry), progress=None)
    entry = report["variants"][0]
    energy = entry["energy"]
    head = energy["headline"]
    assert head["label"] == "fixture" and head["domains"] == ["fixture"]
    per_image_s = entry["latency"]["total"]["mean_s"]  # batch 1: one image per run
    assert head["energy_per_image_j"] == pytest.approx(FIXTURE_W * per_image_s, rel=0.01)
    assert head["energy_per_image_j"] == pytest.approx(FIXTURE_W * energy["window_s"] / 3, rel=1e-9)
    assert head["power_w"] == pytest.approx(FIXTURE_W, rel=1e-9)
    assert head["net_energy_per_image_j"] is None  # no idle baseline was asked for
    assert "(fixture)" in render_markdown(report)


def test_bench_through_a_real_gateway(tmp_path: Path, _isolated_cache: Path) -> None:
    from services.gateway.bench_target import GatewayTarget
    from services.gateway.server import GatewayConfig, GatewayServer

    server = GatewayServer(GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0,
                                         shutdown_grace_s=2.0, allowed_variants=["all"])).start()
    try:
        config = _config(tmp_path, ["torch-fp32", "onnx-fp32", "torch-fp16"], through="gateway",
                         gateway=server.target)
        remote = GatewayTarget(server.target)
        try:
            report, runs = run_bench(config, progress=None, remote=remote)
        finally:
            remote.close()
    finally:
        server.stop(grace_s=2.0)
    base, onnx, fp16 = report["variants"]
    assert base["status"] == "ok" and onnx["status"] == "ok"
    assert fp16["status"] == "unavailable" and fp16["reason"]
    assert base["fidelity"]["psnr_db"] == "inf" and onnx["fidelity"]["ssim"] > 0.99
    assert onnx["fidelity"]["max_abs_latent_error"] is None  # the gateway returns images only
    per_run = onnx["latency"]["per_run"][0]
    assert per_run["total_s"] >= per_run["denoise_s"] + per_run["decode_s"] > 0
    assert onnx["memory"]["peak_bytes"] is None and "gateway" in onnx["memory"]["method"]
    assert runs["onnx-fp32"].images.shape == (2, 64, 64, 3)
    assert report["weights"]["synthetic"] is True and report["config"]["through"] == "gateway"
    write_outputs(report, tmp_path)
    assert (tmp_path / "samples" / "onnx-fp32.png").is_file()
