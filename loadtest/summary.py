"""Counts, latency percentiles, throughput and a rolling-rate timeline from the per-request records.

Latency statistics are the core's (``edgediff.stats``, the same as ``edgediff bench``): exact percentiles over every
successful call (numpy's linear interpolation between order statistics), not Locust's rounded histogram buckets.
Throughput counts the calls that completed inside the measurement window, so it shares its denominator with the
energy per image.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgediff.stats import LatencyStats
from edgediff.stats import summarize as summarize_latency
from loadtest.records import RequestRecord


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats | None:
    """The core's ``LatencyStats`` of ``latencies_s``; ``None`` when no call succeeded."""
    return summarize_latency(latencies_s) if latencies_s else None


@dataclass(frozen=True)
class TimelineBin:
    """One point of the timeline: rates over the rolling window ``(t_s - width_s, t_s]`` after the window start."""

    t_s: float
    width_s: float
    requests_per_s: float
    images_per_s: float
    failures_per_s: float
    p50_s: float | None
    p95_s: float | None


MIN_ROLLING_S = 5.0
"""Shortest rolling window of the timeline, seconds."""
ROLLING_COMPLETIONS = 10
"""The rolling window spans about this many completions (at the run's mean rate), so a slow model's rate is smooth."""
TIMELINE_POINTS = 200
"""Most points of the timeline."""


def rolling_width_s(completions: int, window_s: float) -> float:
    """The timeline's rolling window, seconds: ``ROLLING_COMPLETIONS`` mean gaps, at least ``MIN_ROLLING_S``."""
    mean_gap_s = window_s / completions if completions else window_s
    return min(window_s, max(MIN_ROLLING_S, ROLLING_COMPLETIONS * mean_gap_s)) if window_s > 0 else 0.0


def timeline(records: Iterable[RequestRecord], start_unix_s: float, end_unix_s: float,
             width_s: float | None = None) -> list[TimelineBin]:
    """Rolling rates and latency over ``[start, end]``, by completion time.

    Each point at ``t`` counts the calls that completed in ``(t - width_s, t]`` (clipped to the window's start, and
    divided by the clipped width), so a server that completes one image every few seconds draws a rate, not a
    square wave of 0 and 1 per second. Points are spaced ``width_s / 4`` apart (at most ``TIMELINE_POINTS``).

    Args:
        records: The calls.
        start_unix_s: Window start, seconds since the epoch.
        end_unix_s: Window end.
        width_s: Rolling window, seconds (default: ``rolling_width_s``).
    """
    window_s = end_unix_s - start_unix_s
    done = sorted((r.end_unix_s - start_unix_s, r) for r in records if 0 <= r.end_unix_s - start_unix_s <= window_s)
    if window_s <= 0:
        return []
    width_s = width_s or rolling_width_s(len(done), window_s)
    step_s = max(width_s / 4.0, window_s / TIMELINE_POINTS)
    n_points = max(1, math.floor(window_s / step_s + 1e-9))
    points = [min(window_s, (i + 1) * step_s) for i in range(n_points)]
    if points[-1] < window_s:
        points.append(window_s)
    bins = []
    for t_s in points:
        low_s = max(0.0, t_s - width_s)
        in_bin = [r for offset_s, r in done if low_s < offset_s <= t_s or (low_s == 0.0 and offset_s == 0.0)]
        span_s = max(t_s - low_s, 1e-9)
        stats = latency_stats([r.latency_s for r in in_bin if r.ok])
        bins.append(
            TimelineBin(
                t_s=t_s,
                width_s=span_s,
                requests_per_s=len(in_bin) / span_s,
                images_per_s=sum(r.images for r in in_bin) / span_s,
                failures_per_s=sum(1 for r in in_bin if not r.ok) / span_s,
                p50_s=stats.p50_s if stats else None,
                p95_s=stats.p95_s if stats else None,
            )
        )
    return bins


