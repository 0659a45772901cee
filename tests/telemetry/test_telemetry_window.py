from __future__ import annotations

import json
import time

import pytest

from edgediff.telemetry import ConstantPowerReader, EnergyMonitor, PowerSample, Reader, ReaderError
from edgediff.telemetry.base import MemorySample
from edgediff.telemetry.counters import METHOD_ODOMETER, odometer_window
from edgediff.telemetry.window import DomainEnergy, Measurement, energy_row


class ScriptedReader(Reader):
    """Returns whatever the test queued: power samples, memory values, or an error."""

    def __init__(self, name, clock, domain="scripted"):
        self.name = name
        self.clock = clock
        self.domain = domain
        self.power_w = 10.0
        self.valid = True
        self.memory = None
        self.error = None

    def read_power(self):
        if self.error:
            raise ReaderError(self.error)
        reason = None if self.valid else "the battery is charging (status=Charging)"
        return [PowerSample(self.clock(), self.power_w, self.domain, "scripted", valid=self.valid, reason=reason)]

    def read_memory(self):
        return [MemorySample("process-rss", self.memory, "test")] if self.memory is not None else []


def make(clock, *readers):
    monitor = EnergyMonitor(list(readers), background=False, clock=clock, sleep=clock.advance)
    monitor.start()
    return monitor


def run(monitor, clock, seconds, step=0.1):
    for _ in range(round(seconds / step)):
        clock.advance(step)
        monitor.poll()


def test_idle_subtraction_is_exact_on_a_constant_trace(clock):
    reader = ConstantPowerReader(7.5, clock=clock)
    monitor = make(clock, reader)
    assert monitor.measure_idle(2.0) == {"fixture": pytest.approx(7.5, rel=1e-12)}
    assert monitor.idle_duration_s == pytest.approx(2.0)
    monitor.begin_window("same-power")
    run(monitor, clock, 3.0)
    m = monitor.end_window("same-power")
    e = m.energy_j["fixture"]
    assert e.gross_j == pytest.approx(22.5, rel=1e-12)
    assert e.net_j == pytest.approx(0.0, abs=1e-9)
    assert e.idle_power_w == pytest.approx(7.5, rel=1e-12)

    reader.power_w = 12.0
    monitor.begin_window("busy")
    run(monitor, clock, 3.0)
    e = monitor.end_window("busy").energy_j["fixture"]
    # the first 0.1 s ramps from 7.5 W to 12 W (trapezoid), then 2.9 s at 12 W
    assert e.gross_j == pytest.approx(0.1 * (7.5 + 12.0) / 2 + 2.9 * 12.0, rel=1e-12)
    assert e.net_j == pytest.approx(e.gross_j - 7.5 * 3.0, rel=1e-12)


def test_net_is_none_without_an_idle_baseline(clock):
    monitor = make(clock, ConstantPowerReader(3.0, clock=clock))
    monitor.begin_window("w")
    run(monitor, clock, 1.0)
    e = monitor.end_window("w").energy_j["fixture"]
    assert e.gross_j == pytest.approx(3.0)
    assert e.net_j is None and e.idle_power_w is None


def test_given_idle_baseline(clock):
    monitor = make(clock, ConstantPowerReader(3.0, clock=clock))
    monitor.set_idle_power({"fixture": 1.0})
    monitor.begin_window("w")
    run(monitor, clock, 2.0)
    assert monitor.end_window("w").energy_j["fixture"].net_j == pytest.approx(4.0)
    with pytest.raises(ValueError, match="idle power"):
        monitor.set_idle_power({"fixture": -1.0})


def test_window_names_are_strict(clock):
    monitor = make(clock, ConstantPowerReader(1.0, clock=clock))
    monitor.begin_window("a")
    with pytest.raises(ValueError, match="already open"):
        monitor.begin_window("a")
    with pytest.raises(ValueError, match="no open window named 'b'"):
        monitor.end_window("b")
    with pytest.raises(ValueError, match="non-empty"):
        monitor.begin_window("")
    monitor.begin_window("b")  # windows may overlap
    run(monitor, clock, 1.0)
    assert monitor.open_windows == ("a", "b")
    assert monitor.end_window("a").duration_s == pytest.approx(1.0)
    run(monitor, clock, 1.0)
    assert monitor.end_window("b").energy_j["fixture"].gross_j == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no open window named 'a'"):
        monitor.end_window("a")


