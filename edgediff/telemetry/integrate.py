"""Energy from power samples (trapezoidal rule) and from hardware counters (deltas with wrap-around).

Pure functions of numbers, no I/O: the sampler and the tests use the same code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def trapezoid_step_j(t0_s: float, power0_w: float, t1_s: float, power1_w: float) -> float:
    """Energy in joules between two power samples, assuming power changes linearly between them.

    Args:
        t0_s: Time of the first sample, seconds.
        power0_w: Power of the first sample, watts.
        t1_s: Time of the second sample, seconds; must not be before ``t0_s``.
        power1_w: Power of the second sample, watts.
    """
    if t1_s < t0_s:
        raise ValueError(f"t1_s must be >= t0_s, got t0_s={t0_s!r}, t1_s={t1_s!r}")
    return 0.5 * (power0_w + power1_w) * (t1_s - t0_s)


def trapezoid_energy_j(t_s: Sequence[float], power_w: Sequence[float]) -> float:
    """Integrate timestamped power samples with the trapezoidal rule.

    Args:
        t_s: Sample times in seconds, non-decreasing.
        power_w: Power at each time, watts; same length as ``t_s``.

    Returns:
        Energy in joules over ``[t_s[0], t_s[-1]]``; 0.0 for fewer than two samples.
    """
    if len(t_s) != len(power_w):
        raise ValueError(f"t_s and power_w must have the same length, got {len(t_s)} and {len(power_w)}")
    energy_j = 0.0
    for i in range(1, len(t_s)):
        if t_s[i] < t_s[i - 1]:
            raise ValueError(f"t_s must be non-decreasing, got t_s[{i - 1}]={t_s[i - 1]!r} > t_s[{i}]={t_s[i]!r}")
        energy_j += trapezoid_step_j(t_s[i - 1], power_w[i - 1], t_s[i], power_w[i])
    return energy_j


def counter_delta_j(previous_j: float, current_j: float, range_j: float | None) -> float:
    """Energy consumed between two readings of a hardware counter, across at most one wrap-around.

    A counter that wraps at ``range_j`` (RAPL ``max_energy_range_uj``) and reads lower than before has wrapped
    once: the energy is what remained up to the range plus what was counted since 0. Read the counter more often
    than it can wrap twice (a RAPL package counter wraps after about 262 kJ: 44 min at 100 W).

    Args:
        previous_j: The earlier raw reading, joules.
        current_j: The later raw reading, joules.
        range_j: The counter's wrap value in joules, or ``None`` for a counter that does not wrap; such a counter
            reading lower than before was reset (driver reload), and the delta is 0.

    Returns:
        Energy in joules, never negative.
    """
    if not (math.isfinite(previous_j) and math.isfinite(current_j)):
        raise ValueError(f"counter readings must be finite, got {previous_j!r} and {current_j!r}")
    if current_j >= previous_j:
        return current_j - previous_j
    if range_j is None or range_j <= 0:
        return 0.0
    if previous_j > range_j:
        raise ValueError(f"previous_j={previous_j!r} is above the counter range range_j={range_j!r}")
    return (range_j - previous_j) + current_j
