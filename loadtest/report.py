"""The load test's report: ``loadtest.json`` (machine-readable), ``loadtest.md`` (for people) and a timeline PNG.

Every file is written atomically, with the helpers a bench report uses (``edgediff.io``, ``markdown_table``); the
latency statistics and the energy rows are the core's too (``edgediff.stats``, ``edgediff.telemetry.window``), so a
load test and a bench speak of the same numbers with the same names. Energy that is estimated, or comes from a
fixture, is labelled so in both files; energy that could not be measured is "unavailable" with its reason, never a
number.
"""

from __future__ import annotations

import datetime as dt
import platform
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from edgediff.availability import require
from edgediff.bench.plots import save_figure
from edgediff.bench.report_writers import markdown_table
from edgediff.io import atomic_write_csv, atomic_write_json, atomic_write_text
from edgediff.stats import LatencyStats
from loadtest.energy import EnergyResult
from loadtest.records import Window
from loadtest.summary import LocustTotals, Summary, TimelineBin

SCHEMA = "edgediff.loadtest/2"
"""2: latency as the core's ``LatencyStats`` (``n``, ``std_s``), energy domains as the core's ``energy_row``."""
JSON_NAME = "loadtest.json"
MARKDOWN_NAME = "loadtest.md"
CSV_NAME = "loadtest.csv"
LATENCY_COLUMNS = tuple(f.name for f in fields(LatencyStats))
CSV_COLUMNS = ("name", "requests", "failures", "images", *LATENCY_COLUMNS)
TIMELINE_PNG = "loadtest_timeline.png"


