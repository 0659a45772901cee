"""Bench reports built from chosen numbers (no model runs): for the report, writer and compare tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgediff.bench import report as report_mod
from edgediff.bench.runner import STATUS_OK, VariantRun
from edgediff.telemetry import DomainEnergy


def window(duration_s: float, domains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A ``Measurement.to_dict()`` with the given domains (keyword overrides of a valid DomainEnergy)."""
    energy = {}
    for name, fields in domains.items():
        base = dict(domain=name, source="nvml:0", method="counter", gross_j=None, net_j=None, idle_power_w=None,
                    estimated=False, part_of=None, valid=True, reason=None, samples=10)
        base.update(fields)
        energy[name] = dataclasses.asdict(DomainEnergy(**base))
    return {"name": "w", "duration_s": duration_s, "energy_j": energy, "peak_memory": {}}


def fake_run(name: str, totals_s: list[float], *, power_w: float | None = None, domain: str = "gpu-board",
             source: str = "nvml:0", estimated: bool = False, pixel: int = 0, peak_bytes: int = 500_000_000
             ) -> VariantRun:
    """A measured variant whose runs took ``totals_s`` and drew ``power_w`` (None: no sensor)."""
    runs = [{"seed": i, "denoise_s": 0.75 * t, "decode_s": 0.25 * t, "total_s": t} for i, t in enumerate(totals_s)]
    duration_s = sum(totals_s)
    win = None
    telemetry: dict[str, Any] = {"power_readers": [], "unavailable": ["nvml: no GPU here"]}
    if power_w is not None:
        win = window(duration_s, {domain: {"gross_j": power_w * duration_s, "source": source,
                                           "estimated": estimated}})
        telemetry = {"power_readers": [source.split(":")[0]], "unavailable": []}
    memory = {"process_peak_rss_bytes": peak_bytes, "setup_peak_rss_bytes": peak_bytes + 1, "process_rss_bytes": 1,
              "peak_reset": True, "cuda_max_allocated_bytes": None, "window_peak_bytes": {}, "method": "test"}
    images = np.full((len(totals_s), 16, 16, 3), pixel, dtype=np.uint8)
    latents = np.full((len(totals_s), 3, 4, 4), pixel / 255.0, dtype=np.float32)
    return VariantRun(variant=name, status=STATUS_OK, runs=runs, window=win, telemetry=telemetry, memory=memory,
                      images=images, latents=latents, build_s=0.1, weights={"kind": "synthetic"})


def environment(label: str) -> dict[str, Any]:
    """A minimal environment fingerprint."""
    return {"label": label, "cpu": {"model": "test cpu", "physical_cores": 2, "logical_cores": 2},
            "gpu": {"devices": [], "driver": None, "reason": "none"}, "jetson": None,
            "os": {"system": "Linux", "release": "x", "platform": "Linux-x"}, "python": "3.11",
            "libraries": {"torch": "x"}, "git": {"commit": None, "dirty": None, "reason": "test"}}


def make_report(label: str, runs: list[VariantRun], *, model: str = "tiny", steps: int = 4,
                batch: int = 1) -> dict[str, Any]:
    """A full, schema-valid report of ``runs`` (the first is the baseline)."""
    from edgediff.variants import get_variant

    reference = runs[0].variant
    entries = [report_mod.variant_entry(run, variant=get_variant(run.variant), requested=True,
                                        role="baseline" if run.variant == reference else "variant", batch=batch,
                                        baseline_run=runs[0], reference=reference, sample=None)
               for run in runs]
    report_mod.add_ratios(entries, reference)
    weights = {"kind": "synthetic", "path": None, "sha256": "ab" * 32, "seed": 0, "label": "synthetic (seed 0)",
               "synthetic": True}
    config = {"model": model, "steps": steps, "eta": 0.0, "batch": batch, "warmup": 1, "runs": len(runs[0].runs),
              "seed": 0, "threads": None, "deepcache": 1, "variants_requested": [r.variant for r in runs],
              "through": "local", "gateway": None, "isolate": False}
    telemetry = {"enabled": True, "power_readers": [], "unavailable": [], "idle_power_w": {}, "idle_s": None}
    return report_mod.build_report(config=config, model={"name": model, "latent_shape": [3, 16, 16],
                                                         "image_size": 64},
                                   weights=weights, environment=environment(label), telemetry=telemetry,
                                   entries=entries, reference=reference, command="test")
