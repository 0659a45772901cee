"""The energy window over a phone's battery on long runs, replayed from sysfs traces (fixtures/android/traces).

Each trace is a few minutes of a phone generating images, one sysfs snapshot a second, with one event a long window
must survive: a fuel-gauge counter reset, a gauge reboot, a charger plugged in (for a driver signing the discharge
negative in uA and one signing it positive in mA), a suspend, a stalled sampler. The replay writes each snapshot
into a sysfs tree, sets the monitor's two clocks (monotonic, boottime) to the snapshot's and polls the real reader
through the real monitor, so the tests check the reader, the window, the exporter's counters and the reports
together. The expected energies are computed here from the rows themselves (|I| x V, trapezoid over the steps that
may be counted), independently of the monitor, and cross-checked against the gauge's charge counter.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from edgediff.bench.report import energy_section
from edgediff.constants import METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL
from edgediff.telemetry import EnergyMonitor, Measurement
from edgediff.telemetry.android_battery import AndroidBatteryReader
from edgediff.telemetry.base import UNMEASURED_FLAGS
from edgediff.telemetry.counters import Scrape
from loadtest.energy import energy_from_scrapes
from services.telemetry_exporter.collector import TelemetryCollector

TRACES = Path(__file__).parent / "fixtures" / "android" / "traces"
UA, MA = 1e-6, 1e-3
BATTERY = {"domain": "battery", "source": "android-battery"}


class Clock:
    def __init__(self) -> None:
        self.t_s = 0.0

    def __call__(self) -> float:
        return self.t_s


def load(name: str) -> list[dict[str, str]]:
    with (TRACES / name).open(newline="") as f:
        return list(csv.DictReader(f))


def power_w(row: dict[str, str], scale: float) -> float:
    return abs(int(row["current_now"])) * scale * int(row["voltage_now"]) * 1e-6


def reference_j(rows: list[dict[str, str]], steps, scale: float = UA) -> float:
    """Trapezoid of |I| x V over the steps ``(i, i + 1)`` for ``i`` in ``steps``, computed from the rows alone."""
    total = 0.0
    for i in steps:
        a, b = rows[i], rows[i + 1]
        dt = float(b["t_monotonic_s"]) - float(a["t_monotonic_s"])
        total += 0.5 * (power_w(a, scale) + power_w(b, scale)) * dt
    return total


class Phone:
    """A sysfs tree the replay writes each snapshot into, and a monitor over it with the trace's two clocks."""

    def __init__(self, root: Path, **reader_options) -> None:
        self.battery = root / "sys/class/power_supply/battery"
        self.usb = root / "sys/class/power_supply/usb"
        for path, kind in ((self.battery, "Battery"), (self.usb, "USB")):
            path.mkdir(parents=True)
            (path / "type").write_text(kind + "\n")
        self.monotonic, self.boottime = Clock(), Clock()
        self.reader = AndroidBatteryReader(root, clock=self.monotonic, **reader_options)
        self.monitor = EnergyMonitor([self.reader], background=False, interval_s=1.0, clock=self.monotonic,
                                     boottime=self.boottime)
        self.registry = CollectorRegistry()
        self.registry.register(TelemetryCollector(self.monitor))
        self.scrapes: dict[int, Scrape] = {}

    def write(self, row: dict[str, str]) -> None:
        self.monotonic.t_s = float(row["t_monotonic_s"])
        self.boottime.t_s = float(row["t_boottime_s"])
        for name in ("current_now", "voltage_now", "charge_counter", "status"):
            (self.battery / name).write_text(row[name] + "\n")
        (self.usb / "online").write_text(row["usb_online"] + "\n")

    def replay(self, rows, windows=(), scrape_at=()) -> dict[tuple[int, int], Measurement]:
        """Poll once per row; open/close the windows ``(first row, last row)``; scrape the exporter at rows."""
        measured = {}
        for i, row in enumerate(rows):
            self.write(row)
            ends = [w for w in windows if w[1] == i]
            begins = [w for w in windows if w[0] == i]
            for w in ends:
                measured[w] = self.monitor.end_window(f"{w}")
            for w in begins:
                self.monitor.begin_window(f"{w}")
            if not (ends or begins):
                self.monitor.poll()
            if i in scrape_at:
                self.scrapes[i] = Scrape("http://phone:9400/metrics", self.monotonic.t_s,
                                         generate_latest(self.registry).decode())
        return measured

    def odometer_j(self) -> float:
        (reading,) = self.monitor.readings()
        return reading.energy_j

    def unmeasured_s(self) -> dict[str, float]:
        (reading,) = self.monitor.readings()
        return {flag: seconds for flag, seconds in reading.unmeasured_s.items() if seconds > 0}


