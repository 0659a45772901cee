"""A load sweep: one load test per level of a ladder of concurrencies or of rates, and where the server saturates.

``edgediff loadtest --sweep users=1,2,4,8`` runs closed loops of 1, 2, 4 and 8 users; ``--sweep rate=0.5,1,2`` runs
open loops at those Poisson arrival rates. Each level is a whole load test (``loadtest.session``) with its own report
in ``<out>/<kind>-<level>/``; the sweep then writes ``sweep.json``, ``sweep.md`` and ``sweep_throughput_latency.png``
(p50/p99 against images/s, the curve whose knee is the capacity), the way perf_analyzer's concurrency and
request-rate ranges and MLPerf's server scenario find it.

* **saturation throughput**: the most images/s any reached level served, counted between its first and last
  completion (``steady_images_per_s``: a closed loop's calls cut short at the end of the window would cost it a
  few per cent, and a served rate would not compare with an in-process seconds-per-image);
* **knee**: the lowest level that served at least ``KNEE_FRACTION`` of it (more load past it adds latency, not
  throughput);
* a level **not reached** says why: a closed loop whose calls never had that many in flight at once, or an open
  loop whose client missed arrivals (it could not send them on time) or could not start.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgediff.availability import require
from edgediff.bench.plots import save_figure
from edgediff.bench.report_writers import markdown_table
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.io import atomic_write_json, atomic_write_text
from loadtest.session import LoadTestConfig, Outcome, run_load_test

logger = logging.getLogger(__name__)

KINDS = ("users", "rate")
KNEE_FRACTION = 0.95
"""The knee is the first level serving at least this share of the saturation throughput."""
SATURATED_FRACTION = 0.9
"""An open-loop level whose served rate is below this share of its offered rate is past saturation."""
SWEEP_JSON = "sweep.json"
SWEEP_MARKDOWN = "sweep.md"
SWEEP_PNG = "sweep_throughput_latency.png"


@dataclass(frozen=True)
class Ladder:
    """What a sweep varies: ``users`` (closed loops) or ``rate`` (open loops, arrivals per second), and the levels."""

    kind: str
    levels: tuple[float, ...]

    @classmethod
    def parse(cls, text: str, flag: str = "--sweep") -> Ladder:
        """Parse ``users=1,2,4,8`` or ``rate=0.5,1,2`` (levels strictly increasing).

        Raises:
            InvalidArgumentError: Anything else, naming ``flag``.
        """
        kind, sep, values = str(text).strip().partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in KINDS:
            raise InvalidArgumentError(f"{flag}: expected users=N,N,... or rate=R,R,... (e.g. users=1,2,4,8), "
                                       f"got {text!r}")
        try:
            levels = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise InvalidArgumentError(f"{flag}: levels must be numbers, got {values!r}") from None
        if not all(math.isfinite(v) and v > 0 for v in levels):
            raise InvalidArgumentError(f"{flag}: levels must be > 0, got {values!r}")
        if kind == "users" and not all(v == int(v) for v in levels):
            raise InvalidArgumentError(f"{flag}: users levels must be whole numbers, got {values!r}")
        if any(b <= a for a, b in itertools.pairwise(levels)):
            raise InvalidArgumentError(f"{flag}: levels must increase, got {values!r}")
        return cls(kind, levels)

    def label(self, level: float) -> str:
        """``users-4`` or ``rate-0.5``: the level's folder and name."""
        return f"{self.kind}-{level:g}"


def level_config(base: LoadTestConfig, ladder: Ladder, level: float) -> LoadTestConfig:
    """The load test of one level: ``base`` with its users (all started in the first second) or its rate."""
    out_dir = base.out_dir / ladder.label(level)
    if ladder.kind == "users":
        users = int(level)
        return dataclasses.replace(base, users=users, spawn_rate=float(users), rate_per_s=None, out_dir=out_dir)
    return dataclasses.replace(base, rate_per_s=level, spawn_rate=float(base.users), out_dir=out_dir)


