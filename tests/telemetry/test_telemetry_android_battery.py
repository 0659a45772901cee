from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgediff.telemetry import discover
from edgediff.telemetry.android_battery import SIGN_LEARN_READINGS, AndroidBatteryReader, probe_android_battery

ANDROID = Path(__file__).parent / "fixtures" / "android"


def read_one(tree: str, **kwargs):
    reader = AndroidBatteryReader(ANDROID / tree, clock=lambda: 42.0, **kwargs)
    (sample,) = reader.read_power()
    return reader, sample


def learn_sign(reader: AndroidBatteryReader) -> None:
    """Read until the discharge sign is learned: not from one reading, SIGN_LEARN_READINGS agreeing ones."""
    for _ in range(SIGN_LEARN_READINGS - 2):
        reader.read_power()
        assert reader.current_sign_discharging is None
    reader.read_power()


def test_negative_microamperes_while_discharging():
    reader, sample = read_one("discharging_negative_uA")
    assert sample.power_w == pytest.approx(1.234567 * 3.987, rel=1e-12)
    assert (sample.domain, sample.source, sample.t_s) == ("battery", "android-battery", 42.0)
    assert sample.valid and sample.reason is None and sample.flag is None
    assert reader.current_unit == "uA"
    learn_sign(reader)
    assert reader.current_sign_discharging == "negative"


def test_positive_milliamperes_while_discharging():
    reader, sample = read_one("discharging_positive_mA")
    assert sample.power_w == pytest.approx(0.850 * 4.012, rel=1e-12)
    assert sample.valid
    assert reader.current_unit == "mA"
    learn_sign(reader)
    assert reader.current_sign_discharging == "positive"


def test_explicit_unit_overrides_the_heuristic():
    reader, sample = read_one("discharging_positive_mA", current_unit="uA")
    assert sample.power_w == pytest.approx(850e-6 * 4.012, rel=1e-12)
    assert reader.current_unit == "uA"


def test_millivolt_voltage_is_recognised(tmp_path):
    shutil.copytree(ANDROID / "discharging_negative_uA", tmp_path, dirs_exist_ok=True)
    (tmp_path / "sys/class/power_supply/battery/voltage_now").write_text("3987\n")
    (sample,) = AndroidBatteryReader(tmp_path).read_power()
    assert sample.power_w == pytest.approx(1.234567 * 3.987, rel=1e-12)


@pytest.mark.parametrize(
    ("tree", "reason"),
    [
        ("charging", "the battery is charging (status=Charging)"),
        ("usb_not_charging", "a charger is attached (status=Not charging)"),
        ("discharging_on_usb", "on external power (usb online)"),
    ],
)
def test_charging_or_usb_readings_are_flagged_invalid(tree, reason):
    _, sample = read_one(tree)
    assert sample.valid is False
    assert sample.reason == reason


def test_unknown_status_is_not_trusted(tmp_path):
    shutil.copytree(ANDROID / "discharging_negative_uA", tmp_path, dirs_exist_ok=True)
    (tmp_path / "sys/class/power_supply/battery/status").write_text("Unknown\n")
    (sample,) = AndroidBatteryReader(tmp_path).read_power()
    assert not sample.valid
    assert "Unknown" in sample.reason


def test_probe_says_why_there_is_no_battery(tmp_path):
    reader, reason = probe_android_battery(tmp_path)
    assert reader is None
    assert "current_now" in reason


def test_probe_finds_the_battery():
    reader, reason = probe_android_battery(ANDROID / "charging")
    assert reason is None
    assert reader is not None


def test_bad_unit_is_rejected():
    with pytest.raises(ValueError, match="current_unit"):
        AndroidBatteryReader("/", current_unit="A")


def test_discovery_passes_the_driver_sign_on():
    found = discover(ANDROID / "discharging_positive_mA", nvml_enabled=False, tegrastats_command=None,
                     rapl_enabled=False, battery_current_sign="positive")
    (battery,) = [r for r in found.readers if isinstance(r, AndroidBatteryReader)]
    assert battery.current_sign_discharging == "positive"
    with pytest.raises(ValueError, match="current_sign"):
        AndroidBatteryReader("/", current_sign="down")


def test_a_sign_learned_wrong_is_learned_again_after_a_long_contradiction(tmp_path):
    # Learned from readings taken while status lagged a plug-in (the charge current's sign); the phone is then on
    # its battery with nothing online for over SIGN_RELEARN_S, every reading of the other sign: that is the discharge.
    shutil.copytree(ANDROID / "discharging_negative_uA", tmp_path, dirs_exist_ok=True)
    current = tmp_path / "sys/class/power_supply/battery/current_now"
    now = [0.0]
    reader = AndroidBatteryReader(tmp_path, clock=lambda: now[0])
    current.write_text("900000\n")
    reader.read_power()
    learn_sign(reader)
    assert reader.current_sign_discharging == "positive"
    current.write_text("-1234567\n")
    flagged = []
    for t_s in range(0, 40, 5):
        now[0] = float(t_s)
        (sample,) = reader.read_power()
        flagged.append(not sample.valid)
    assert flagged == [True] * 7 + [False]  # 0..30 s flagged (charging sign), re-learned once past 30 s
    assert reader.current_sign_discharging == "negative"