def test_measurement_is_json_serialisable_with_peak_memory(clock):
    reader = ScriptedReader("scripted", clock)
    monitor = make(clock, reader)
    reader.memory = 100
    monitor.begin_window("w")
    for used in (500, 300):
        reader.memory = used
        run(monitor, clock, 0.1)
    m = monitor.end_window("w")
    assert m.peak_memory == {"process-rss": 500}
    data = json.loads(json.dumps(m.to_dict()))
    assert set(data) == {"name", "duration_s", "energy_j", "peak_memory"}
    assert data["energy_j"]["scripted"] == {
        "domain": "scripted",
        "source": "scripted",
        "method": "trapezoid",
        "gross_j": pytest.approx(2.0),
        "net_j": None,
        "idle_power_w": None,
        "estimated": False,
        "part_of": None,
        "valid": True,
        "reason": None,
        "samples": 2,
        "flags": [],
    }


def test_invalid_samples_are_never_counted_and_flag_the_window(clock):
    reader = ScriptedReader("battery", clock, domain="battery")
    monitor = make(clock, reader)
    monitor.begin_window("charging")
    run(monitor, clock, 1.0)
    reader.valid = False
    run(monitor, clock, 1.0)
    reader.valid = True
    run(monitor, clock, 1.0)
    m = monitor.end_window("charging")
    e = m.energy_j["battery"]
    assert e.valid is False and e.gross_j is None and e.net_j is None
    assert "10 of" in e.reason and "charging" in e.reason
    # the odometer skipped the invalid stretch: 1 s before + 0.9 s after (the first valid sample restarts it)
    (reading,) = monitor.readings()
    assert reading.energy_j == pytest.approx(10.0 * 1.9)
    monitor.begin_window("after")
    run(monitor, clock, 1.0)
    assert monitor.end_window("after").energy_j["battery"].gross_j == pytest.approx(10.0)


def test_a_failing_read_is_survived(clock):
    good = ConstantPowerReader(2.0, clock=clock)
    flaky = ScriptedReader("flaky", clock)
    monitor = make(clock, good, flaky)
    monitor.begin_window("w")
    run(monitor, clock, 1.0)
    flaky.error = "sensor busy"
    run(monitor, clock, 0.1)
    assert monitor.reader_status()["flaky"].up is False
    assert monitor.reader_status()["flaky"].reason == "sensor busy"
    assert monitor.reader_status()["fixture"].up is True
    flaky.error = None
    run(monitor, clock, 0.9)
    m = monitor.end_window("w")
    assert m.energy_j["fixture"].gross_j == pytest.approx(4.0)
    assert m.energy_j["scripted"].gross_j == pytest.approx(20.0)  # the gap is bridged by the trapezoid


def test_a_domain_first_seen_mid_window_is_not_valid(clock):
    late = ScriptedReader("late", clock)
    late.error = "not yet"
    monitor = make(clock, late)
    monitor.begin_window("w")
    late.error = None
    run(monitor, clock, 1.0)
    e = monitor.end_window("w").energy_j["scripted"]
    assert not e.valid
    assert "after the window began" in e.reason


def test_duplicate_reader_names_and_domains(clock, caplog):
    with pytest.raises(ValueError, match="unique"):
        EnergyMonitor([ConstantPowerReader(1.0), ConstantPowerReader(2.0)])
    a = ScriptedReader("a", clock, domain="shared")
    b = ScriptedReader("b", clock, domain="shared")
    b.power_w = 99.0
    monitor = make(clock, a, b)
    run(monitor, clock, 1.0)
    (reading,) = monitor.readings()
    assert (reading.reader, reading.power_w) == ("a", 10.0)
    assert "already measured by a" in caplog.text


def test_background_sampler_on_real_time_constant_power():
    with EnergyMonitor([ConstantPowerReader(10.0)], interval_s=0.02) as monitor:
        monitor.begin_window("w")
        time.sleep(0.3)
        m = monitor.end_window("w")
    e = m.energy_j["fixture"]
    assert e.gross_j == pytest.approx(10.0 * m.duration_s, rel=1e-3)
    assert e.samples >= 5
    assert 0.3 <= m.duration_s < 1.0


