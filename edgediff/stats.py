"""Latency statistics for every report: percentiles and a stability check over consecutive windows.

One vocabulary for ``edgediff bench`` (a few long generations per variant) and ``edgediff loadtest`` (every call of
many users): ``summarize`` gives exact percentiles (numpy's linear interpolation between order statistics, not
histogram buckets), mean, standard deviation and range, in seconds.

The stability check follows perf_analyzer, which measures in windows and calls a measurement stable when the last
three windows agree within a stability percentage (10% by default). A benchmark of a few long generations cannot
afford three windows of many requests each, so the timed runs themselves are split into three consecutive windows of
(nearly) equal size (at least two runs each) and the windows' mean latencies must be within ``tolerance`` of each other
(``max / min - 1 <= tolerance``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
"""The percentiles every ``LatencyStats`` carries."""
STABILITY_WINDOWS = 3
STABILITY_TOLERANCE = 0.10
MIN_RUNS_PER_WINDOW = 2
"""A window of a single run says nothing about stability: below 2 runs per window the check is not made."""


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latencies (a bench stage's timed runs, or a load test's successful calls), seconds.

    Attributes:
        n: Number of latencies.
        p50_s: Median (linear interpolation between order statistics, numpy's default).
        p90_s: 90th percentile.
        p95_s: 95th percentile.
        p99_s: 99th percentile.
        mean_s: Arithmetic mean.
        std_s: Sample standard deviation (ddof=1); 0 with a single value.
        min_s: Fastest.
        max_s: Slowest.
    """

    n: int
    p50_s: float
    p90_s: float
    p95_s: float
    p99_s: float
    mean_s: float
    std_s: float
    min_s: float
    max_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def summarize(values_s: Sequence[float]) -> LatencyStats:
    """Percentiles, mean, standard deviation and range of ``values_s`` (seconds).

    Raises:
        ValueError: ``values_s`` is empty or holds a value that is not a finite number >= 0.
    """
    values = np.asarray(list(values_s), dtype=np.float64)
    if values.size == 0:
        raise ValueError("values_s must hold at least one latency")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"latencies must be finite and >= 0 seconds, got {values.tolist()}")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
    return LatencyStats(
        n=int(values.size),
        p50_s=p50,
        p90_s=p90,
        p95_s=p95,
        p99_s=p99,
        mean_s=float(values.mean()),
        std_s=float(values.std(ddof=1)) if values.size > 1 else 0.0,
        min_s=float(values.min()),
        max_s=float(values.max()),
    )


@dataclass(frozen=True)
class Stability:
    """Whether the timed runs were stable (consecutive windows' mean latencies within ``tolerance``).

    Attributes:
        stable: True or False; ``None`` when there were too few runs to tell.
        windows: Number of windows the runs were split into.
        window_means_s: Mean latency of each window, seconds.
        spread: ``max(window_means) / min(window_means) - 1``; ``None`` when not computed.
        tolerance: The allowed spread (0.10 = 10%).
        reason: Why it is unstable or could not be checked; ``None`` when stable.
    """

    stable: bool | None
    windows: int
    window_means_s: list[float]
    spread: float | None
    tolerance: float
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def check_stability(
    values_s: Sequence[float], *, windows: int = STABILITY_WINDOWS, tolerance: float = STABILITY_TOLERANCE
) -> Stability:
    """Split ``values_s`` (in run order) into ``windows`` consecutive windows and compare their means.

    Args:
        values_s: Latencies of the timed runs, seconds, in the order they ran.
        windows: How many consecutive windows (>= 2).
        tolerance: Allowed ``max / min - 1`` of the window means.
    """
    if windows < 2:
        raise ValueError(f"windows must be >= 2, got {windows}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    values = [float(v) for v in values_s]
    needed = windows * MIN_RUNS_PER_WINDOW
    if len(values) < needed:
        return Stability(None, windows, [], None, tolerance,
                         f"{len(values)} timed run(s): at least {needed} are needed to check stability")
    chunks = np.array_split(np.asarray(values), windows)
    means = [float(c.mean()) for c in chunks]
    low, high = min(means), max(means)
    spread = high / low - 1 if low > 0 else math.inf
    if spread <= tolerance:
        return Stability(True, windows, means, spread, tolerance, None)
    reason = (f"window means differ by {spread:.0%} (> {tolerance:.0%}): the machine was busy or its clock "
              f"changed during the runs; rerun with more --runs or on a quiet machine")
    return Stability(False, windows, means, spread, tolerance, reason)
