"""Energy from the exporter's counters (``edgediff.telemetry.counters``): the bench's domain and idle rules."""

from __future__ import annotations

import pytest

from edgediff.telemetry.counters import (
    ExporterState,
    counter_window,
    parse_exporter,
    part_of,
    samples_by_name,
    scrape,
    sum_counter,
    whole_energy,
)

TEXT = """# TYPE edgediff_energy_joules_total counter
edgediff_energy_joules_total{domain="cpu-package",source="rapl"} 100.0
edgediff_energy_joules_total{domain="cpu-core",source="rapl"} 80.0
edgediff_energy_joules_total{domain="dram",source="rapl"} 10.0
# TYPE edgediff_idle_power_watts gauge
edgediff_idle_power_watts{domain="cpu-package",source="rapl"} 5.0
edgediff_idle_power_watts{domain="dram",source="rapl"} 1.0
# TYPE edgediff_sensor_up gauge
edgediff_sensor_up{reader="rapl"} 1.0
edgediff_sensor_up{reader="nvml"} 0.0
"""


def _state(package: float, core: float, dram: float, idle: bool = True, skipped_s: float = 0.0) -> ExporterState:
    return ExporterState(
        energy_j={("cpu-package", "rapl"): package, ("cpu-core", "rapl"): core, ("dram", "rapl"): dram},
        idle_power_w={("cpu-package", "rapl"): 5.0, ("dram", "rapl"): 1.0} if idle else {},
        unmeasured_s={("dram", "rapl", "sample-gap"): skipped_s},
    )


def test_parse_exporter_with_prometheus_clients_parser():
    state = parse_exporter(TEXT)
    assert state.energy_j[("cpu-core", "rapl")] == 80.0
    assert state.idle_power_w == {("cpu-package", "rapl"): 5.0, ("dram", "rapl"): 1.0}
    assert state.sensor_up == {"rapl": 1.0, "nvml": 0.0}
    assert samples_by_name(TEXT)["edgediff_sensor_up"] == [({"reader": "rapl"}, 1.0), ({"reader": "nvml"}, 0.0)]
    assert sum_counter(TEXT, "edgediff_energy_joules_total") == pytest.approx(190.0)
    with pytest.raises(ValueError):
        parse_exporter("edgediff_energy_joules_total{domain= 1 2 3")


@pytest.mark.parametrize(("domain", "source", "whole"), [
    ("cpu-core", "rapl", "cpu-package"),
    ("cpu-uncore-1", "rapl", "cpu-package-1"),
    ("cpu-package", "rapl", None),
    ("dram", "rapl", None),
    ("gpu", "tegrastats", "soc-total"),
    ("soc-total", "tegrastats", None),
    ("gpu", "nvml", None),
])
def test_part_of_follows_the_readers_naming(domain, source, whole):
    present = [("cpu-package", "rapl"), ("cpu-package-1", "rapl"), ("soc-total", "tegrastats"), (domain, source)]
    assert part_of(domain, source, present) == whole


def test_a_part_without_its_whole_in_the_scrape_is_a_whole():
    assert part_of("gpu", "tegrastats", [("gpu", "tegrastats")]) is None
    assert part_of("cpu-core", "rapl", [("cpu-core", "rapl")]) is None


def test_whole_energy_sums_wholes_net_of_idle_over_the_interval():
    domains = counter_window(_state(100.0, 80.0, 10.0), _state(160.0, 130.0, 14.0), duration_s=4.0)
    assert {d.domain: d.part_of for d in domains} == {"cpu-core": "cpu-package", "cpu-package": None, "dram": None}
    whole = whole_energy(domains)
    assert whole is not None and whole.domains == ("cpu-package", "dram")
    assert whole.gross_j == pytest.approx(64.0)  # 60 + 4: the core's 50 J are inside the package's 60 J
    assert whole.net_j == pytest.approx(64.0 - (5.0 + 1.0) * 4.0)
    assert whole.per_image_j(8) == pytest.approx(40.0 / 8)  # net when known
    assert whole.per_image_j(0) is None


def test_without_idle_baseline_gross_per_image():
    whole = whole_energy(counter_window(_state(100.0, 80.0, 10.0, idle=False), _state(160.0, 130.0, 14.0, idle=False),
                                        duration_s=4.0))
    assert whole is not None and whole.net_j is None and whole.per_image_j(8) == pytest.approx(8.0)


def test_a_whole_that_skipped_time_gives_no_number():
    start, end = _state(100.0, 80.0, 10.0), _state(160.0, 130.0, 14.0, skipped_s=2.5)
    assert whole_energy(counter_window(start, end, duration_s=4.0)) is None


def test_failed_scrape_is_a_value_not_an_exception():
    scraped = scrape("http://127.0.0.1:1/metrics", timeout_s=0.5)
    assert scraped.text is None and scraped.error and "127.0.0.1:1" in scraped.error