def level_row(ladder: Ladder, level: float, outcome: Outcome) -> dict[str, Any]:
    """One level's line of the sweep: throughput, latency, failures, and whether the level was reached."""
    row: dict[str, Any] = {"level": level, "label": ladder.label(level), "exit_code": outcome.exit_code}
    report = outcome.report
    if report is None:
        return {**row, "reached": False, "why_not": outcome.message or "no report", "images_per_s": None}
    req, load = report["requests"], report.get("load") or {}
    lat = req["latency"] or {}
    arrivals = load.get("arrivals")
    row.update({
        "images_per_s": req["images_per_s"], "steady_images_per_s": req.get("steady_images_per_s"),
        "requests_per_s": req["requests_per_s"], "requests": req["requests"],
        "failed": req["failed"], "failures_by_status": req["failures_by_status"],
        "p50_s": lat.get("p50_s"), "p90_s": lat.get("p90_s"), "p99_s": lat.get("p99_s"),
        "max_in_flight": load.get("max_in_flight"), "arrivals": arrivals, "report": outcome.paths.get("json"),
    })  # fmt: skip
    why_not = None
    if ladder.kind == "users" and (load.get("max_in_flight") or 0) < level:
        why_not = f"at most {load.get('max_in_flight')} calls were in flight at once, not {level:g}"
    if arrivals and arrivals["missed"]:
        why_not = (f"the client missed {arrivals['missed']} of {arrivals['sent'] + arrivals['missed']} arrivals "
                   f"(no user free on time): {level:g}/s was not offered")
    row["reached"] = why_not is None
    row["why_not"] = why_not
    if ladder.kind == "rate":
        served_rate = req["requests_per_s"]
        row["saturated"] = served_rate < SATURATED_FRACTION * level
    return row


def served_rate(row: dict[str, Any]) -> float | None:
    """A level's throughput for the saturation: its steady images/s (``summary.Summary``), else its window's."""
    steady = row.get("steady_images_per_s")
    return steady if steady is not None else row.get("images_per_s")