def iso(t_unix_s: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    if t_unix_s is None:
        return None
    stamp = dt.datetime.fromtimestamp(t_unix_s, tz=dt.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(value_s: float | None) -> str:
    return "-" if value_s is None else f"{value_s * 1000.0:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def build_report(
    *,
    config: dict[str, Any],
    summary: Summary,
    energy: EnergyResult,
    window: Window,
    verdict: dict[str, Any],
    locust: LocustTotals | None,
    files: dict[str, str],
    notes: list[str],
    load: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the JSON report.

    Args:
        config: What ran (target, users, spawn rate, run time, workers, mix...).
        summary: Counts, latency and throughput.
        energy: Energy per image, or why unavailable.
        window: The measurement window.
        verdict: ``{"status": "ok"|"failed", "reasons": [...]}``.
        locust: Locust's own aggregated totals (cross-check), if its CSV exists.
        files: Output files by role, relative to the report's folder.
        notes: Caveats to show.
        load: How the load was offered (``loadtest.outcome.load_section``: mode, most calls in flight, and the open
            loop's arrivals sent and missed).
    """
    locust_part = None
    if locust is not None:
        locust_part = {
            **asdict(locust),
            "matches_records": locust.requests == summary.requests and locust.failures == summary.failed,
        }
    return {
        "schema": SCHEMA,
        "created": iso(time.time()),
        "client_host": platform.node(),
        "config": config,
        "window": {
            "start_unix_s": window.start_unix_s,
            "end_unix_s": window.end_unix_s,
            "start_iso": iso(window.start_unix_s),
            "end_iso": iso(window.end_unix_s),
            "duration_s": window.duration_s,
        },
        "verdict": verdict,
        "load": load or {},
        "requests": summary.to_dict(),
        "energy": energy.to_dict(),
        "locust": locust_part,
        "notes": notes,
        "files": files,
    }


def _load_line(cfg: dict[str, Any], load: dict[str, Any]) -> str:
    arrivals = load.get("arrivals")
    if arrivals is None:
        return f"{cfg['users']} users in a closed loop (spawn rate {cfg['spawn_rate']:g}/s)"
    return (f"open loop, Poisson arrivals at {arrivals['rate_per_s']:g}/s from a pool of {cfg['users']} users: "
            f"{arrivals['sent']} sent, **{arrivals['missed']} missed** (no user free on time), latest send "
            f"{arrivals['max_lag_s'] * 1000:.0f} ms after its time")


def render_markdown(report: dict[str, Any]) -> str:
    """The report for people: what ran, requests and failures, latency, throughput, energy per image, files."""
    cfg, window, req = report["config"], report["window"], report["requests"]
    processes = f"Locust master + {cfg['workers']} workers" if cfg["workers"] else "one Locust process"
    lines = [
        f"# Load test of {cfg['target']}",
        "",
        f"- verdict: **{report['verdict']['status']}**"
        + "".join(f"\n  - {reason}" for reason in report["verdict"]["reasons"]),
        f"- window: {window['start_iso']} to {window['end_iso']} ({window['duration_s']:.3f} s)",
        f"- load: {_load_line(cfg, report.get('load') or {})} for {cfg['run_time_s']} s, "
        f"{processes}{', smoke profile' if cfg.get('smoke') else ''}",
        f"- mix: variants {cfg['mix']['variants']}, steps {cfg['mix']['steps']}, batch {cfg['mix']['batch']}, "
        f"eta {cfg['mix']['eta']}, seeds {cfg['mix']['seeds']}",
        "",
        "## Requests",
        "",
        markdown_table(("requests", "succeeded", "failed", "cancelled at stop", "images", "requests/s", "images/s"),
                       [[str(req["requests"]), str(req["succeeded"]), str(req["failed"]),
                         str(req["cancelled_at_stop"]), str(req["images"]), f"{req['requests_per_s']:.2f}",
                         f"{req['images_per_s']:.2f}"]]),
        "",
        "Throughput counts the calls completed inside the window. Calls cancelled at stop were in flight when Locust "
        "stopped its users: not failures of the server.",
    ]
    if req["failures_by_status"]:
        lines += ["", "### Failures by gRPC status", "",
                  markdown_table(("status", "count"), [[status, str(count)]
                                                       for status, count in req["failures_by_status"].items()]),
                  "",
                  markdown_table(("message", "count"), [[msg.replace("|", "/"), str(count)]
                                                        for msg, count in req["failure_messages"].items()])]
    rows = [*req["by_name"], {"name": "**all**", "requests": req["requests"], "failures": req["failed"],
                              "images": req["images"], "latency": req["latency"]}]
    latency_rows = []
    for row in rows:
        lat = row["latency"] or {}
        latency_rows.append([row["name"], str(row["requests"]), str(row["failures"]), str(row["images"]),
                             *(_ms(lat.get(key)) for key in ("p50_s", "p90_s", "p95_s", "p99_s", "max_s"))])
    lines += [
        "",
        "## Latency of successful calls (ms, exact percentiles)",
        "",
        markdown_table(("name", "calls", "failures", "images", "p50", "p90", "p95", "p99", "max"), latency_rows),
    ]
    lines += ["", "## Energy per image", ""]
    energy = report["energy"]
    if not energy["available"]:
        lines.append(f"unavailable: {energy['reason']}")
    else:
        energy_rows = [
            [d["domain"], d["source"], d["label"], _num(d["gross_j"]), _num(d["power_w"]),
             _num(d["energy_per_image_j"], 4), _num(d["idle_power_w"]),
             _num(d["net_energy_per_image_j"], 4) if d["net_j"] is not None else "unavailable: no idle baseline"]
            for d in energy["domains"]
        ]
        lines += [
            f"- method: {energy['method']} ({energy['url']})",
            f"- images: {energy['images']} ({energy['images_source']}) over {energy['window_s']:.3f} s",
            "",
            markdown_table(("domain", "source", "label", "gross J", "mean W", "gross J/image", "idle W", "net J/image"),
                           energy_rows),
            "",
        ]
        lines.append("Domains are not additive when one is part of another (a Jetson's GPU rail is inside its input "
                     "rail). Net = gross - idle power x window.")
    for note in energy.get("notes", []) + report.get("notes", []):
        lines.append(f"- note: {note}")
    locust = report.get("locust")
    if locust:
        same = "the same counts as the records" if locust["matches_records"] else "NOT the same counts as the records"
        lines += ["", "## Locust's own totals", "",
                  f"{locust['requests']} requests, {locust['failures']} failures in `locust_final.json`: {same}. "
                  "Locust's CSVs are snapshots taken every second (the last up to 1 s before the end); its "
                  "percentiles are rounded to histogram buckets."]
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`: {path}" for name, path in report["files"].items()]
    return "\n".join(lines) + "\n"


def plot_timeline(bins: list[TimelineBin], title: str, path: Path) -> Path:
    """Latency (p50, p95) and throughput (requests/s, images/s, failures/s) as rolling rates over the window."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    t = [b.t_s for b in bins]
    fig, (ax_lat, ax_tp) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for attr, label in (("p50_s", "p50"), ("p95_s", "p95")):
        ax_lat.plot(t, [float("nan") if getattr(b, attr) is None else getattr(b, attr) * 1000.0 for b in bins],
                    marker=".", label=label)
    ax_lat.set_ylabel("latency of successful calls (ms)")
    ax_lat.set_ylim(bottom=0)
    ax_lat.legend(loc="best")
    ax_lat.set_title(title)
    ax_tp.plot(t, [b.images_per_s for b in bins], label="images/s")
    ax_tp.plot(t, [b.requests_per_s for b in bins], label="requests/s", linestyle="--")
    if any(b.failures_per_s for b in bins):
        ax_tp.plot(t, [b.failures_per_s for b in bins], label="failures/s", color="tab:red")
    width_s = max((b.width_s for b in bins), default=0.0)
    ax_tp.set_ylabel(f"per second (completed, rolling {width_s:.0f} s)")
    ax_tp.set_xlabel("seconds since the window start")
    ax_tp.set_ylim(bottom=0)
    ax_tp.legend(loc="best")
    for ax in (ax_lat, ax_tp):
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per request name and one for all calls (``CSV_COLUMNS``); seconds, empty where nothing succeeded."""
    req = report["requests"]
    rows = []
    for row in [*req["by_name"], {"name": "all", "requests": req["requests"], "failures": req["failed"],
                                  "images": req["images"], "latency": req["latency"]}]:
        lat = row["latency"] or {}
        rows.append({"name": row["name"], "requests": row["requests"], "failures": row["failures"],
                     "images": row["images"], **{key: lat.get(key, "") for key in LATENCY_COLUMNS}})
    return rows


def write_report(report: dict[str, Any], bins: list[TimelineBin], out_dir: Path) -> dict[str, Path]:
    """Write the JSON, the CSV, the Markdown and the timeline PNG into ``out_dir``; returns their paths."""
    paths = {"json": out_dir / JSON_NAME, "csv": out_dir / CSV_NAME, "markdown": out_dir / MARKDOWN_NAME,
             "timeline": out_dir / TIMELINE_PNG}
    cfg = report["config"]
    arrivals = (report.get("load") or {}).get("arrivals")
    offered = f"{arrivals['rate_per_s']:g} arrivals/s" if arrivals else f"{cfg['users']} users"
    title = f"{cfg['target']}: {offered}, {report['requests']['images']} images"
    plot_timeline(bins, title, paths["timeline"])
    atomic_write_json(paths["json"], report)
    atomic_write_csv(paths["csv"], CSV_COLUMNS, csv_rows(report))
    atomic_write_text(paths["markdown"], render_markdown(report))
    return paths


def console_summary(report: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    """The few lines a person reads on the console: counts, throughput, latency, open-loop arrivals, energy."""
    req, energy = report["requests"], report["energy"]
    lat = req["latency"] or {}

    def ms(key: str) -> str:
        return f"{lat[key] * 1000:.1f}" if key in lat else "-"

    lines = [f"requests {req['requests']} (failed {req['failed']}, cancelled at stop {req['cancelled_at_stop']}), "
             f"images {req['images']}, {req['images_per_s']:.2f} images/s over {req['window_s']:.1f} s",
             f"latency ms: p50 {ms('p50_s')}  p90 {ms('p90_s')}  p95 {ms('p95_s')}  p99 {ms('p99_s')}  "
             f"max {ms('max_s')}"]
    arrivals = (report.get("load") or {}).get("arrivals")
    if arrivals:
        lines.append(f"arrivals at {arrivals['rate_per_s']:g}/s: {arrivals['sent']} sent, {arrivals['missed']} "
                     f"missed (latest send {arrivals['max_lag_s'] * 1000:.0f} ms after its time)")
    if not energy["available"]:
        lines.append(f"energy per image: unavailable: {energy['reason']}")
    for d in energy["domains"]:
        net = f"{d['net_energy_per_image_j']:.4f} J net" if d["net_energy_per_image_j"] is not None \
            else "net unavailable"
        gross = f"{d['energy_per_image_j']:.4f} J" if d["energy_per_image_j"] is not None else "-"
        lines.append(f"energy per image [{d['domain']}/{d['source']}, {d['label']}]: {gross} gross, {net}")
    lines.append(f"report: {paths['markdown']}")
    return lines
