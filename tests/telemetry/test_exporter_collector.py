from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgediff.constants import (
    METRIC_BUILD_INFO,
    METRIC_ENERGY_JOULES_TOTAL,
    METRIC_IDLE_POWER_WATTS,
    METRIC_MEMORY_USED_BYTES,
    METRIC_POWER_WATTS,
    METRIC_SENSOR_UP,
)
from edgediff.telemetry import ConstantPowerReader, EnergyMonitor, Reader, ReaderError, Unavailable
from edgediff.telemetry.android_battery import AndroidBatteryReader
from edgediff.telemetry.memory import MemoryReader
from edgediff.telemetry.rapl import RaplReader, find_rapl_zones
from services.telemetry_exporter.collector import TelemetryCollector

FIX = Path(__file__).parent / "fixtures"
KIB = 1024


def scrape(monitor, **kwargs) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(monitor, **kwargs))
    return registry


def test_every_family_with_base_units(clock):
    monitor = EnergyMonitor(
        [ConstantPowerReader(10.0, clock=clock), MemoryReader(FIX / "proc", cuda=False)],
        background=False,
        clock=clock,
        sleep=clock.advance,
        unavailable=[Unavailable("rapl", "no intel-rapl:* zone")],
    )
    monitor.start()
    monitor.measure_idle(1.0)
    for _ in range(10):
        clock.advance(0.1)
        monitor.poll()
    registry = scrape(monitor)
    fixture = {"domain": "fixture", "source": "fixture"}
    assert registry.get_sample_value(METRIC_POWER_WATTS, fixture) == 10.0
    assert registry.get_sample_value(METRIC_ENERGY_JOULES_TOTAL, fixture) == pytest.approx(20.0)
    assert registry.get_sample_value(METRIC_IDLE_POWER_WATTS, fixture) == pytest.approx(10.0)
    assert registry.get_sample_value(METRIC_MEMORY_USED_BYTES, {"kind": "process-rss"}) == 654321 * KIB
    assert registry.get_sample_value(METRIC_MEMORY_USED_BYTES, {"kind": "system-available"}) == 10485760 * KIB
    assert registry.get_sample_value(METRIC_SENSOR_UP, {"reader": "fixture"}) == 1.0
    assert registry.get_sample_value(METRIC_SENSOR_UP, {"reader": "memory"}) == 1.0
    assert registry.get_sample_value(METRIC_SENSOR_UP, {"reader": "rapl"}) == 0.0
    text = generate_latest(registry).decode()
    assert "# TYPE edgediff_energy_joules_total counter" in text
    assert f'{METRIC_BUILD_INFO}{{python="' in text


class BrokenMemory(Reader):
    name = "broken"
    provides_power = False

    def read_memory(self):
        raise ReaderError("permission denied reading /proc/self/status")


def test_one_failing_read_costs_only_its_own_series(clock, caplog):
    monitor = EnergyMonitor(
        [ConstantPowerReader(1.0, clock=clock), BrokenMemory(), MemoryReader(FIX / "proc", cuda=False)],
        background=False,
        clock=clock,
    )
    monitor.start()
    registry = scrape(monitor)
    text = generate_latest(registry).decode()
    assert 'edgediff_memory_used_bytes{kind="process-rss"}' in text
    assert registry.get_sample_value(METRIC_SENSOR_UP, {"reader": "broken"}) == 0.0
    assert "permission denied" in caplog.text


def test_energy_counter_never_decreases_across_a_rapl_wrap(device_root, clock):
    zones, _ = find_rapl_zones(device_root)
    monitor = EnergyMonitor([RaplReader(zones, clock=clock)], background=False, clock=clock)
    monitor.start()
    registry = scrape(monitor)
    labels = {"domain": "cpu-package", "source": "rapl"}
    exported = [registry.get_sample_value(METRIC_ENERGY_JOULES_TOTAL, labels)]
    package = device_root / "sys/class/powercap/intel-rapl:0/energy_uj"
    for value in (262043328850, 262143328850, 0, 3000000, 250000000, 50000000, 90000000):
        clock.advance(1.0)
        package.write_text(f"{value}\n")
        monitor.poll()
        exported.append(registry.get_sample_value(METRIC_ENERGY_JOULES_TOTAL, labels))
    assert exported == sorted(exported)
    # 100 J, 100 J, a wrap exactly at the range (0 J), 3 J, 247 J, a wrap (262143.32885 - 250 + 50 J), 40 J
    assert exported[-1] == pytest.approx(100 + 100 + 0 + 3 + 247 + (262143.32885 - 250 + 50) + 40, rel=1e-12)


def test_charging_phone_reports_sensor_down_and_stops_counting(tmp_path, clock):
    shutil.copytree(FIX / "android/discharging_negative_uA", tmp_path, dirs_exist_ok=True)
    monitor = EnergyMonitor([AndroidBatteryReader(tmp_path, clock=clock)], background=False, clock=clock)
    monitor.start()
    clock.advance(1.0)
    monitor.poll()
    registry = scrape(monitor)
    labels = {"domain": "battery", "source": "android-battery"}
    assert registry.get_sample_value(METRIC_SENSOR_UP, {"reader": "android-battery"}) == 1.0
    before = registry.get_sample_value(METRIC_ENERGY_JOULES_TOTAL, labels)
    assert before == pytest.approx(1.234567 * 3.987, rel=1e-12)
    shutil.copytree(FIX / "android/charging", tmp_path, dirs_exist_ok=True)
    for _ in range(3):
        clock.advance(1.0)
        monitor.poll()
    assert registry.get_sample_value(METRIC_SENSOR_UP, {"reader": "android-battery"}) == 0.0
    assert registry.get_sample_value(METRIC_POWER_WATTS, labels) is None
    assert registry.get_sample_value(METRIC_ENERGY_JOULES_TOTAL, labels) == before