def knee(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Saturation throughput (the most steady images/s of a reached level) and the knee (first level within 95 %)."""
    reached = [r for r in rows if r.get("reached") and served_rate(r) is not None]
    if not reached:
        return {"saturation_images_per_s": None, "knee_level": None, "knee_p99_s": None,
                "note": "no level was reached"}
    best = max(served_rate(r) for r in reached)
    first = next(r for r in reached if served_rate(r) >= KNEE_FRACTION * best)
    top = reached[-1]
    note = None
    if served_rate(top) >= KNEE_FRACTION * best and top is first:
        note = "the highest level is the knee: the server may not be saturated yet (add higher levels)"
    return {"saturation_images_per_s": best, "knee_level": first["level"], "knee_label": first["label"],
            "knee_p50_s": first.get("p50_s"), "knee_p99_s": first.get("p99_s"), "note": note}


def sweep_line(row: dict[str, Any]) -> str:
    """One level on the console."""
    def ms(key: str) -> str:
        return f"{row[key] * 1000:.0f}" if row.get(key) is not None else "-"

    rate = served_rate(row)
    ips = f"{rate:.3f}" if rate is not None else "-"
    state = "" if row.get("reached") else f"  NOT REACHED: {row.get('why_not')}"
    return (f"{row['label']}: {ips} images/s, p50 {ms('p50_s')} ms, p90 {ms('p90_s')} ms, p99 {ms('p99_s')} ms, "
            f"failed {row.get('failed', '-')}{' (saturated)' if row.get('saturated') else ''}{state}")


def render_markdown(sweep: dict[str, Any]) -> str:
    """The sweep for people: one row per level, then the saturation throughput and the knee."""

    def ms(value: float | None) -> str:
        return f"{value * 1000:.0f}" if value is not None else "-"

    rows = []
    for r in sweep["levels"]:
        missed = r["arrivals"]["missed"] if r.get("arrivals") else "-"
        state = "reached" if r.get("reached") else f"NOT REACHED: {r.get('why_not')}"
        if r.get("saturated"):
            state += " (saturated: served below the offered rate)"
        rate = served_rate(r)
        rows.append([r["label"], f"{rate:.3f}" if rate is not None else "-",
                     ms(r.get("p50_s")), ms(r.get("p90_s")), ms(r.get("p99_s")), str(r.get("failed", "-")),
                     str(missed), state])
    k = sweep["knee"]
    sat = k["saturation_images_per_s"]
    lines = [
        f"# Load sweep of {sweep['target']} ({sweep['kind']})",
        "",
        markdown_table(("level", "images/s (steady)", "p50 ms", "p90 ms", "p99 ms", "failed", "missed arrivals",
                        "state"), rows),
        "",
        f"- saturation throughput: {f'{sat:.3f} images/s' if sat is not None else 'none (no level reached)'}",
        f"- knee: {k.get('knee_label') or '-'} (p50 {ms(k.get('knee_p50_s'))} ms, p99 {ms(k.get('knee_p99_s'))} ms)",
    ]
    if k.get("note"):
        lines.append(f"- note: {k['note']}")
    return "\n".join(lines) + "\n"


def plot_sweep(sweep: dict[str, Any], path: Path) -> Path:
    """Latency (p50, p99) against throughput, one point per reached level, labelled with its level."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = [r for r in sweep["levels"] if served_rate(r) is not None and r.get("p50_s") is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    x = [served_rate(r) for r in rows]
    for key, label, style in (("p50_s", "p50", "o-"), ("p99_s", "p99", "s--")):
        ax.plot(x, [r[key] for r in rows], style, label=label)
    for r in rows:
        ax.annotate(r["label"] + ("" if r.get("reached") else " (not reached)"), (served_rate(r), r["p99_s"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    sat = sweep["knee"]["saturation_images_per_s"]
    if sat is not None:
        ax.axvline(sat, color="tab:red", alpha=0.5, linestyle=":", label=f"saturation {sat:.3g} images/s")
    ax.set_xlabel("served images/s")
    ax.set_ylabel("latency of successful calls (s)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{sweep['target']}: throughput vs latency ({sweep['kind']} sweep)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, path)


@dataclass(frozen=True)
class SweepOutcome:
    """A finished sweep: its summary (``sweep.json``'s content), the files written and the exit code."""

    sweep: dict[str, Any]
    paths: dict[str, Path]
    exit_code: int


def run_sweep(base: LoadTestConfig, ladder: Ladder,
              on_level: Callable[[dict[str, Any]], None] | None = None) -> SweepOutcome:
    """Run every level of ``ladder`` in order and write the sweep's report into ``base.out_dir``.

    Exits 0 when every level below the knee ran without a failed request; a level past saturation may fail
    (RESOURCE_EXHAUSTED, deadlines): that is what saturation looks like, reported per level.

    Args:
        base: The load test every level starts from.
        ladder: The levels.
        on_level: Called with each level's row as soon as it finished (the CLI prints it).
    """
    rows = []
    for level in ladder.levels:
        config = level_config(base, ladder, level)
        try:
            outcome = run_load_test(config)
        except EdgediffError as exc:  # Locust did not run that level: say so and go on
            outcome = Outcome(1, message=str(exc).splitlines()[0])
        row = level_row(ladder, level, outcome)
        rows.append(row)
        if on_level is not None:
            on_level(row)
        if outcome.report is not None and outcome.report.get("incomplete"):
            break  # a stop signal: the sweep ends with the levels that ran
    summary = knee(rows)
    sweep = {"target": base.target, "kind": ladder.kind, "levels": [{k: (str(v) if isinstance(v, Path) else v)
                                                                     for k, v in r.items()} for r in rows],
             "knee": summary, "config": base.to_dict()}
    base.out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": base.out_dir / SWEEP_JSON, "markdown": base.out_dir / SWEEP_MARKDOWN,
             "plot": base.out_dir / SWEEP_PNG}
    atomic_write_json(paths["json"], sweep)
    atomic_write_text(paths["markdown"], render_markdown(sweep))
    plot_sweep(sweep, paths["plot"])
    knee_level = summary.get("knee_level")
    below = [r for r in rows if knee_level is not None and r["level"] <= knee_level]
    failed_below = any(r.get("failed") for r in below) or not any(r.get("reached") for r in rows)
    return SweepOutcome(sweep, paths, 1 if failed_below else 0)