def test_clean_discharge_over_three_minutes(tmp_path):
    rows = load("clean_discharge.csv")
    phone = Phone(tmp_path)
    (m,) = phone.replay(rows, windows=[(0, 180)]).values()
    e = m.energy_j["battery"]
    assert e.valid and e.reason is None and e.flags == () and e.samples == 180
    assert m.duration_s == pytest.approx(180.0)
    assert e.gross_j == pytest.approx(reference_j(rows, range(180)), rel=1e-12)
    # units cross-checked against the gauge: the charge drawn (uAh) times the mean voltage is the same energy
    drawn_c = (int(rows[0]["charge_counter"]) - int(rows[180]["charge_counter"])) * 3.6e-3
    mean_v = sum(int(r["voltage_now"]) for r in rows) * 1e-6 / len(rows)
    assert e.gross_j == pytest.approx(drawn_c * mean_v, rel=0.01)
    assert 900.0 < e.gross_j < 1000.0  # ~5.6 W generating for 170 s after 10 s idle at ~1.2 W
    assert phone.reader.current_sign_discharging == "negative" and phone.reader.current_unit == "uA"
    assert phone.unmeasured_s() == {}
    # every cause is exported from 0, so a load test's first scrape already holds the series
    for flag in UNMEASURED_FLAGS:
        assert phone.registry.get_sample_value(METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL, {**BATTERY, "flag": flag}) == 0


def test_counter_reset_and_jump_are_integrated_around(tmp_path):
    rows = load("counter_reset.csv")
    assert rows[60]["charge_counter"] == "0" and int(rows[120]["charge_counter"]) > int(rows[119]["charge_counter"])
    phone = Phone(tmp_path)
    (m,) = phone.replay(rows, windows=[(0, 180)]).values()
    e = m.energy_j["battery"]
    # the energy is |I| x V over time, never the counter: the reset to 0 and the jump up change nothing
    assert e.valid and e.reason is None
    assert e.gross_j == pytest.approx(reference_j(load("clean_discharge.csv"), range(180)), rel=1e-12)
    assert e.gross_j > 0
    assert e.flags == ("gauge-reset",)  # noted, not invalidating
    assert phone.reader.gauge_resets == 2
    assert phone.unmeasured_s() == {}


def test_gauge_reboot_readings_are_not_counted_and_flag_the_window(tmp_path):
    rows = load("gauge_reboot.csv")
    phone = Phone(tmp_path)
    measured = phone.replay(rows, windows=[(0, 180), (0, 60), (80, 180)])
    whole = measured[(0, 180)].energy_j["battery"]
    assert not whole.valid and whole.gross_j is None and whole.net_j is None
    assert whole.flags == ("gauge-reset",)
    assert "2 of 180 samples invalid" in whole.reason and "implausible voltage_now (0.000 V" in whole.reason
    assert "(3.0 s)" in whole.reason  # 69->70, 70->71, 71->72 not integrated
    assert phone.unmeasured_s() == {"gauge-reset": pytest.approx(3.0)}
    # the odometer counted everything else, and windows clear of the reboot are valid and exact
    counted = [i for i in range(180) if i not in (69, 70, 71)]
    assert phone.odometer_j() == pytest.approx(reference_j(rows, counted), rel=1e-12)
    assert measured[(0, 60)].energy_j["battery"].gross_j == pytest.approx(reference_j(rows, range(60)), rel=1e-12)
    assert measured[(80, 180)].energy_j["battery"].gross_j == pytest.approx(
        reference_j(rows, range(80, 180)), rel=1e-12)


