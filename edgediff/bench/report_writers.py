"""Write a bench report as ``report.json``, ``report.csv`` and ``report.md`` (atomically, like every output).

``report.md`` leads with the weights origin (loudly when synthetic) and the environment, then a table shaped like
the study's Table 1 plus fidelity columns. Numbers that could not be measured show as ``n/a`` with the reason below
the table; estimated or fixture energy carries its label in every cell where it appears.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgediff.bench.plots import BREAKDOWN_PNG, ENERGY_PNG, LATENCY_PNG, write_plots
from edgediff.bench.schema import validate_report
from edgediff.io import atomic_write_csv, atomic_write_json, atomic_write_text, csv_text

MB = 1_000_000
"""Bytes per MB in the tables (SI)."""
NA = "n/a"
TABLE_COLUMNS = ("Variant", "Sampler", "Denoise p50 (s)", "Decode p50 (s)", "Total p50 (s)", "p90", "Speedup",
                 "Peak mem (MB)", "Power (W)", "Energy/img (J)", "PSNR (dB)", "SSIM", "max \\|Δlatent\\|")
CSV_COLUMNS = (
    "variant", "role", "requested", "status", "reason", "backend", "precision", "device",
    "denoise_p50_s", "denoise_p90_s", "decode_p50_s", "decode_p90_s",
    "total_p50_s", "total_p90_s", "total_mean_s", "total_std_s", "total_min_s", "total_max_s", "runs", "stable",
    "speedup_vs_baseline", "peak_memory_bytes", "peak_memory_kind", "process_peak_rss_bytes", "setup_peak_rss_bytes",
    "power_w", "energy_per_image_j", "net_energy_per_image_j", "energy_label", "energy_domains", "energy_sources",
    "energy_unavailable_reason", "energy_ratio_vs_baseline", "psnr_db", "ssim", "max_abs_latent_error",
)


def _num(value: float | None, fmt: str = ".4g") -> str:
    if value is None:
        return NA
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, fmt)


def _mb(value: int | None) -> str:
    return NA if value is None else f"{value / MB:,.0f}"


def _tagged(value: str, label: str | None) -> str:
    """``"12.3 (estimated)"``: a non-measured number always carries its label."""
    return value if label in (None, "measured") or value == NA else f"{value} ({label})"


def _psnr(fid: dict[str, Any] | None) -> str:
    if not fid or not fid["available"]:
        return NA
    return "inf" if fid["psnr_db"] == "inf" else f"{fid['psnr_db']:.2f}"


def _variant_label(entry: dict[str, Any]) -> str:
    if entry["role"] == "baseline":
        return f"{entry['name']} (baseline{'' if entry['requested'] else ', not requested'})"
    return entry["name"]


def sampler_label(entry: dict[str, Any]) -> str:
    """``"dpmpp 10"``: the scheduler and steps the row ran (reports before schedulers existed ran DDIM)."""
    info = entry.get("info") or {}
    steps = info.get("steps")
    return f"{info.get('scheduler', 'ddim')} {steps}" if steps else NA


# --- CSV --------------------------------------------------------------------------------------------------------
def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per variant (``CSV_COLUMNS``); numbers in SI units, empty where not measured."""
    rows = []
    for e in report["variants"]:
        row: dict[str, Any] = dict.fromkeys(CSV_COLUMNS, "")
        row.update(variant=e["name"], role=e["role"], requested=e["requested"], status=e["status"],
                   reason=e["reason"] or "", backend=e["backend"] or "", precision=e["precision"] or "",
                   device=e["device"] or "")
        if e["status"] == "ok":
            lat = e["latency"]
            row.update(denoise_p50_s=lat["denoise"]["p50_s"], denoise_p90_s=lat["denoise"]["p90_s"],
                       decode_p50_s=lat["decode"]["p50_s"], decode_p90_s=lat["decode"]["p90_s"],
                       total_p50_s=lat["total"]["p50_s"], total_p90_s=lat["total"]["p90_s"],
                       total_mean_s=lat["total"]["mean_s"], total_std_s=lat["total"]["std_s"],
                       total_min_s=lat["total"]["min_s"], total_max_s=lat["total"]["max_s"], runs=lat["total"]["n"],
                       stable="" if e["stability"]["stable"] is None else e["stability"]["stable"],
                       speedup_vs_baseline=_blank(e["speedup_vs_baseline"]))
            mem = e["memory"]
            row.update(peak_memory_bytes=_blank(mem["peak_bytes"]), peak_memory_kind=mem["peak_kind"],
                       process_peak_rss_bytes=_blank(mem["process_peak_rss_bytes"]),
                       setup_peak_rss_bytes=_blank(mem["setup_peak_rss_bytes"]))
            energy = e["energy"]
            head = energy["headline"]
            if head is not None:
                row.update(power_w=head["power_w"], energy_per_image_j=head["energy_per_image_j"],
                           net_energy_per_image_j=_blank(head["net_energy_per_image_j"]), energy_label=head["label"],
                           energy_domains=";".join(head["domains"]), energy_sources=";".join(head["sources"]),
                           energy_ratio_vs_baseline=_blank(e["energy_ratio_vs_baseline"]))
            else:
                row.update(energy_label="unavailable", energy_unavailable_reason=energy["reason"])
            fid = e["fidelity"]
            if fid["available"]:
                row.update(psnr_db=fid["psnr_db"], ssim=fid["ssim"],
                           max_abs_latent_error=_blank(fid["max_abs_latent_error"]))
        rows.append(row)
    return rows


