"""The bench's quality hook on digits: per-variant scores in the report, a broken variant FAILED and never a default."""

import copy

import pytest
import torch

from edgediff.quality.bench_hook import default_candidates, make_quality_hook, quality_failed
from edgediff.variants import registry
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, Variant
from edgediff.variants.torch_eager import TorchVariant

BROKEN = "broken-test"


class _BrokenVariant(Variant):
    """torch-fp32 over a UNet whose weights carry noise: what a buggy conversion looks like."""

    name = BROKEN
    backend = "torch"
    precision = "fp32"
    device = "cpu"
    description = "test only: perturbed UNet weights"

    def availability(self) -> Availability:
        return Availability.yes()

    def build(self, components, options: BuildOptions) -> BuiltVariant:
        broken = copy.copy(components)
        broken.unet = copy.deepcopy(components.unet)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in broken.unet.parameters():
                if p.numel() > 1:
                    p.add_(torch.randn(p.shape, generator=generator) * p.std() * 0.3)
        built = TorchVariant(BROKEN, "fp32", self.description, 0.0).build(broken, options)
        return BuiltVariant(BROKEN, built.unet, built.decoder, built.info)


def _entry(name, status="ok", p50=1.0, passed=None):
    quality = None if passed is None else {"gate": {"passed": passed}}
    return {"name": name, "status": status, "latency": {"total": {"p50_s": p50}}, "quality": quality}


def test_default_candidates_exclude_failed_gates_and_sort_by_speed():
    report = {"variants": [_entry("torch-fp32", p50=2.0, passed=True), _entry("fast-but-wrong", p50=0.1, passed=False),
                           _entry("onnx-fp32", p50=1.0, passed=True), _entry("ungated", p50=1.5),
                           _entry("trt-fp16", status="unavailable", p50=None)]}
    assert default_candidates(report) == ["onnx-fp32", "ungated", "torch-fp32"]
    assert quality_failed(report["variants"][1]) and not quality_failed(report["variants"][3])


def test_no_hook_for_presets_the_classifier_cannot_judge():
    from edgediff.bench.suite import BenchConfig

    assert make_quality_hook(BenchConfig(model="tiny", variants=["torch-fp32"])) is None


@pytest.mark.slow
def test_bench_on_digits_marks_a_broken_variant_failed(tmp_path, monkeypatch):
    from edgediff.bench.report_writers import write_outputs
    from edgediff.bench.runner import TelemetryOptions
    from edgediff.bench.suite import BenchConfig, run_bench

    monkeypatch.setitem(registry._VARIANTS, BROKEN, _BrokenVariant())
    config = BenchConfig(model="digits", variants=["torch-fp32", "onnx-fp32", BROKEN], steps=20, runs=1, warmup=0,
                         threads=2, isolate=False, telemetry=TelemetryOptions(enabled=False), out=tmp_path)
    report, _ = run_bench(config, quality_fn=make_quality_hook(config, samples=32), progress=None)
    write_outputs(report, tmp_path, plots=False)  # the report with quality results still fits its schema
    entries = {e["name"]: e for e in report["variants"]}
    assert entries["torch-fp32"]["quality"]["gate"]["status"] == "PASSED"
    assert entries["onnx-fp32"]["quality"]["gate"]["status"] == "PASSED"
    broken = entries[BROKEN]["quality"]
    assert broken["gate"]["status"] == "FAILED" and broken["eligible_as_default"] is False
    assert broken["summary"].startswith("FAILED")
    assert BROKEN not in default_candidates(report)
    assert set(default_candidates(report)) == {"torch-fp32", "onnx-fp32"}
    markdown = (tmp_path / "report.md").read_text()
    assert f"- {BROKEN}: FAILED" in markdown


@pytest.mark.slow
def test_bench_cli_on_digits_writes_quality_into_the_report(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "cli.main", "bench", "--model", "digits", "--variants", "torch-fp32",
           "--steps", "5", "--runs", "1", "--warmup", "0", "--no-isolate", "--no-energy", "--no-plots",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads((out / "report.json").read_text())["variants"][0]
    assert entry["quality"]["gate"]["status"] == "PASSED"
    assert entry["quality"]["scores"]["samples"] == 64
    assert "### Quality" in (out / "report.md").read_text()
