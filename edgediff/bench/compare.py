"""Compare bench reports across devices: the study's Table 4 (latency, peak memory, power, energy, relative columns).

Reports of different model presets or step counts measure different work: ``compare_reports`` refuses them unless
forced. Devices whose energy covers different power domains (a GPU board, a Jetson module's input rail, a phone's
battery) are compared anyway but the table says so, since the numbers then do not cover the same hardware.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgediff.bench.plots import pyplot, save_figure
from edgediff.bench.report_writers import MB, markdown_table
from edgediff.bench.schema import SCHEMA_VERSION, validate_report
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.telemetry.base import (
    DOMAIN_BATTERY,
    DOMAIN_CPU_PACKAGE,
    DOMAIN_FIXTURE,
    DOMAIN_GPU_BOARD,
    DOMAIN_SOC_TOTAL,
)

COMPARE_KIND = "edgediff-compare"
SELECT_FASTEST = "fastest"
SELECT_BASELINE = "baseline"
DOMAIN_DESCRIPTIONS = {
    DOMAIN_GPU_BOARD: "GPU board only (NVML)",
    DOMAIN_SOC_TOTAL: "whole module input rail (Jetson)",
    DOMAIN_BATTERY: "whole phone, from its battery",
    DOMAIN_CPU_PACKAGE: "CPU package (RAPL or estimate)",
    DOMAIN_FIXTURE: "fixture (test numbers, not measured)",
}


class ReportMismatchError(EdgediffError):
    """The reports measured different work (model preset or steps); ``--force`` compares them anyway."""


class IncompleteReportError(EdgediffError):
    """A report of a bench cut short (``incomplete``); ``--allow-incomplete`` compares it anyway."""


def load_report(path: str | Path, *, allow_incomplete: bool = False) -> dict[str, Any]:
    """Read and validate one ``report.json``.

    Args:
        path: The report.
        allow_incomplete: Accept a report marked ``incomplete`` (a bench stopped by a signal).

    Raises:
        InvalidArgumentError: the file is missing or not JSON.
        ReportSchemaError: it is not a bench report this version reads.
        IncompleteReportError: it is marked incomplete and ``allow_incomplete`` is False.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgumentError(f"report {path}: cannot read it: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"report {path}: not JSON: {exc}") from exc
    if not isinstance(report, dict):
        raise InvalidArgumentError(f"report {path}: not a JSON object")
    validate_report(report, source=str(path))
    incomplete = report.get("incomplete")
    if incomplete and not allow_incomplete:
        raise IncompleteReportError(f"report {path} is incomplete ({incomplete.get('reason')}; not measured: "
                                    f"{', '.join(incomplete.get('not_measured', [])) or 'none'}); rerun the bench, "
                                    "or pass --allow-incomplete to compare what it measured")
    return report


def select_entry(report: dict[str, Any], selector: str, *, source: str) -> dict[str, Any]:
    """The variant entry a comparison row shows: ``fastest`` (lowest total p50), ``baseline``, or a variant name.

    Raises:
        InvalidArgumentError: the report has no measured variant of that name.
    """
    measured = [e for e in report["variants"] if e["status"] == "ok"]
    if not measured:
        raise InvalidArgumentError(f"report {source}: no variant was measured")
    if selector == SELECT_FASTEST:
        return min(measured, key=lambda e: e["latency"]["total"]["p50_s"])
    name = report["baseline"] if selector == SELECT_BASELINE else selector
    entry = next((e for e in measured if e["name"] == name), None)
    if entry is None:
        raise InvalidArgumentError(f"--variant: report {source} has no measured {name!r}; measured: "
                                   f"{', '.join(e['name'] for e in measured)}")
    return entry


def _check_same_work(reports: list[tuple[str, dict[str, Any]]], force: bool) -> list[str]:
    notes = []
    for key, what in (("model", "model presets"), ("steps", "step counts")):
        values = {src: (r["model"]["name"] if key == "model" else r["config"]["steps"]) for src, r in reports}
        if len(set(values.values())) > 1:
            listing = ", ".join(f"{src}: {v}" for src, v in values.items())
            if not force:
                raise ReportMismatchError(f"the reports have different {what} ({listing}): they measured different "
                                          "work; pass --force to compare them anyway")
            notes.append(f"FORCED: different {what} ({listing})")
    for key in ("batch", "eta"):
        values = {src: r["config"][key] for src, r in reports}
        if len(set(values.values())) > 1:
            notes.append(f"different {key}: " + ", ".join(f"{src}: {v}" for src, v in values.items()))
    weights = {src: (r["weights"] or {}).get("sha256") for src, r in reports}
    if len(set(weights.values())) > 1:
        notes.append("different weights: " + ", ".join(f"{src}: {(w or 'n/a')[:12]}" for src, w in weights.items()))
    return notes


def _unique_labels(reports: list[tuple[str, dict[str, Any]]]) -> list[str]:
    labels, seen = [], {}
    for _src, report in reports:
        label = report["environment"]["label"]
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return labels


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def compare_reports(
    reports: list[tuple[str, dict[str, Any]]],
    *,
    reference: str | None = None,
    variant: str = SELECT_FASTEST,
    force: bool = False,
) -> dict[str, Any]:
    """The cross-device comparison of ``reports`` (``(source, report)`` pairs) as a dict.

    Args:
        reports: At least two validated reports with where they came from.
        reference: The reference device's label (default: the first report's).
        variant: Which variant of each report: ``fastest``, ``baseline`` or a variant name.
        force: Compare reports of different presets or step counts anyway (noted in the output).

    Raises:
        ReportMismatchError: different presets or step counts without ``force``.
        InvalidArgumentError: fewer than two reports, an unknown reference, or a variant a report lacks.
    """
    if len(reports) < 2:
        raise InvalidArgumentError(f"compare needs at least two reports, got {len(reports)}")
    notes = _check_same_work(reports, force)
    notes += [f"{src}: an INCOMPLETE bench ({report['incomplete']['reason']}): only the variants it finished"
              for src, report in reports if report.get("incomplete")]
    labels = _unique_labels(reports)
    reference = reference or labels[0]
    if reference not in labels:
        raise InvalidArgumentError(f"--reference: no device called {reference!r}; devices: {', '.join(labels)}")
    rows = []
    for label, (src, report) in zip(labels, reports, strict=True):
        entry = select_entry(report, variant, source=src)
        head = entry["energy"]["headline"]
        rows.append({
            "device": label,
            "report": src,
            "variant": entry["name"],
            "latency_s": entry["latency"]["total"]["p50_s"],
            "latency_p90_s": entry["latency"]["total"]["p90_s"],
            "peak_memory_bytes": entry["memory"]["peak_bytes"],
            "peak_memory_kind": entry["memory"]["peak_kind"],
            "power_w": head["power_w"] if head else None,
            "energy_per_image_j": head["energy_per_image_j"] if head else None,
            "energy_label": head["label"] if head else None,
            "power_domains": head["domains"] if head else [],
            "energy_unavailable_reason": None if head else entry["energy"]["reason"],
        })
    ref_row = rows[labels.index(reference)]
    for row in rows:
        row["latency_vs_reference"] = _ratio(row["latency_s"], ref_row["latency_s"])
        row["energy_vs_reference"] = _ratio(row["energy_per_image_j"], ref_row["energy_per_image_j"])
    domain_sets = {tuple(r["power_domains"]) for r in rows if r["power_domains"]}
    domains_differ = len(domain_sets) > 1
    if domains_differ:
        listing = "; ".join(
            f"{r['device']}: " + (", ".join(f"{d} ({DOMAIN_DESCRIPTIONS.get(d, d)})" for d in r["power_domains"])
                                  if r["power_domains"] else "none")
            for r in rows)
        notes.append(f"power domains differ between devices, so energy and power do not cover the same hardware: "
                     f"{listing}")
    first = reports[0][1]
    return {
        "kind": COMPARE_KIND,
        "schema_version": SCHEMA_VERSION,
        "model": first["model"]["name"],
        "steps": first["config"]["steps"],
        "batch": first["config"]["batch"],
        "variant_selector": variant,
        "reference": reference,
        "forced": force,
        "domains_differ": domains_differ,
        "notes": notes,
        "rows": rows,
    }


def _fmt(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def render_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as Markdown (Table 4 of the study, plus the variant each device ran)."""
    selector = {SELECT_FASTEST: "each device's fastest measured variant",
                SELECT_BASELINE: "each device's baseline"}.get(comparison["variant_selector"],
                                                               f"variant {comparison['variant_selector']}")
    lines = [f"# edgediff compare: {comparison['model']}, {comparison['steps']} steps, batch {comparison['batch']}",
             "", f"Reference device: **{comparison['reference']}**; rows show {selector}.", ""]
    dagger = " †" if comparison["domains_differ"] else ""
    header = ("Device", "Variant", "Latency p50 (s)", "Peak mem (MB)", "Power (W)", "Energy/img (J)",
              "Latency vs ref", "Energy vs ref", "Power domain")
    rows = []
    for r in comparison["rows"]:
        tag = "" if r["energy_label"] in (None, "measured") else f" ({r['energy_label']})"
        rows.append([
            r["device"], r["variant"], _fmt(r["latency_s"], ".4g"),
            "n/a" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / MB:,.0f}",
            _fmt(r["power_w"], ".3g") + (tag if r["power_w"] is not None else ""),
            _fmt(r["energy_per_image_j"], ".4g") + (tag if r["energy_per_image_j"] is not None else ""),
            _fmt(r["latency_vs_reference"], ".3f") + ("x" if r["latency_vs_reference"] is not None else ""),
            _fmt(r["energy_vs_reference"], ".3f") + ("x" if r["energy_vs_reference"] is not None else "") + dagger
            if r["energy_vs_reference"] is not None else "n/a",
            ", ".join(r["power_domains"]) or "unavailable",
        ])
    lines.append(markdown_table(header, rows))
    lines += ["", "Latency and energy relative to the reference device (below 1 = less than the reference). "
                  "MB = 10^6 bytes."]
    unavailable = [f"- {r['device']}: energy {r['energy_unavailable_reason']}" for r in comparison["rows"]
                   if r["energy_unavailable_reason"]]
    if unavailable:
        lines += ["", *unavailable]
    if comparison["notes"]:
        lines += ["", "## Notes", ""] + [f"- {'† ' if 'power domains' in n else ''}{n}" for n in comparison["notes"]]
    return "\n".join(lines) + "\n"


def plot_comparison(comparison: dict[str, Any], path: Path) -> Path:
    """Latency and energy per image per device, side by side (missing energy is marked n/a)."""
    plt = pyplot()
    rows = comparison["rows"]
    names = [f"{r['device']}\n{r['variant']}" for r in rows]
    fig, (ax_lat, ax_en) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(rows)), 4))
    ax_lat.bar(names, [r["latency_s"] for r in rows], color="#4C72B0")
    ax_lat.set_ylabel("latency per call, seconds (p50)")
    energies = [r["energy_per_image_j"] or 0.0 for r in rows]
    bars = ax_en.bar(names, energies, color="#DD8452")
    for bar, r in zip(bars, rows, strict=True):
        label = "n/a" if r["energy_per_image_j"] is None else (
            "" if r["energy_label"] == "measured" else r["energy_label"])
        if label:
            ax_en.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=7)
        if r["energy_label"] not in (None, "measured"):
            bar.set_hatch("//")
    ax_en.set_ylabel("energy per image, joules")
    for ax in (ax_lat, ax_en):
        plt.setp(ax.get_xticklabels(), fontsize=7)
    note = " (power domains differ)" if comparison["domains_differ"] else ""
    fig.suptitle(f"{comparison['model']}, {comparison['steps']} steps; reference {comparison['reference']}{note}",
                 fontsize=9)
    return save_figure(fig, path)