def _blank(value: Any) -> Any:
    return "" if value is None else value


def render_csv(report: dict[str, Any]) -> str:
    """``report.csv``'s text."""
    return csv_text(CSV_COLUMNS, csv_rows(report))


# --- Markdown ---------------------------------------------------------------------------------------------------
def table_row(entry: dict[str, Any]) -> list[str]:
    """The Table 1 cells of one measured variant."""
    lat, mem, energy, fid = entry["latency"], entry["memory"], entry["energy"], entry["fidelity"]
    head = energy["headline"]
    label = head["label"] if head else None
    speedup = entry["speedup_vs_baseline"]
    return [
        _variant_label(entry),
        sampler_label(entry),
        _num(lat["denoise"]["p50_s"]),
        _num(lat["decode"]["p50_s"]),
        _num(lat["total"]["p50_s"]),
        _num(lat["total"]["p90_s"]),
        NA if speedup is None else f"{speedup:.2f}x",
        _mb(mem["peak_bytes"]),
        _tagged(_num(head["power_w"], ".3g") if head else NA, label),
        _tagged(_num(head["energy_per_image_j"], ".4g") if head else NA, label),
        _psnr(fid),
        NA if not fid["available"] else f"{fid['ssim']:.4f}",
        NA if not fid["available"] else _num(fid["max_abs_latent_error"], ".3g"),
    ]


def markdown_table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(report: dict[str, Any]) -> str:
    """The Table 1 of a report (measured variants only; the others are listed below it)."""
    rows = [table_row(e) for e in report["variants"] if e["status"] == "ok"]
    return markdown_table(TABLE_COLUMNS, rows)