def test_charger_plugged_in_midway_negative_uA_driver(tmp_path):
    rows = load("plug_in.csv")
    phone = Phone(tmp_path)
    measured = phone.replay(rows, windows=[(0, 200), (0, 89), (0, 90), (150, 200), (152, 200)],
                            scrape_at=(0, 89, 200))
    whole = measured[(0, 200)].energy_j["battery"]
    assert not whole.valid and whole.gross_j is None
    assert set(whole.flags) == {"charging", "external-power"}
    assert "61 of 200 samples invalid" in whole.reason
    assert "status=Charging" in whole.reason and "usb online" in whole.reason
    # a reading's cause covers the step after it: 89->90 (the current turned) and 90->91 charging, 91->92 on usb
    # with status still Discharging, 92->...->151 charging (150 is unplugged but status still says Charging)
    assert phone.unmeasured_s() == {"charging": pytest.approx(61.0), "external-power": pytest.approx(1.0)}

    # the first charging reading has the discharge sign's opposite while status and online still say discharging:
    # the sign catches it, so a window ending there is already not valid
    lagging = measured[(0, 90)].energy_j["battery"]
    assert not lagging.valid and lagging.flags == ("charging",)
    assert "charging sign (+0.850 A; this driver reports discharge as negative)" in lagging.reason

    # a window opened on the last charging reading: every sample inside is valid, but its first second was not
    # measured, so it is not valid either
    late = measured[(150, 200)].energy_j["battery"]
    assert not late.valid and late.flags == ("charging",)
    assert late.reason == "samples were invalid when it began: the battery is charging (status=Charging) (1.0 s)"

    before, after = measured[(0, 89)].energy_j["battery"], measured[(152, 200)].energy_j["battery"]
    assert before.valid and before.gross_j == pytest.approx(reference_j(rows, range(89)), rel=1e-12)
    assert after.valid and after.gross_j == pytest.approx(reference_j(rows, range(152, 200)), rel=1e-12)
    counted = [*range(89), *range(151, 200)]
    assert phone.odometer_j() == pytest.approx(reference_j(rows, counted), rel=1e-12)

    # the same windows read from outside, as a load test does: two scrapes of the exporter
    exposition = phone.scrapes[200].text
    assert (f'{METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL}{{domain="battery",flag="charging",source="android-battery"}} '
            "61.0") in exposition
    outside = energy_from_scrapes(phone.scrapes[0], phone.scrapes[200], images=10, images_source="gateway")
    assert not outside.available and outside.domains == []
    assert "61.0 s of the window not measured (charging" in outside.reason
    assert "1.0 s of the window not measured (external-power" in outside.reason
    clean = energy_from_scrapes(phone.scrapes[0], phone.scrapes[89], images=4, images_source="gateway")
    assert clean.available
    (row,) = clean.to_dict()["domains"]
    assert row["valid"] and row["flags"] == []
    assert row["energy_per_image_j"] == pytest.approx(reference_j(rows, range(89)) / 4, rel=1e-9)

    # and in a bench report: energy unavailable, with the causes' codes beside the reason
    report = energy_section(measured[(0, 200)].to_dict(), 10, {"power_readers": ["android-battery"]})
    assert not report["available"] and report["headline"] is None
    assert report["reason"].startswith("unavailable: battery [charging, external-power]: 61 of 200 samples invalid")
    assert report["domains"][0]["flags"] == ["charging", "external-power"]


