"""Assemble a bench report (a JSON-serialisable dict, see ``report.schema.json``) from the variants' raw runs.

Pure functions of their inputs: statistics, energy per image by domain, peak memory, fidelity and the ratios
against the baseline. No number is made up: what could not be measured is ``None`` with a reason beside it.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from typing import Any

from edgediff.bench import fidelity
from edgediff.bench.runner import STATUS_OK, VariantRun
from edgediff.bench.schema import SCHEMA_VERSION
from edgediff.secrets import redact_command
from edgediff.stats import check_stability, summarize
from edgediff.telemetry.window import LABEL_MEASURED, Measurement, energy_label, energy_row

REPORT_KIND = "edgediff-bench-report"
STAGES = ("denoise", "decode", "total")
MEMORY_DEVICE_KINDS = {"tegrastats-ram-used": "device-wide RAM (Jetson: CPU and GPU share it; tegrastats)"}


# --- latency ----------------------------------------------------------------------------------------------------
def latency_section(run: VariantRun) -> dict[str, Any]:
    """Per-stage statistics of the timed runs, the runs themselves and the warm-ups."""
    out: dict[str, Any] = {stage: summarize([r[f"{stage}_s"] for r in run.runs]).to_dict() for stage in STAGES}
    out["per_run"] = run.runs
    out["warmup_total_s"] = run.warmup_s
    return out


# --- energy -----------------------------------------------------------------------------------------------------
def _per(value: float | None, count: float) -> float | None:
    return value / count if value is not None and count > 0 else None


def _why(row: dict[str, Any]) -> str:
    """``domain [flags]: reason`` of an energy row that is not valid (the flags are the causes' short codes)."""
    flags = row.get("flags") or []
    return f"{row['domain']}" + (f" [{', '.join(flags)}]" if flags else "") + f": {row['reason']}"


def energy_section(window: dict[str, Any] | None, images: int, telemetry: dict[str, Any]) -> dict[str, Any]:
    """Energy and power over the timed runs' window: by domain, and a headline over the valid whole domains.

    Args:
        window: ``Measurement.to_dict()`` of the window, or None when energy was not measured.
        images: Images generated inside the window (runs x batch).
        telemetry: ``VariantRun.telemetry`` (power readers and the unavailable sensors with their reasons).
    """
    unavailable_sensors = list(telemetry.get("unavailable", []))
    base: dict[str, Any] = {"available": False, "reason": None, "images": images, "window_s": None,
                            "headline": None, "domains": []}
    if window is None:
        base["reason"] = "unavailable: " + ("; ".join(unavailable_sensors) or "energy not measured")
        return base
    measurement = Measurement.from_dict(window)
    duration_s = measurement.duration_s
    base["window_s"] = duration_s
    domains = [energy_row(e, duration_s, images) for e in measurement.energy_j.values()]
    base["domains"] = domains
    wholes = [d for d in domains if d["part_of"] is None and d["valid"]]
    if not wholes:
        reasons = [_why(d) for d in domains if not d["valid"]]
        if not telemetry.get("power_readers"):
            reasons.append("no power sensor")
        base["reason"] = "unavailable: " + "; ".join(reasons + unavailable_sensors)
        return base
    gross_j = sum(d["gross_j"] for d in wholes)
    net_j = sum(d["net_j"] for d in wholes) if all(d["net_j"] is not None for d in wholes) else None
    estimated = any(d["estimated"] for d in wholes)
    fixture = any(d["fixture"] for d in wholes)
    base["available"] = True
    base["headline"] = {
        "energy_per_image_j": gross_j / images if images else None,
        "net_energy_per_image_j": _per(net_j, images),
        "power_w": _per(gross_j, duration_s),
        "net_power_w": _per(net_j, duration_s),
        "domains": [d["domain"] for d in wholes],
        "sources": sorted({d["source"] for d in wholes}),
        "estimated": estimated,
        "fixture": fixture,
        "label": energy_label(estimated=estimated, fixture=fixture),
    }
    skipped = [_why(d) for d in domains if d["part_of"] is None and not d["valid"]]
    if skipped:
        base["reason"] = "not counted: " + "; ".join(skipped)
    return base


# --- memory -----------------------------------------------------------------------------------------------------
def memory_section(memory: dict[str, Any]) -> dict[str, Any]:
    """The memory numbers of a run plus the headline peak: device-wide on a Jetson, CUDA on a GPU, else the process."""
    out = dict(memory)
    window_peaks = memory.get("window_peak_bytes") or {}
    device_kind = next((k for k in MEMORY_DEVICE_KINDS if k in window_peaks), None)
    out["device_peak_bytes"] = window_peaks.get(device_kind) if device_kind else None
    out["device_label"] = MEMORY_DEVICE_KINDS[device_kind] if device_kind else None
    if device_kind:
        out["peak_bytes"], out["peak_kind"], out["peak_label"] = (
            window_peaks[device_kind], device_kind, MEMORY_DEVICE_KINDS[device_kind])
    elif memory.get("cuda_max_allocated_bytes") is not None:
        out["peak_bytes"], out["peak_kind"], out["peak_label"] = (
            memory["cuda_max_allocated_bytes"], "cuda-max-allocated", "CUDA max allocated (torch), timed runs")
    else:
        out["peak_bytes"], out["peak_kind"], out["peak_label"] = (
            memory.get("process_peak_rss_bytes"), "process-peak-rss", "process peak RSS (VmHWM)")
    return out


# --- ratios -----------------------------------------------------------------------------------------------------
def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _speedup(entry: dict[str, Any], baseline: dict[str, Any] | None) -> tuple[float | None, str | None]:
    if baseline is None or baseline["status"] != STATUS_OK:
        return None, "the baseline did not run"
    return _ratio(baseline["latency"]["total"]["p50_s"], entry["latency"]["total"]["p50_s"]), None


def _energy_ratio(entry: dict[str, Any], baseline: dict[str, Any] | None) -> tuple[float | None, str | None]:
    if baseline is None or baseline["status"] != STATUS_OK:
        return None, "the baseline did not run"
    mine, theirs = entry["energy"]["headline"], baseline["energy"]["headline"]
    if mine is None or theirs is None:
        return None, "energy unavailable"
    if mine["domains"] != theirs["domains"]:
        return None, f"different power domains ({mine['domains']} vs {theirs['domains']})"
    return _ratio(mine["energy_per_image_j"], theirs["energy_per_image_j"]), None


def _fidelity(run: VariantRun, baseline_run: VariantRun | None, reference: str) -> dict[str, Any]:
    if baseline_run is None or baseline_run.status != STATUS_OK or baseline_run.images is None:
        return fidelity.unavailable(reference, f"the baseline {reference} did not run")
    if run.images is None:
        return fidelity.unavailable(reference, "no images")
    if run.images.shape != baseline_run.images.shape:
        return fidelity.unavailable(reference, f"image shapes differ ({run.images.shape} vs "
                                               f"{baseline_run.images.shape})")
    latents = run.latents if baseline_run.latents is not None else None
    if latents is not None and latents.shape != baseline_run.latents.shape:
        latents = None
    return fidelity.compare_outputs(run.images, baseline_run.images, reference=reference, latents=latents,
                                    reference_latents=baseline_run.latents if latents is not None else None).to_dict()


# --- one variant ------------------------------------------------------------------------------------------------
def variant_entry(
    run: VariantRun,
    *,
    variant: Any,
    requested: bool,
    role: str,
    batch: int,
    baseline_run: VariantRun | None,
    reference: str,
    sample: str | None,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's entry for one variant (without the ratios, which need the baseline's entry).

    Args:
        run: The raw outcome.
        variant: The registry's ``Variant`` (name, backend, precision, device), or None for a gateway-only name.
        requested: The user asked for it (the baseline runs anyway, for fidelity and speedup).
        role: ``baseline`` or ``variant``.
        batch: Images per run.
        baseline_run: The baseline's raw outcome, for fidelity.
        reference: The baseline's name.
        sample: The sample image's path relative to the report, or None.
        quality: Per-variant quality results (see ``suite.QualityFn``), or None.
    """
    entry: dict[str, Any] = {
        "name": run.variant,
        "backend": getattr(variant, "backend", None),
        "precision": getattr(variant, "precision", None),
        "device": (run.info or {}).get("device") or getattr(variant, "device", None),
        "requested": requested,
        "role": role,
        "status": run.status,
        "reason": run.error,
        "isolated": run.isolated,
        "build_s": run.build_s,
        "info": run.info,
        "latency": None,
        "stability": None,
        "memory": None,
        "energy": None,
        "fidelity": None,
        "speedup_vs_baseline": None,
        "energy_ratio_vs_baseline": None,
        "ratio_notes": [],
        "quality": quality,
        "sample_image": sample,
    }
    if run.status != STATUS_OK:
        return entry
    entry["latency"] = latency_section(run)
    entry["stability"] = check_stability([r["total_s"] for r in run.runs]).to_dict()
    entry["memory"] = memory_section(run.memory)
    entry["energy"] = energy_section(run.window, len(run.runs) * batch, run.telemetry)
    entry["fidelity"] = _fidelity(run, baseline_run, reference)
    return entry


def add_ratios(entries: Sequence[dict[str, Any]], reference: str) -> None:
    """Fill ``speedup_vs_baseline`` and ``energy_ratio_vs_baseline`` of every measured entry (in place)."""
    baseline = next((e for e in entries if e["name"] == reference), None)
    for entry in entries:
        if entry["status"] != STATUS_OK:
            continue
        entry["speedup_vs_baseline"], why = _speedup(entry, baseline)
        if why:
            entry["ratio_notes"].append(f"speedup: {why}")
        entry["energy_ratio_vs_baseline"], why = _energy_ratio(entry, baseline)
        if why:
            entry["ratio_notes"].append(f"energy ratio: {why}")


def warnings_for(report: dict[str, Any]) -> list[str]:
    """The loud warnings of a report: synthetic weights, unstable runs, estimated or fixture energy, no sensor."""
    out = []
    weights = report.get("weights") or {}
    if weights.get("synthetic"):
        out.append("weights: synthetic - the architecture runs with seeded random weights: latency, memory and "
                   "energy are real, the images are noise, fidelity compares noise with noise")
    for entry in report["variants"]:
        if entry["status"] != STATUS_OK:
            continue
        stability = entry["stability"]
        if stability["stable"] is False:
            out.append(f"{entry['name']}: unstable measurement: {stability['reason']}")
        headline = (entry["energy"] or {}).get("headline")
        if headline and headline["label"] != LABEL_MEASURED:
            sources = ", ".join(headline["sources"])
            out.append(f"{entry['name']}: energy is {headline['label'].upper()} (source: {sources}), not measured")
    measured = [e for e in report["variants"] if e["status"] == STATUS_OK]
    if measured and not any(e["energy"]["available"] for e in measured):
        out.append(f"energy {measured[0]['energy']['reason']}")
    return out


def build_report(
    *,
    config: dict[str, Any],
    model: dict[str, Any],
    weights: dict[str, Any] | None,
    environment: dict[str, Any],
    telemetry: dict[str, Any],
    entries: list[dict[str, Any]],
    reference: str,
    command: str,
) -> dict[str, Any]:
    """The whole report dict (validates against ``report.schema.json``).

    Args:
        config: The bench's arguments (model, steps, eta, batch, warmup, runs, seed, variants, through, isolate).
        model: The preset's description (``ModelPreset.to_dict()``).
        weights: The weights origin (``WeightsOrigin.to_dict()`` + label + synthetic), None when no variant ran.
        environment: ``environment.fingerprint()``.
        telemetry: The sensors found, those unavailable with reasons, and the idle baseline.
        entries: One entry per variant (``variant_entry``), ratios filled by ``add_ratios``.
        reference: The baseline's name.
        command: The command line that produced the report.
    """
    report = {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": redact_command(command),  # no secret reaches a report (edgediff.secrets)
        "config": config,
        "model": model,
        "weights": weights,
        "environment": environment,
        "telemetry": telemetry,
        "baseline": reference,
        "variants": entries,
        "warnings": [],
        "files": {},
    }
    report["warnings"] = warnings_for(report)
    return report