def max_in_flight(records: Iterable[RequestRecord]) -> int:
    """The most calls that were in flight at once (from their start and end times)."""
    events = sorted([(r.start_unix_s, 1) for r in records] + [(r.end_unix_s, -1) for r in records],
                    key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _t, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@dataclass(frozen=True)
class NameSummary:
    """Counts and latency of one request name (``Generate <variant>``)."""

    name: str
    requests: int
    failures: int
    images: int
    latency: LatencyStats | None


@dataclass(frozen=True)
class Summary:
    """What the load test did.

    Attributes:
        requests: Calls that completed (success or failure), all processes.
        succeeded: Calls with status OK.
        failed: Calls with any other status.
        failures_by_status: Failed calls per gRPC status name.
        failure_messages: Distinct failure messages with their counts (the first few).
        cancelled_at_stop: Calls in flight when Locust stopped its users (cancelled, not failures).
        images: Images received, all calls.
        window_s: The measurement window, seconds.
        requests_in_window: Calls that completed inside the window.
        images_in_window: Images of the successful calls that completed inside the window.
        requests_per_s: ``requests_in_window / window_s``.
        images_per_s: ``images_in_window / window_s``.
        steady_images_per_s: Images/s between the first and the last successful completion (the images completed
            after the first one, over that span), or None with fewer than two. Unlike ``images_per_s`` it counts
            neither the start-up nor the calls still in flight when the window ends (cancelled at stop, their work
            lost): with 3 s calls in a 60 s closed loop those cost ``images_per_s`` about 5 %. A sweep's saturation
            uses it, so that a served rate compares with an in-process seconds-per-image.
        latency: Latency of every successful call.
        by_name: The same per request name.
    """

    requests: int
    succeeded: int
    failed: int
    failures_by_status: dict[str, int]
    failure_messages: dict[str, int]
    cancelled_at_stop: int
    images: int
    window_s: float
    requests_in_window: int
    images_in_window: int
    requests_per_s: float
    images_per_s: float
    latency: LatencyStats | None
    by_name: list[NameSummary] = field(default_factory=list)
    steady_images_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def summarize(
    records: Sequence[RequestRecord],
    start_unix_s: float,
    end_unix_s: float,
    cancelled: dict[str, int] | None = None,
    max_messages: int = 10,
) -> Summary:
    """Summarize the records of a run whose window is ``[start, end]`` (seconds since the epoch)."""
    window_s = end_unix_s - start_unix_s
    failures = [r for r in records if not r.ok]
    in_window = [r for r in records if start_unix_s <= r.end_unix_s <= end_unix_s]
    images_in_window = sum(r.images for r in in_window if r.ok)
    messages = Counter(f"{r.status}: {r.error}" if r.error and not r.error.startswith(r.status) else str(r.error)
                       for r in failures)
    by_name = []
    for name in sorted({r.name for r in records}):
        mine = [r for r in records if r.name == name]
        by_name.append(
            NameSummary(
                name=name,
                requests=len(mine),
                failures=sum(1 for r in mine if not r.ok),
                images=sum(r.images for r in mine if r.ok),
                latency=latency_stats([r.latency_s for r in mine if r.ok]),
            )
        )
    return Summary(
        requests=len(records),
        succeeded=len(records) - len(failures),
        failed=len(failures),
        failures_by_status=dict(sorted(Counter(r.status for r in failures).items())),
        failure_messages=dict(messages.most_common(max_messages)),
        cancelled_at_stop=sum((cancelled or {}).values()),
        images=sum(r.images for r in records if r.ok),
        window_s=window_s,
        requests_in_window=len(in_window),
        images_in_window=images_in_window,
        requests_per_s=len(in_window) / window_s if window_s > 0 else 0.0,
        images_per_s=images_in_window / window_s if window_s > 0 else 0.0,
        latency=latency_stats([r.latency_s for r in records if r.ok]),
        by_name=by_name,
        steady_images_per_s=steady_rate([r for r in in_window if r.ok]),
    )


def steady_rate(done: Sequence[RequestRecord]) -> float | None:
    """Images/s of successful calls between the first and the last completion (see ``Summary``), or None."""
    ends = sorted((r.end_unix_s, r.images) for r in done)
    if len(ends) < 2 or ends[-1][0] <= ends[0][0]:
        return None
    return sum(images for _, images in ends[1:]) / (ends[-1][0] - ends[0][0])


@dataclass(frozen=True)
class LocustTotals:
    """Locust's own final counts (its ``--json-file``), to cross-check the records."""

    requests: int
    failures: int


def read_locust_totals(final_json: Path) -> LocustTotals | None:
    """Sum the entries of Locust's final stats JSON; ``None`` when it is missing or unreadable."""
    try:
        entries = json.loads(final_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return LocustTotals(sum(int(e.get("num_requests", 0)) for e in entries),
                        sum(int(e.get("num_failures", 0)) for e in entries))
