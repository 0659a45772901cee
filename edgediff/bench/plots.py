"""PNG plots (matplotlib, Agg backend): a bench report's latency, energy, denoise/decode; tune's speed vs memory.

Every plot is written atomically. Energy that is estimated or comes from a fixture is hatched and labelled so in
the axis; when no variant has energy, the energy plot says "unavailable" with the reasons instead of bars.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

from edgediff.availability import require
from edgediff.io import atomic_write_bytes

LATENCY_PNG = "latency.png"
ENERGY_PNG = "energy.png"
BREAKDOWN_PNG = "breakdown.png"
_DPI = 110


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed); an install hint when matplotlib is missing."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _measured(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in report["variants"] if e["status"] == "ok"]


def _title(report: dict[str, Any], what: str) -> str:
    cfg = report["config"]
    synthetic = " [synthetic weights]" if (report.get("weights") or {}).get("synthetic") else ""
    return f"{what}: {report['model']['name']}, {cfg['steps']} steps, {report['environment']['label']}{synthetic}"


def plot_latency(report: dict[str, Any], path: Path) -> Path:
    """Total latency p50 per variant, with a bar to p90 and the speedup vs the baseline."""
    plt = pyplot()
    entries = _measured(report)
    names = [e["name"] for e in entries]
    p50 = [e["latency"]["total"]["p50_s"] for e in entries]
    p90 = [e["latency"]["total"]["p90_s"] for e in entries]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.5 * max(1, len(entries))))
    bars = ax.barh(names, p50, xerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90, strict=True)]],
                   color="#4C72B0", capsize=3)
    for bar, e, right in zip(bars, entries, p90, strict=True):
        speedup = e["speedup_vs_baseline"]
        text = f"  {bar.get_width():.3g} s" + (f" ({speedup:.2f}x)" if speedup is not None else "")
        ax.text(right, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("total latency per call, seconds (p50; whisker to p90)")
    ax.set_title(_title(report, "Latency"), fontsize=9)
    ax.margins(x=0.3)
    return save_figure(fig, path)


def plot_energy(report: dict[str, Any], path: Path) -> Path:
    """Energy per image per variant (gross, net beside it when an idle baseline exists), labelled by provenance."""
    plt = pyplot()
    entries = [e for e in _measured(report) if e["energy"]["headline"] is not None]
    if not entries:
        fig, ax = plt.subplots(figsize=(8, 2.5))
        reasons = next((e["energy"]["reason"] for e in _measured(report)), None) or "no variant was measured"
        ax.axis("off")
        ax.text(0.5, 0.5, "Energy per image: unavailable\n\n" + "\n".join(textwrap.wrap(reasons, 100)),
                ha="center", va="center", fontsize=8, wrap=True)
        ax.set_title(_title(report, "Energy"), fontsize=9)
        return save_figure(fig, path)
    labels, gross, net, hatches = [], [], [], []
    for e in entries:
        head = e["energy"]["headline"]
        tag = "" if head["label"] == "measured" else f" ({head['label']})"
        labels.append(f"{e['name']}{tag}")
        gross.append(head["energy_per_image_j"])
        net.append(head["net_energy_per_image_j"])
        hatches.append("" if head["label"] == "measured" else "//")
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.6 * len(entries)))
    ys = list(range(len(entries)))
    height = 0.4 if any(n is not None for n in net) else 0.7
    bars = ax.barh([y - height / 2 if height < 0.7 else y for y in ys], gross, height=height, color="#DD8452",
                   label="gross")
    for bar, hatch in zip(bars, hatches, strict=True):
        bar.set_hatch(hatch)
    if height < 0.7:
        ax.barh([y + height / 2 for y in ys], [n or 0 for n in net], height=height, color="#55A868",
                label="net of idle")
        ax.legend(fontsize=8)
    for y, value in zip(ys, gross, strict=True):
        ax.text(value, y, f" {value:.3g} J", va="center", fontsize=8)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    domains = sorted({d for e in entries for d in e["energy"]["headline"]["domains"]})
    hatched = "; hatched = not measured (estimated or fixture)" if any(hatches) else ""
    ax.set_xlabel(f"energy per image, joules (domains: {', '.join(domains)}){hatched}")
    ax.set_title(_title(report, "Energy"), fontsize=9)
    ax.margins(x=0.25)
    return save_figure(fig, path)


def plot_breakdown(report: dict[str, Any], path: Path) -> Path:
    """Denoise vs decode p50 per variant, stacked (the study's Figure 4)."""
    plt = pyplot()
    entries = _measured(report)
    names = [e["name"] for e in entries]
    denoise = [e["latency"]["denoise"]["p50_s"] for e in entries]
    decode = [e["latency"]["decode"]["p50_s"] for e in entries]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(entries) + 2), 4))
    ax.bar(names, denoise, color="#4C72B0", label=f"denoise ({report['config']['steps']} DDIM steps)")
    ax.bar(names, decode, bottom=denoise, color="#C44E52", label="VQ decode")
    for i, (a, b) in enumerate(zip(denoise, decode, strict=True)):
        share = b / (a + b) if a + b > 0 else 0.0
        ax.text(i, a + b, f"{a + b:.3g} s\ndecode {share:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("seconds per call (p50)")
    ax.set_title(_title(report, "Denoise vs decode"), fontsize=9)
    ax.legend(fontsize=8)
    ax.margins(y=0.2)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    return save_figure(fig, path)


def plot_speed_memory(rows: list[dict[str, Any]], chosen: str, path: Path, *, max_memory_mb: float | None = None,
                      title: str = "") -> Path:
    """Seconds per image against process peak RSS, one point per gate-passing row, the chosen one marked.

    Args:
        rows: ``{"row", "total_p50_s", "peak_mb"}`` each (``edgediff tune``'s profile candidates); rows without a
            peak are left out.
        chosen: The chosen row's name (drawn as a star).
        path: Where the PNG goes.
        max_memory_mb: A memory budget, drawn as a vertical line.
        title: The plot's title.
    """
    plt = pyplot()
    points = [r for r in rows if r.get("peak_mb") is not None and r.get("total_p50_s") is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in points:
        mark = r["row"] == chosen
        ax.scatter(r["peak_mb"], r["total_p50_s"], s=140 if mark else 40, marker="*" if mark else "o",
                   color="#C44E52" if mark else "#4C72B0", zorder=3)
        ax.annotate(r["row"] + (" (chosen)" if mark else ""), (r["peak_mb"], r["total_p50_s"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if max_memory_mb is not None:
        ax.axvline(max_memory_mb, color="#55A868", linestyle="--", label=f"--max-memory {max_memory_mb:g} MiB")
        ax.legend(fontsize=8)
    ax.set_xlabel("process peak RSS, MiB (build, warm-up and timed runs)")
    ax.set_ylabel("seconds per image (p50)")
    ax.set_title(title or "Speed vs memory", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    return save_figure(fig, path)


def write_plots(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write the three plots into ``out``; returns their paths by name."""
    return {
        "latency_png": plot_latency(report, out / LATENCY_PNG),
        "energy_png": plot_energy(report, out / ENERGY_PNG),
        "breakdown_png": plot_breakdown(report, out / BREAKDOWN_PNG),
    }
