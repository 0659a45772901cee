from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from edgediff.telemetry import discover
from edgediff.telemetry.base import ReaderError
from edgediff.telemetry.tegrastats import TegrastatsParseError, TegrastatsReader, parse_line

FIX = Path(__file__).parent / "fixtures" / "tegrastats"
MIB = 1024 * 1024


def lines(name: str) -> list[str]:
    return [line for line in (FIX / name).read_text().splitlines() if line.strip()]


def rails(frame):
    return [(r.name, r.domain, r.part_of, r.power_w, r.average_w) for r in frame.rails]


def test_nano_jetpack4_line_parses_exactly():
    frame = parse_line(lines("nano_jp4.txt")[1])
    assert rails(frame) == [
        ("POM_5V_IN", "soc-total", None, 6.584, 4.377),
        ("POM_5V_GPU", "gpu", "soc-total", 3.215, 1.607),
        ("POM_5V_CPU", "cpu", "soc-total", 1.203, 0.825),
    ]
    assert frame.ram_used_bytes == 2345 * MIB
    assert frame.ram_total_bytes == 3956 * MIB
    assert frame.swap_used_bytes == 12 * MIB
    assert frame.swap_total_bytes == 1978 * MIB
    assert frame.gpu_utilization_ratio == 0.99
    assert frame.gpu_freq_hz == 921e6
    assert frame.units_in_line is False


def test_nano_total_is_the_input_rail_not_the_sum_of_rails():
    frame = parse_line(lines("nano_jp4.txt")[0])
    by_domain = {s.domain: s for s in frame.power_samples(t_s=5.0)}
    assert by_domain["soc-total"].power_w == 2.170
    assert by_domain["cpu"].power_w == 0.447  # POM_5V_CPU is the CPU rail, not the GPU one
    assert by_domain["gpu"].power_w == 0.0
    assert {s.source for s in by_domain.values()} == {"tegrastats"}
    assert all(s.t_s == 5.0 for s in by_domain.values())
    assert frame.gpu_utilization_ratio == 0.0


def test_orin_jetpack5_line_with_date_prefix_parses_exactly():
    frame = parse_line(lines("orin_nano_jp5.txt")[1])
    assert rails(frame) == [
        ("VDD_IN", "soc-total", None, 9.876, 7.156),
        ("VDD_CPU_GPU_CV", "cpu-gpu-cv", "soc-total", 4.321, 2.418),
        ("VDD_SOC", "soc", "soc-total", 2.210, 1.759),
    ]
    assert frame.ram_used_bytes == 3120 * MIB
    assert frame.ram_total_bytes == 7620 * MIB
    assert frame.swap_used_bytes == 0
    assert frame.gpu_utilization_ratio == 0.98
    assert frame.gpu_freq_hz == 624e6
    assert frame.units_in_line is True


def test_orin_jetpack6_lines_parse_exactly():
    idle, busy = (parse_line(line) for line in lines("orin_nx_jp6.txt"))
    assert rails(idle) == [
        ("VDD_IN", "soc-total", None, 5.120, 5.120),
        ("VDD_CPU_GPU_CV", "cpu-gpu-cv", "soc-total", 1.234, 1.234),
        ("VDD_SOC", "soc", "soc-total", 1.500, 1.500),
    ]
    assert idle.gpu_utilization_ratio == 0.0
    assert idle.gpu_freq_hz is None  # JetPack 6 prints no clock for an idle GPU
    assert busy.rail("VDD_IN").power_w == 14.810
    assert busy.swap_used_bytes == 64 * MIB
    assert busy.ram_total_bytes == 15656 * MIB
    assert busy.gpu_freq_hz == 918e6


def test_agx_orin_has_no_total_and_claims_no_containment():
    frame = parse_line(lines("agx_orin_jp5.txt")[0])
    assert rails(frame) == [
        ("VDD_GPU_SOC", "gpu-soc", None, 2.784, 2.784),
        ("VDD_CPU_CV", "cpu-cv", None, 0.397, 0.397),
        ("VIN_SYS_5V0", "sys-5v0", None, 2.313, 2.313),
        ("VDDQ_VDD2_1V8AO", "dram", None, 0.503, 0.503),
    ]
    assert frame.gpu_freq_hz == 0.0
    assert frame.ram_used_bytes == 5203 * MIB


def test_memory_samples_from_a_line():
    frame = parse_line(lines("orin_nano_jp5.txt")[0])
    assert [(m.kind, m.used_bytes) for m in frame.memory_samples()] == [
        ("tegrastats-ram-used", 2472 * MIB),
        ("swap-used", 0),
    ]


def test_missing_rail_names_the_rails_present():
    frame = parse_line(lines("nano_jp4.txt")[0])
    with pytest.raises(KeyError, match="POM_5V_IN"):
        frame.rail("VDD_IN")


@pytest.mark.parametrize("line", ["NvMapMemAllocInternalTagged: 1075072515 error 12", "", "tegrastats: bad option"])
def test_non_report_lines_are_rejected(line):
    with pytest.raises(TegrastatsParseError):
        parse_line(line)


def test_reader_streams_lines_from_a_running_tegrastats():
    command = [sys.executable, str(FIX / "fake_tegrastats.py"), str(FIX / "orin_nano_jp5.txt")]
    reader = TegrastatsReader(command, interval_s=0.05)
    reader.start()
    try:
        time.sleep(0.4)
        samples = reader.read_power()
        memory = reader.read_memory()
    finally:
        reader.stop()
    totals = [s for s in samples if s.domain == "soc-total"]
    assert len(totals) >= 3
    assert {s.power_w for s in totals} <= {4.437, 9.876}
    assert [s.t_s for s in totals] == sorted(s.t_s for s in totals)
    assert {s.domain for s in samples} == {"soc-total", "cpu-gpu-cv", "soc"}
    assert {m.kind for m in memory} == {"tegrastats-ram-used", "swap-used"}
    assert reader.latest_frame is not None


def test_reader_reports_why_tegrastats_exited():
    command = [sys.executable, "-c", "print('tegrastats: cannot open /dev/nvhost'); raise SystemExit(3)"]
    reader = TegrastatsReader(command, interval_s=0.05)
    with pytest.raises(ReaderError, match=r"exited with code 3.*cannot open /dev/nvhost"):
        reader.start()


def test_reader_rejects_a_bad_interval():
    with pytest.raises(ValueError, match="interval_s"):
        TegrastatsReader(interval_s=0)


def test_discovery_says_why_when_tegrastats_is_missing(tmp_path):
    found = discover(tmp_path, nvml_enabled=False, tegrastats_command=["no-such-tegrastats-here"])
    reasons = {u.reader: u.reason for u in found.unavailable}
    assert "not found on PATH" in reasons["tegrastats"]
    assert not any(r.name == "tegrastats" for r in found.readers)