def _environment_lines(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    cpu, gpu, jetson, libs, git = env["cpu"], env["gpu"], env["jetson"], env["libraries"], env["git"]
    gpus = ", ".join(d["name"] for d in gpu["devices"]) or f"none ({gpu['reason']})"
    if gpu.get("driver"):
        gpus += f", driver {gpu['driver']}"
    jetson_text = NA if jetson is None else f"{jetson.get('model') or 'Jetson'}, power mode " \
                                            f"{jetson.get('power_mode') or NA}"
    lib_text = ", ".join(f"{k} {v}" for k, v in libs.items() if k != "python")
    commit = git["commit"][:12] + (" (dirty)" if git["dirty"] else "") if git["commit"] else f"{NA} ({git['reason']})"
    memory = env.get("memory_total_bytes")
    return [
        f"- **Device**: {env['label']}",
        f"- **CPU**: {cpu['model']} ({cpu.get('architecture', '')}), {cpu['physical_cores']} physical / "
        f"{cpu['logical_cores']} logical cores; RAM {_mb(memory)} MB",
        f"- **GPU**: {gpus}",
        f"- **Jetson**: {jetson_text}",
        f"- **OS**: {env['os']['platform']}; **Python** {env['python']}",
        f"- **Libraries**: {lib_text}",
        f"- **Commit**: {commit}",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``'s text."""
    cfg, weights, tel = report["config"], report["weights"] or {}, report["telemetry"]
    lines = [f"# edgediff bench: {report['model']['name']}, {cfg['steps']} steps, batch {cfg['batch']}", ""]
    if weights.get("synthetic"):
        lines += [f"> **WARNING: weights: {weights['label']}.** The {report['model']['name']} architecture ran with "
                  "seeded random weights: latency, memory and energy are real, the images are noise, and fidelity "
                  "compares noise with noise. Pass `--weights DIR` for a trained model.", ""]
    lines += [f"**Weights**: {weights.get('label', NA)}", ""]
    lines += _environment_lines(report)
    isolation = "a fresh subprocess per variant" if cfg["isolate"] else "one process for all variants"
    seeds = f"{cfg['seed']}..{cfg['seed'] + cfg['runs'] - 1}" if cfg["runs"] > 1 else str(cfg["seed"])
    lines += [
        f"- **Runs**: {cfg['warmup']} warm-up (not counted) + {cfg['runs']} timed per variant, seeds {seeds}, "
        f"eta {cfg['eta']}, through {cfg['through']}{' ' + cfg['gateway'] if cfg.get('gateway') else ''}; "
        f"{isolation}",
        f"- **Date**: {report['created_utc']}; **command**: `{report['command']}`",
        "",
        "## Results",
        "",
        results_table(report),
        "",
        "Latency is per call (batch of the run) in seconds; p90 is the total's. Speedup = baseline total p50 / "
        "variant total p50. Fidelity is against the baseline on the same seeds (PSNR over all pixels, SSIM with "
        "an 11x11 Gaussian window, max |Δlatent| of the final latents). MB = 10^6 bytes.",
    ]
    measured = [e for e in report["variants"] if e["status"] == "ok"]
    if measured:
        mem = measured[0]["memory"]
        lines += ["", f"**Peak mem** column: {mem['peak_label']}. How: {mem['method']}."]
    if tel["enabled"]:
        readers = ", ".join(tel["power_readers"]) or "none"
        idle = ", ".join(f"{d} {w:.3g} W" for d, w in tel["idle_power_w"].items()) or "none (no net energy)"
        lines += ["", f"**Energy**: power readers: {readers}; idle baseline: {idle}."]
        if tel["unavailable"]:
            lines += [f"Unavailable sensors: {'; '.join(tel['unavailable'])}."]
    else:
        lines += ["", "**Energy**: not measured (--no-energy)."]
    lines += _not_measured(report) + _energy_details(measured) + _stability(measured) + _quality(measured)
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("files"):
        lines += ["", "## Files", ""] + [f"- {k}: `{v}`" for k, v in report["files"].items() if isinstance(v, str)]
        lines += [f"- sample image: `{path}`" for path in report["files"].get("samples", [])]
    return "\n".join(lines) + "\n"


def _not_measured(report: dict[str, Any]) -> list[str]:
    others = [e for e in report["variants"] if e["status"] != "ok"]
    if not others:
        return []
    return ["", "### Not measured", ""] + [f"- {e['name']}: {e['status']}: {e['reason']}" for e in others]


def _energy_details(measured: list[dict[str, Any]]) -> list[str]:
    if not any(e["energy"]["domains"] for e in measured):
        return []  # the reasons are in the Energy paragraph and the warnings, once
    rows = []
    for e in measured:
        energy = e["energy"]
        if not energy["domains"]:
            rows.append([e["name"], NA, NA, "unavailable", NA, NA, NA, NA, NA, energy["reason"] or ""])
        for d in energy["domains"]:
            rows.append([e["name"], d["domain"], d["source"], d["label"], _num(d["energy_per_image_j"]),
                         _num(d["net_energy_per_image_j"]), _num(d["power_w"], ".3g"), _num(d["idle_power_w"], ".3g"),
                         d["part_of"] or "", d["reason"] or ""])
    header = ("Variant", "Domain", "Source", "Label", "Gross J/img", "Net J/img", "Power (W)", "Idle (W)", "Part of",
              "Note")
    return ["", "### Energy by domain", "", markdown_table(header, rows)]


def _stability(measured: list[dict[str, Any]]) -> list[str]:
    lines = ["", "### Stability (3 consecutive windows of the timed runs within 10%)", ""]
    for e in measured:
        s = e["stability"]
        if s["stable"] is None:
            lines.append(f"- {e['name']}: not checked: {s['reason']}")
        elif s["stable"]:
            lines.append(f"- {e['name']}: stable (window means within {s['spread']:.1%})")
        else:
            lines.append(f"- {e['name']}: **UNSTABLE**: {s['reason']}")
    return lines


def _quality(measured: list[dict[str, Any]]) -> list[str]:
    scored = [e for e in measured if e.get("quality")]
    if not scored:
        return []
    lines = ["", "### Quality", ""]
    for e in scored:
        q = e["quality"]
        summary = q.get("summary") if isinstance(q, dict) else None
        lines.append(f"- {e['name']}: {summary or ', '.join(f'{k}={v}' for k, v in q.items())}")
    return lines


# --- everything -------------------------------------------------------------------------------------------------
def write_report_files(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.csv`` and ``report.md`` into ``out`` (atomically); returns their paths."""
    paths = {"json": out / "report.json", "csv": out / "report.csv", "md": out / "report.md"}
    atomic_write_json(paths["json"], report)
    atomic_write_csv(paths["csv"], CSV_COLUMNS, csv_rows(report))
    atomic_write_text(paths["md"], render_markdown(report))
    return paths


def write_outputs(report: dict[str, Any], out: Path, *, plots: bool = True) -> dict[str, Path]:
    """Validate ``report`` and write every output into ``out``: plots, ``report.json``/``.csv``/``.md``.

    Fills ``report["files"]`` (paths relative to ``out``) before writing, so ``report.json`` lists its siblings.

    Raises:
        ReportSchemaError: the report does not match its schema (a bug: nothing is written).
    """
    report["files"] = {"json": "report.json", "csv": "report.csv", "md": "report.md"}
    if plots:
        report["files"].update(latency_png=LATENCY_PNG, energy_png=ENERGY_PNG, breakdown_png=BREAKDOWN_PNG)
    report["files"]["samples"] = [e["sample_image"] for e in report["variants"] if e["sample_image"]]
    validate_report(report)
    paths: dict[str, Path] = {}
    if plots:
        paths.update(write_plots(report, out))
    paths.update(write_report_files(report, out))
    return paths