def test_background_idle_measurement_on_real_time():
    with EnergyMonitor([ConstantPowerReader(4.0)], interval_s=0.02) as monitor:
        idle = monitor.measure_idle(0.2)
    assert idle["fixture"] == pytest.approx(4.0, rel=1e-3)


def test_bad_arguments(clock):
    with pytest.raises(ValueError, match="interval_s"):
        EnergyMonitor([], interval_s=0)
    monitor = make(clock)
    with pytest.raises(ValueError, match="duration_s"):
        monitor.measure_idle(0)
    with pytest.raises(ValueError, match="power_w"):
        PowerSample(0.0, -1.0, "d", "s")
    with pytest.raises(ValueError, match="reason"):
        PowerSample(0.0, 1.0, "d", "s", valid=False)


def test_measurement_round_trips_through_json(clock):
    monitor = make(clock, ConstantPowerReader(4.0, clock=clock))
    monitor.set_idle_power({"fixture": 1.0})
    monitor.begin_window("w")
    run(monitor, clock, 2.0)
    m = monitor.end_window("w")
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_odometer_window_is_the_same_window_read_from_outside(clock):
    # The exporter publishes the monitor's odometers; two readings of them give the window end_window gives.
    monitor = make(clock, ConstantPowerReader(6.0, clock=clock))
    monitor.set_idle_power({"fixture": 2.0})
    before = {(r.domain, r.source): r.energy_j for r in monitor.readings()}
    monitor.begin_window("w")
    run(monitor, clock, 3.0)
    inside = monitor.end_window("w").energy_j["fixture"]
    after = {(r.domain, r.source): r.energy_j for r in monitor.readings()}
    (outside,) = odometer_window(before, after, 3.0, {("fixture", "fixture"): 2.0})
    assert outside.gross_j == pytest.approx(inside.gross_j) and outside.net_j == pytest.approx(inside.net_j)
    assert (outside.label, inside.label) == ("fixture", "fixture")
    assert outside.method == METHOD_ODOMETER and outside.samples is None
    row = energy_row(outside, 3.0, images=6)
    assert row["energy_per_image_j"] == pytest.approx(18.0 / 6) and row["net_power_w"] == pytest.approx(4.0)


def test_odometer_window_says_why_a_series_is_left_out():
    start = {("gpu-board", "nvml:0"): 100.0, ("cpu-package", "rapl"): 50.0}
    end = {("gpu-board", "nvml:0"): 90.0, ("cpu-package", "rapl"): 80.0, ("battery", "estimated"): 5.0}
    rows = {e.domain: e for e in odometer_window(start, end, 10.0, {("cpu-package", "rapl"): 1.0})}
    assert rows["cpu-package"].valid and rows["cpu-package"].gross_j == pytest.approx(30.0)
    assert rows["cpu-package"].net_j == pytest.approx(20.0)
    assert not rows["gpu-board"].valid and rows["gpu-board"].gross_j is None
    assert "went backwards (-10.000 J" in rows["gpu-board"].reason
    assert rows["battery"].reason == "appeared during the window" and rows["battery"].label == "estimated"


def test_labels_and_per_image_numbers():
    measured = DomainEnergy.over(domain="d", source="nvml:0", method="counter", gross_j=10.0, duration_s=2.0,
                                 idle_power_w=None, estimated=False)
    assert measured.label == "measured" and measured.valid and measured.net_j is None
    estimated = DomainEnergy.over(domain="d", source="estimated", method="trapezoid", gross_j=10.0, duration_s=2.0,
                                  idle_power_w=1.0, estimated=True)
    assert estimated.label == "estimated" and estimated.net_j == pytest.approx(8.0)
    invalid = DomainEnergy.over(domain="d", source="fixture", method="trapezoid", gross_j=10.0, duration_s=2.0,
                                idle_power_w=1.0, estimated=False, reason="charging")
    assert invalid.label == "fixture" and invalid.gross_j is None and invalid.net_j is None and not invalid.valid
    row = energy_row(measured, 2.0, images=0)
    assert row["energy_per_image_j"] is None and row["power_w"] == pytest.approx(5.0)
