"""Energy per image over a load test's window, from the exporter's ``edgediff_energy_joules_total`` counter.

Two ways to read the counter's increase over the window ``[start, end]``:

* ``exporter``: scrape the exporter's ``/metrics`` at the start and at the end of the load (the Locust master does
  it, in ``records.py``); the increase is the difference of the two scrapes, per ``{domain, source}``;
* ``prometheus``: ask a Prometheus server that scrapes the exporter for
  ``increase(edgediff_energy_joules_total[<window>ms] @ <end>)``, after waiting for a scrape past the window's end.

The counter is the exporter's ``EnergyMonitor`` odometer; reading it from outside is ``edgediff.telemetry.counters``
(the module the fleet router uses too): the same ``DomainEnergy`` as a bench window, the same net energy (gross minus
``edgediff_idle_power_watts`` x window), parts of a domain marked as such, the same labels (``estimated`` and
``fixture`` sources say so) and the same per-image row (``energy_row``) in the report. This module keeps what is the
load test's own: the two scrapes of a window, or the Prometheus queries over it. Without a power sensor the result is
"unavailable", with the reason from ``edgediff_sensor_up``: never a made-up number. A domain whose
``edgediff_energy_unmeasured_seconds_total`` grew over the window (a phone's charger plugged in, a sampling gap, a
suspend) is left out with the cause, as a bench window would flag it: its counter's increase misses that stretch and
would be too small, not a measurement.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, fields
from typing import Any

from edgediff.constants import (
    METRIC_ENERGY_JOULES_TOTAL,
    METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL,
    METRIC_IDLE_POWER_WATTS,
    METRIC_SENSOR_UP,
)
from edgediff.telemetry.counters import (
    DomainKey,
    Scrape,
    counter_window,
    energy_from_increase,
    no_sensor_reason,
    parse_exporter,
    with_parts,
)
from edgediff.telemetry.window import DomainEnergy, energy_row

METHOD_EXPORTER = "exporter"
METHOD_PROMETHEUS = "prometheus"


@dataclass(frozen=True)
class EnergyResult:
    """Energy per image over a window, or why it is unavailable.

    Attributes:
        available: False when no energy could be attributed (no sensor, no exporter, a failed scrape...).
        reason: Why unavailable (``None`` when available).
        method: ``exporter`` (two scrapes), ``prometheus`` (an ``increase()`` query) or ``none``.
        url: The exporter or Prometheus URL.
        start_unix_s: Window start, seconds since the epoch.
        end_unix_s: Window end.
        window_s: ``end - start``, seconds.
        images: Images served in the window (the denominator).
        images_source: Where ``images`` comes from (``locust`` or ``gateway``).
        domains: The core's energy of each ``(domain, source)`` over the window (valid ones only).
        notes: Caveats (domains that appeared mid-window, extrapolation...).
    """

    available: bool
    reason: str | None
    method: str
    url: str | None
    start_unix_s: float | None
    end_unix_s: float | None
    window_s: float | None
    images: int
    images_source: str
    domains: list[DomainEnergy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; each domain is the core's report row (``energy_row``), as in a bench report."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["domains"] = [energy_row(d, self.window_s or 0.0, self.images) for d in self.domains]
        out["notes"] = list(self.notes)
        return out


def _unavailable(reason: str, method: str, url: str | None, start: float | None, end: float | None, images: int,
                 images_source: str) -> EnergyResult:
    window_s = end - start if start is not None and end is not None else None
    return EnergyResult(False, reason, method, url, start, end, window_s, images, images_source)


def energy_from_scrapes(start: Scrape, end: Scrape, images: int, images_source: str) -> EnergyResult:
    """Energy per image from exporter scrapes at the window's start and end.

    Args:
        start: The exporter scrape at load start.
        end: The exporter scrape at load end.
        images: Images served in the window.
        images_source: ``locust`` or ``gateway``.
    """
    args = (METHOD_EXPORTER, start.url, start.t_unix_s, end.t_unix_s, images, images_source)
    for scraped in (start, end):
        if scraped.text is None:
            return _unavailable(f"exporter unreachable: {scraped.error}", *args)
    window_s = end.t_unix_s - start.t_unix_s
    if not window_s > 0:
        return _unavailable(f"empty window ({window_s:.3f} s)", *args)
    try:
        first, last = parse_exporter(start.text or ""), parse_exporter(end.text or "")
    except ValueError as exc:
        return _unavailable(f"exporter text unreadable: {exc}", *args)
    if not last.energy_j:
        return _unavailable(no_sensor_reason(last.sensor_up), *args)
    window = counter_window(first, last, window_s)
    notes = [f"{d.domain}/{d.source} {d.reason}: left out" for d in window if not d.valid]
    measured = [d for d in window if d.valid]
    if not measured:
        return _unavailable("; ".join(notes) or no_sensor_reason(last.sensor_up), *args)
    return EnergyResult(
        True, None, METHOD_EXPORTER, start.url, start.t_unix_s, end.t_unix_s, window_s, images, images_source,
        measured, notes,
    )


# --- Prometheus -----------------------------------------------------------------------------------------------------
class PrometheusError(RuntimeError):
    """A Prometheus query failed; the message says which and why."""


def prometheus_query(base_url: str, query: str, at_unix_s: float, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Run an instant query through ``/api/v1/query`` and return its vector's samples.

    Raises:
        PrometheusError: Unreachable server, an HTTP error or a query error.
    """
    params = urllib.parse.urlencode({"query": query, "time": f"{at_unix_s:.3f}"})
    url = f"{base_url.rstrip('/')}/api/v1/query?{params}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:300]
        raise PrometheusError(f"query {query!r} failed: HTTP {exc.code}: {detail}") from exc
    except (OSError, ValueError) as exc:
        raise PrometheusError(f"cannot query Prometheus at {base_url}: {getattr(exc, 'reason', None) or exc}") from exc
    if body.get("status") != "success":
        raise PrometheusError(f"query {query!r} failed: {body.get('error', body)}")
    data = body.get("data", {})
    if data.get("resultType") != "vector":
        raise PrometheusError(f"query {query!r} returned {data.get('resultType')!r}, expected a vector")
    return list(data.get("result", []))


