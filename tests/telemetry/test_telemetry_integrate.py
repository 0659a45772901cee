from __future__ import annotations

import math
import random

import pytest

from edgediff.telemetry import EnergyMonitor, FunctionPowerReader
from edgediff.telemetry.integrate import counter_delta_j, trapezoid_energy_j


def power_w(t_s: float) -> float:
    """An inference-like trace: a base, a slow oscillation and a drift."""
    return 20.0 + 10.0 * math.sin(2 * math.pi * t_s / 7.0) + 0.5 * t_s


def exact_energy_j(t0_s: float, t1_s: float) -> float:
    def antiderivative(t):
        return 20.0 * t - 10.0 * 7.0 / (2 * math.pi) * math.cos(2 * math.pi * t / 7.0) + 0.25 * t * t

    return antiderivative(t1_s) - antiderivative(t0_s)


def test_trapezoid_of_a_synthetic_trace_at_10_hz_is_within_half_a_percent():
    rng = random.Random(5)
    times = [i * 0.1 + rng.uniform(-0.02, 0.02) for i in range(1, 600)]
    times = [0.0, *times, 60.0]
    estimate = trapezoid_energy_j(times, [power_w(t) for t in times])
    assert abs(estimate - exact_energy_j(0.0, 60.0)) / exact_energy_j(0.0, 60.0) < 0.005


def test_monitor_integrates_the_same_trace_within_half_a_percent(clock):
    t0 = clock()
    monitor = EnergyMonitor(
        [FunctionPowerReader(lambda t: power_w(t - t0), clock=clock)], background=False, clock=clock
    )
    monitor.start()
    monitor.begin_window("trace")
    for _ in range(300):
        clock.advance(0.1)
        monitor.poll()
    m = monitor.end_window("trace")
    exact = exact_energy_j(0.0, 30.0)
    assert m.duration_s == pytest.approx(30.0)
    assert abs(m.energy_j["fixture"].gross_j - exact) / exact < 0.005
    assert m.energy_j["fixture"].method == "trapezoid"
    assert m.energy_j["fixture"].samples == 300


def test_trapezoid_is_exact_on_a_linear_trace():
    assert trapezoid_energy_j([0.0, 1.0, 3.0], [0.0, 2.0, 6.0]) == 9.0
    assert trapezoid_energy_j([1.0], [5.0]) == 0.0


def test_trapezoid_validates_its_input():
    with pytest.raises(ValueError, match="same length"):
        trapezoid_energy_j([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        trapezoid_energy_j([1.0, 0.5], [1.0, 1.0])


def test_counter_delta():
    assert counter_delta_j(10.0, 15.5, 100.0) == 5.5
    assert counter_delta_j(99.0, 1.0, 100.0) == 2.0  # wrapped once
    assert counter_delta_j(50.0, 10.0, None) == 0.0  # a reset, not a negative energy
    with pytest.raises(ValueError, match="above the counter range"):
        counter_delta_j(150.0, 1.0, 100.0)