def test_charger_plugged_in_positive_mA_driver(tmp_path):
    rows = load("plug_in_positive_mA.csv")
    phone = Phone(tmp_path)
    measured = phone.replay(rows, windows=[(0, 59), (0, 60), (0, 160), (102, 160)])
    assert phone.reader.current_unit == "mA" and phone.reader.current_sign_discharging == "positive"
    before = measured[(0, 59)].energy_j["battery"]
    assert before.valid and before.gross_j == pytest.approx(reference_j(rows, range(59), MA), rel=1e-12)
    lagging = measured[(0, 60)].energy_j["battery"]
    assert not lagging.valid and lagging.flags == ("charging",)
    assert "charging sign (-0.900 A; this driver reports discharge as positive)" in lagging.reason
    whole = measured[(0, 160)].energy_j["battery"]
    assert not whole.valid and set(whole.flags) == {"charging", "external-power"}
    after = measured[(102, 160)].energy_j["battery"]
    assert after.valid and after.gross_j == pytest.approx(reference_j(rows, range(102, 160), MA), rel=1e-12)


def test_a_wrong_sign_setting_flags_instead_of_counting(tmp_path):
    rows = load("plug_in_positive_mA.csv")[:50]
    phone = Phone(tmp_path, current_sign="negative")  # this driver signs the discharge positive
    (m,) = phone.replay(rows, windows=[(0, 49)]).values()
    e = m.energy_j["battery"]
    assert not e.valid and e.flags == ("charging",) and "charging sign" in e.reason
    assert phone.reader.current_sign_discharging == "negative"  # a sign the user gave is never re-learned


def test_suspend_is_detected_from_boottime_and_not_integrated(tmp_path):
    rows = load("suspend.csv")
    phone = Phone(tmp_path)
    measured = phone.replay(rows, windows=[(0, 180), (61, 180)])
    whole = measured[(0, 180)].energy_j["battery"]
    assert not whole.valid and whole.gross_j is None and whole.flags == ("suspend",)
    assert "the device suspended for 600.0 s during the window" in whole.reason
    assert measured[(0, 180)].duration_s == pytest.approx(180.0)  # monotonic: the 600 s are not in it
    assert phone.unmeasured_s() == {"suspend": pytest.approx(601.0)}  # 600 s asleep + the 1 s step around it
    counted = [i for i in range(180) if i != 60]
    assert phone.odometer_j() == pytest.approx(reference_j(rows, counted), rel=1e-12)
    after = measured[(61, 180)].energy_j["battery"]
    assert after.valid and after.gross_j == pytest.approx(reference_j(rows, range(61, 180)), rel=1e-12)


def test_stalled_sampler_gap_is_not_bridged(tmp_path):
    rows = load("stall.csv")
    gap = next(i for i in range(len(rows) - 1)
               if float(rows[i + 1]["t_monotonic_s"]) - float(rows[i]["t_monotonic_s"]) > 1.5)
    assert gap == 80
    phone = Phone(tmp_path)
    assert phone.monitor.max_gap_s == 20.0  # 20 sampler periods of 1 s
    measured = phone.replay(rows, windows=[(0, len(rows) - 1), (0, 80), (81, len(rows) - 1)])
    whole = measured[(0, len(rows) - 1)].energy_j["battery"]
    assert not whole.valid and whole.flags == ("sample-gap",)
    assert "30.0 s not measured: no sample for 30.0 s, more than max_gap_s=20 s" in whole.reason
    assert phone.unmeasured_s() == {"sample-gap": pytest.approx(30.0)}
    counted = [i for i in range(len(rows) - 1) if i != gap]
    assert phone.odometer_j() == pytest.approx(reference_j(rows, counted), rel=1e-12)
    for window in ((0, 80), (81, len(rows) - 1)):
        e = measured[window].energy_j["battery"]
        assert e.valid and e.gross_j == pytest.approx(reference_j(rows, range(*window)), rel=1e-12)


def test_measurement_with_flags_round_trips_through_json(tmp_path):
    rows = load("plug_in.csv")[:100]
    phone = Phone(tmp_path)
    (m,) = phone.replay(rows, windows=[(0, 99)]).values()
    again = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m and again.energy_j["battery"].flags == ("charging", "external-power")