def _vector(samples: list[dict[str, Any]], key_labels: tuple[str, ...]) -> dict[Any, float]:
    out = {}
    for sample in samples:
        value = float(sample["value"][1])
        if math.isfinite(value):
            key = tuple(sample["metric"].get(label, "") for label in key_labels)
            out[key if len(key) > 1 else key[0]] = value
    return out


def increase_query(start_unix_s: float, end_unix_s: float) -> str:
    """The PromQL of the counter's increase over exactly ``[start, end]`` (millisecond range, ``@`` the end)."""
    window_ms = max(1, round((end_unix_s - start_unix_s) * 1000.0))
    return f"sum by (domain, source) (increase({METRIC_ENERGY_JOULES_TOTAL}[{window_ms}ms] @ {end_unix_s:.3f}))"


def unmeasured_query(start_unix_s: float, end_unix_s: float) -> str:
    """The PromQL of the unmeasured seconds' increase over exactly ``[start, end]``, per domain, source and cause."""
    window_ms = max(1, round((end_unix_s - start_unix_s) * 1000.0))
    return (f"sum by (domain, source, flag) (increase({METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL}[{window_ms}ms] "
            f"@ {end_unix_s:.3f}))")


def wait_for_scrape_after(base_url: str, end_unix_s: float, wait_s: float, poll_s: float = 1.0) -> bool:
    """Wait until Prometheus holds a sample of the energy counter taken at or after ``end``; False on timeout."""
    deadline = time.monotonic() + wait_s
    query = f"max(timestamp({METRIC_ENERGY_JOULES_TOTAL}))"
    while True:
        samples = prometheus_query(base_url, query, time.time())
        if samples and float(samples[0]["value"][1]) >= end_unix_s:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def energy_from_prometheus(
    base_url: str,
    start_unix_s: float,
    end_unix_s: float,
    images: int,
    images_source: str,
    *,
    wait_s: float = 30.0,
) -> EnergyResult:
    """Energy per image from a Prometheus that scrapes the exporter.

    Args:
        base_url: Prometheus' base URL, e.g. ``http://127.0.0.1:9090``.
        start_unix_s: Window start, seconds since the epoch.
        end_unix_s: Window end.
        images: Images served in the window.
        images_source: ``locust`` or ``gateway``.
        wait_s: How long to wait for Prometheus to scrape past the window's end.
    """
    args = (METHOD_PROMETHEUS, base_url, start_unix_s, end_unix_s, images, images_source)
    window_s = end_unix_s - start_unix_s
    if not window_s > 0:
        return _unavailable(f"empty window ({window_s:.3f} s)", *args)
    notes = [
        "increase() over the window from Prometheus' scrapes: extrapolated to the window's edges, so its precision "
        "is about one scrape interval of power at each edge"
    ]
    try:
        if not wait_for_scrape_after(base_url, end_unix_s, wait_s):
            notes.append(f"Prometheus had no scrape after the window's end within {wait_s:.0f} s")
        increase = _vector(prometheus_query(base_url, increase_query(start_unix_s, end_unix_s), end_unix_s),
                           ("domain", "source"))
        if increase and not prometheus_query(base_url, f"timestamp({METRIC_ENERGY_JOULES_TOTAL} @ {start_unix_s:.3f})",
                                             end_unix_s):
            return _unavailable(
                f"Prometheus holds no sample of {METRIC_ENERGY_JOULES_TOTAL} taken before the window's start (the "
                "exporter was not scraped yet, or over 5 minutes earlier): increase() would cover part of the window",
                *args,
            )
        idle = _vector(
            prometheus_query(base_url, f"max by (domain, source) ({METRIC_IDLE_POWER_WATTS} @ {end_unix_s:.3f})",
                             end_unix_s),
            ("domain", "source"),
        )
        if not increase:
            up = _vector(prometheus_query(base_url, f"min by (reader) ({METRIC_SENSOR_UP} @ {end_unix_s:.3f})",
                                          end_unix_s), ("reader",))
            return _unavailable(no_sensor_reason(up) + " (as seen by Prometheus)", *args)
        skipped: dict[DomainKey, dict[str, float]] = {}
        for (domain, source, flag), seconds in _vector(
            prometheus_query(base_url, unmeasured_query(start_unix_s, end_unix_s), end_unix_s),
            ("domain", "source", "flag"),
        ).items():
            if seconds > 0:
                skipped.setdefault((domain, source), {})[flag] = seconds
    except PrometheusError as exc:
        return _unavailable(str(exc), *args)
    window = with_parts(energy_from_increase(increase, window_s, idle, skipped))
    notes += [f"{d.domain}/{d.source} {d.reason}: left out" for d in window if not d.valid]
    measured = [d for d in window if d.valid]
    if not measured:
        return _unavailable("; ".join(n.removesuffix(": left out") for n in notes[1:]), *args)
    return EnergyResult(
        True, None, METHOD_PROMETHEUS, base_url, start_unix_s, end_unix_s, window_s, images, images_source,
        measured, notes,
    )
