from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from edgediff.errors import InvalidArgumentError
from edgediff.telemetry import discover
from edgediff.telemetry.tegrastats import TegrastatsReader

FIX = Path(__file__).parent / "fixtures"


def machine_has_a_power_sensor() -> bool:
    from edgediff.telemetry import nvml

    readers, _ = nvml.probe_nvml(lambda: 0.0)
    for reader in readers:
        reader.stop()
    return bool(
        readers
        or shutil.which("tegrastats")
        or Path("/sys/class/power_supply/battery/current_now").exists()
        or list(Path("/sys/class/powercap").glob("intel-rapl:*"))
    )


def test_this_machine_offers_memory_and_says_why_nothing_else():
    if machine_has_a_power_sensor():
        pytest.skip("this machine has a power sensor; the check is for sensorless machines")
    found = discover("/")
    assert [r.name for r in found.readers] == ["memory"]
    assert not found.has_power_sensor
    reasons = {u.reader: u.reason for u in found.unavailable}
    assert set(reasons) == {"nvml", "tegrastats", "android-battery", "rapl"}
    assert all(reasons.values())
    assert "rapl: " in found.reasons()


def test_fixture_tree_finds_every_sensor_it_holds(device_root):
    found = discover(device_root, nvml_enabled=False, tegrastats_command=None)
    assert [r.name for r in found.readers] == ["android-battery", "rapl", "memory"]
    assert found.unavailable == []
    assert found.has_power_sensor


def test_fixture_reader_only_when_asked(proc_root):
    assert "fixture" not in [r.name for r in discover(proc_root, nvml_enabled=False).readers]
    found = discover(proc_root, nvml_enabled=False, tegrastats_command=None, fixture_power_w=3.0)
    fixture = next(r for r in found.readers if r.name == "fixture")
    (sample,) = fixture.read_power()
    assert (sample.power_w, sample.domain, sample.source) == (3.0, "fixture", "fixture")


def test_tegrastats_command_is_configurable(proc_root):
    command = [sys.executable, str(FIX / "tegrastats/fake_tegrastats.py"), str(FIX / "tegrastats/nano_jp4.txt")]
    found = discover(proc_root, nvml_enabled=False, tegrastats_command=command, tegrastats_interval_s=0.2)
    reader = next(r for r in found.readers if r.name == "tegrastats")
    assert isinstance(reader, TegrastatsReader)
    assert reader.interval_s == 0.2 and reader.command == tuple(command)


def test_options_are_validated(proc_root):
    with pytest.raises(InvalidArgumentError, match="fixture_power_w"):
        discover(proc_root, fixture_power_w=-1.0)
    with pytest.raises(InvalidArgumentError, match="tegrastats_interval_s"):
        discover(proc_root, tegrastats_interval_s=0)
