from __future__ import annotations

from pathlib import Path

import pytest

from edgediff.telemetry import EnergyMonitor, rapl
from edgediff.telemetry.base import ReaderError
from edgediff.telemetry.rapl import RaplReader, find_rapl_zones

RAPL = Path(__file__).parent / "fixtures" / "rapl"


def test_zones_map_to_domains():
    zones, reason = find_rapl_zones(RAPL)
    assert reason is None
    assert [(z.path.name, z.zone_name, z.domain, z.part_of, z.range_j) for z in zones] == [
        ("intel-rapl:0", "package-0", "cpu-package", None, 262143.32885),
        ("intel-rapl:0:0", "core", "cpu-core", "cpu-package", 262143.32885),
        ("intel-rapl:0:1", "uncore", "cpu-uncore", "cpu-package", 262143.32885),
        ("intel-rapl:0:2", "dram", "dram", None, 65712.999613),
        ("intel-rapl:1", "psys", "platform", None, 262143.32885),
    ]


def test_counters_read_exactly():
    zones, _ = find_rapl_zones(RAPL)
    samples = RaplReader(zones, clock=lambda: 7.0).read_energy()
    assert [(s.domain, s.energy_j, s.source, s.t_s) for s in samples] == [
        ("cpu-package", 261943.32885, "rapl", 7.0),
        ("cpu-core", 151234.56789, "rapl", 7.0),
        ("cpu-uncore", 1.234567, "rapl", 7.0),
        ("dram", 65712.0, "rapl", 7.0),
        ("platform", 98765.4321, "rapl", 7.0),
    ]


def test_second_socket_gets_its_own_domains():
    assert rapl.zone_domain("package-1", 1) == ("cpu-package-1", None)
    assert rapl.zone_domain("core", 1) == ("cpu-core-1", "cpu-package-1")


def test_no_rapl_says_why(tmp_path):
    zones, reason = find_rapl_zones(tmp_path)
    assert zones == []
    assert "no intel-rapl:* zone" in reason


def test_permission_denied_says_root_only(monkeypatch):
    def denied(path):
        raise ReaderError(f"permission denied reading {path}")

    monkeypatch.setattr(rapl, "read_int", denied)
    zones, reason = find_rapl_zones(RAPL)
    assert zones == []
    assert "permission denied" in reason
    assert "root-only since Linux 5.10" in reason


def write_package_uj(root: Path, value: int) -> None:
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text(f"{value}\n")


def test_window_energy_across_a_wrap_around(device_root, clock):
    zones, _ = find_rapl_zones(device_root)
    monitor = EnergyMonitor([RaplReader(zones, clock=clock)], background=False, clock=clock)
    monitor.start()
    monitor.begin_window("run")
    seen = []
    # The fixture starts 200 J below the range: +150 J, then a wrap (50 J to the range, 49.8 J from 0), then +100 J.
    for value in (262093328850, 49800000, 149800000):
        clock.advance(1.0)
        write_package_uj(device_root, value)
        monitor.poll()
        seen.append(next(r.energy_j for r in monitor.readings() if r.domain == "cpu-package"))
    m = monitor.end_window("run")
    assert seen == sorted(seen)
    assert seen == pytest.approx([150.0, 249.8, 349.8], rel=1e-12)
    package = m.energy_j["cpu-package"]
    assert package.method == "counter"
    assert package.gross_j == pytest.approx(349.8, rel=1e-12)
    assert m.energy_j["cpu-core"].part_of == "cpu-package"
    assert m.energy_j["cpu-core"].gross_j == 0.0
    power = next(r.power_w for r in monitor.readings() if r.domain == "cpu-package")
    assert power == pytest.approx(100.0, rel=1e-9)
