from __future__ import annotations

import json
import shutil

import pytest

from edgediff.errors import InvalidArgumentError
from edgediff.telemetry import EnergyMonitor, discover
from edgediff.telemetry.estimated_cpu import EstimatedCpuReader


def test_utilization_times_tdp_is_labelled_estimated(proc_root, clock):
    reader = EstimatedCpuReader(65.0, root=proc_root, clock=clock)
    reader.start()
    shutil.copy(proc_root / "stat_later", proc_root / "proc/stat")  # 600 busy of 1000 jiffies
    (sample,) = reader.read_power()
    assert sample.power_w == pytest.approx(0.6 * 65.0, rel=1e-12)
    assert (sample.domain, sample.source, sample.estimated) == ("cpu-package", "estimated", True)
    assert reader.read_power() == []  # no jiffies elapsed: no new estimate


def test_off_by_default(proc_root):
    found = discover(proc_root, nvml_enabled=False, tegrastats_command=None)
    assert [r.name for r in found.readers] == ["memory"]


def test_never_used_where_rapl_measures(device_root):
    found = discover(device_root, nvml_enabled=False, tegrastats_command=None, estimated_cpu_tdp_w=65.0)
    assert "estimated" not in [r.name for r in found.readers]
    reasons = {u.reader: u.reason for u in found.unavailable}
    assert "RAPL measures cpu-package" in reasons["estimated"]


def test_windows_and_reports_say_estimated(proc_root, clock):
    monitor = EnergyMonitor.from_discovery(
        proc_root,
        background=False,
        clock=clock,
        nvml_enabled=False,
        tegrastats_command=None,
        estimated_cpu_tdp_w=65.0,
    )
    monitor.start()
    monitor.begin_window("w")
    for _ in range(3):
        clock.advance(1.0)
        shutil.copy(proc_root / "stat_later", proc_root / "proc/stat")
        monitor.poll()
    m = monitor.end_window("w")
    report = json.loads(json.dumps(m.to_dict()))
    assert report["energy_j"]["cpu-package"]["estimated"] is True
    assert report["energy_j"]["cpu-package"]["source"] == "estimated"


def test_tdp_must_be_positive(proc_root):
    with pytest.raises(InvalidArgumentError, match="estimated_cpu_tdp_w"):
        discover(proc_root, estimated_cpu_tdp_w=0)
