"""Android phones through the battery's sysfs node, ``/sys/class/power_supply/battery/``.

Files read: ``current_now``, ``voltage_now``, ``status``, plus ``online`` of every other supply (usb, ac, wireless,
...). Power is ``|I| x V`` in the domain ``battery``: everything the phone draws, screen included.

Vendors disagree on ``current_now``, and this reader handles both conventions it meets:

* **Sign.** The kernel ABI and AOSP's ``BatteryManager`` say negative while discharging (Pixel, most Qualcomm
  reference kernels); several vendors report positive while discharging. Power uses ``|I|`` so the sign never
  matters for the number; whether the phone is charging is read from ``status`` and the external supplies, never
  guessed from the sign. The sign seen while discharging is recorded in ``current_sign_discharging`` for reports
  (and catches a charger before ``status`` does: see below).
* **Unit.** The ABI says microamperes; some vendors (several Samsung kernels) write milliamperes. With
  ``current_unit="auto"`` the unit is decided once, on the first non-zero reading: ``|raw| < 10000`` is taken as
  mA (as uA it would be under 10 mA, less than any phone draws while it runs a model; as mA it is 0..10 A),
  anything larger as uA. The decision is logged; pass ``current_unit="uA"`` or ``"mA"`` to override it.
* ``voltage_now`` is in microvolts per the ABI; a value under 100000 can only be millivolts (a Li-ion cell sits at
  3.0..4.5 V) and is read as such.

A reading is **invalid** (``valid=False`` with the reason and a ``flag`` code, never silently used) unless
``status`` is ``Discharging`` and no external supply is ``online``: on a charger or on USB the battery current is
the phone's draw minus the charge current, not what the phone consumes (flags ``charging``, ``external-power``,
``status-unknown``). Drivers update ``status`` and ``online`` up to a few seconds after a plug-in, so once the
discharge sign is known (``current_sign="auto"`` learns it when ``SIGN_LEARN_READINGS`` valid readings of at least
``SIGN_MIN_CURRENT_A`` in a row agree; or pass it), a reading of the *opposite* sign while ``status`` still says
``Discharging`` is invalid too (``charging``): the sign is used to catch a charger, never to decide that there is
none.

**Fuel-gauge resets.** Energy is ``|I| x V`` integrated over time (the monitor's trapezoid), not the gauge's
``charge_counter`` (uAh) or ``energy_counter``: those count remaining charge, in steps too coarse for a window of a
few seconds, and a gauge that restarts (firmware reset, re-learning, a reboot of the gauge chip) makes them jump to
0 or backwards. The reader still reads them when present, to see a reset happen: a counter at 0, or rising while
the battery discharges by more than ``GAUGE_RISE_TOLERANCE`` of its value, is a reset. The energy does not depend
on the counter, so the window integrates around it (the sample stays valid, ``flag="gauge-reset"`` notes it, and
``gauge_resets`` counts it). While the gauge restarts its readings are often zeros: a ``voltage_now`` outside
``PLAUSIBLE_VOLTAGE_V`` (a Li-ion cell sits at 3.0..4.5 V) makes the reading invalid (``gauge-reset``), so a window
holding one says so instead of counting 0 W.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgediff.telemetry.base import (
    DOMAIN_BATTERY,
    FLAG_CHARGING,
    FLAG_EXTERNAL_POWER,
    FLAG_GAUGE_RESET,
    FLAG_STATUS_UNKNOWN,
    PowerSample,
    Reader,
    ReaderError,
    read_int,
    read_text,
)

logger = logging.getLogger(__name__)

READER_NAME = "android-battery"
SOURCE = "android-battery"
POWER_SUPPLY_DIR = "sys/class/power_supply"
AUTO_MILLIAMPERE_BELOW = 10_000
"""``|current_now| < AUTO_MILLIAMPERE_BELOW`` is read as mA by ``current_unit="auto"``; larger values as uA."""
MILLIVOLT_BELOW = 100_000
"""``voltage_now < MILLIVOLT_BELOW`` is read as mV; larger values as uV."""
_AMPERES_PER_UNIT = {"uA": 1e-6, "mA": 1e-3}
CURRENT_UNITS = ("auto", *_AMPERES_PER_UNIT)
"""``current_unit`` values: the unit of ``current_now``, or guess it."""
SIGN_MIN_CURRENT_A = 0.02
"""Currents below 20 mA say nothing about the sign (noise around 0 A): never learned from, never flagged."""
GAUGE_COUNTERS = ("charge_counter", "energy_counter")
"""The fuel gauge's remaining-charge counters read (when present) to see the gauge reset."""
GAUGE_RISE_TOLERANCE = 0.01
"""A gauge counter rising by more than 1 % of its value while the battery discharges is a reset or re-learning."""
PLAUSIBLE_VOLTAGE_V = (2.5, 5.0)
"""``voltage_now`` outside this range is not a Li-ion cell's voltage: the gauge is restarting or not ready."""
SIGN_LEARN_READINGS = 5
"""``current_sign="auto"`` learns the discharge sign once this many valid readings in a row agree."""
SIGN_RELEARN_S = 30.0
"""A learned sign contradicted this long while ``status`` says Discharging and nothing is online was learned
wrong (a status lag lasts seconds): it is learned again. A sign passed by the user is never changed."""
CURRENT_SIGNS = ("auto", "negative", "positive")
"""``current_sign`` values: how a driver signs a discharge, or learn it."""


def battery_dir(root: str | Path = "/", supply: str = "battery") -> Path:
    """Return the sysfs directory of the battery under ``root``."""
    return Path(root) / POWER_SUPPLY_DIR / supply


class AndroidBatteryReader(Reader):
    """Battery power of an Android phone (or any Linux device with a ``power_supply`` battery node).

    Args:
        root: Filesystem root that holds ``sys/`` (``/`` on a phone; a fixture tree in tests).
        supply: The battery's supply name under ``/sys/class/power_supply``.
        current_unit: ``"auto"`` (see the module docstring), ``"uA"`` or ``"mA"``.
        current_sign: How the driver signs the current while discharging: ``"auto"`` (learned from the first valid
            readings, see the module docstring), ``"negative"`` or ``"positive"``.
        clock: Monotonic clock in seconds, shared with the monitor.
    """

    name = READER_NAME
    provides_power = True

    def __init__(
        self,
        root: str | Path = "/",
        supply: str = "battery",
        current_unit: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        current_sign: str = "auto",
    ) -> None:
        if current_unit not in CURRENT_UNITS:
            raise ValueError(f"current_unit must be 'auto', 'uA' or 'mA', got {current_unit!r}")
        if current_sign not in CURRENT_SIGNS:
            raise ValueError(f"current_sign must be 'auto', 'negative' or 'positive', got {current_sign!r}")
        self.root = Path(root)
        self.dir = battery_dir(root, supply)
        self.current_unit: str | None = None if current_unit == "auto" else current_unit
        """The unit in use; ``None`` until ``auto`` has seen a non-zero reading."""
        self.current_sign_discharging: str | None = None if current_sign == "auto" else current_sign
        """``"negative"`` or ``"positive"``: how this vendor signs the current while discharging, once seen."""
        self._learned = current_sign == "auto"
        self._sign_run: tuple[str | None, int, float] = (None, 0, 0.0)
        self._opposite_since_s: float | None = None
        self.gauge_resets = 0
        """Fuel-gauge resets seen (a counter at 0 or rising while discharging); the energy integrates around them."""
        self._gauge: dict[str, int] = {}
        self._clock = clock

    def _current_a(self, raw: int) -> float:
        if self.current_unit is None:
            if raw == 0:
                return 0.0
            self.current_unit = "mA" if abs(raw) < AUTO_MILLIAMPERE_BELOW else "uA"
            logger.info(
                "%s: current_now=%d read as %s (|value| %s %d); pass current_unit to override",
                self.name,
                raw,
                self.current_unit,
                "<" if self.current_unit == "mA" else ">=",
                AUTO_MILLIAMPERE_BELOW,
            )
        return raw * _AMPERES_PER_UNIT[self.current_unit]

    @staticmethod
    def _voltage_v(raw: int) -> float:
        return raw * (1e-3 if abs(raw) < MILLIVOLT_BELOW else 1e-6)

    def external_power(self) -> list[str]:
        """Return the names of the non-battery supplies that are ``online`` (usb, ac, wireless, ...)."""
        online = []
        supplies = self.root / POWER_SUPPLY_DIR
        for path in sorted(supplies.iterdir()) if supplies.is_dir() else []:
            if path.name == self.dir.name or not (path / "online").exists():
                continue
            try:
                if (path / "type").exists() and read_text(path / "type") == "Battery":
                    continue
                if read_text(path / "online") == "1":
                    online.append(path.name)
            except ReaderError as exc:
                logger.debug("%s: %s", self.name, exc)
        return online

    def _invalid(self, status: str) -> tuple[str, str] | None:
        """``(flag, reason)`` when a reading taken in ``status`` must not be used, else ``None``."""
        if status == "Charging":
            return FLAG_CHARGING, "the battery is charging (status=Charging)"
        if status in ("Full", "Not charging"):
            return FLAG_CHARGING, f"a charger is attached (status={status})"
        if status != "Discharging":
            return FLAG_STATUS_UNKNOWN, f"battery status is {status!r}; cannot tell whether a charger is attached"
        online = self.external_power()
        if online:
            return FLAG_EXTERNAL_POWER, f"on external power ({', '.join(online)} online)"
        return None

    def _check_sign(self, current_a: float, t_s: float) -> tuple[str, str] | None:
        """Learn the discharge sign, or flag a reading whose sign says charging while ``status`` lags behind."""
        if abs(current_a) < SIGN_MIN_CURRENT_A:
            return None
        sign = "negative" if current_a < 0 else "positive"
        if self.current_sign_discharging is None:
            # learned from SIGN_LEARN_READINGS agreeing readings, so a plug-in's lagging status cannot teach it
            self._sign_run = (sign, self._sign_run[1] + 1 if self._sign_run[0] == sign else 1, t_s)
            if self._sign_run[1] >= SIGN_LEARN_READINGS:
                self.current_sign_discharging = sign
                logger.info("%s: this vendor reports the discharge current as %s", self.name, sign)
            return None
        if sign == self.current_sign_discharging:
            self._opposite_since_s = None
            return None
        if self._opposite_since_s is None:
            self._opposite_since_s = t_s
        elif self._learned and t_s - self._opposite_since_s > SIGN_RELEARN_S:
            logger.warning("%s: the current has had the other sign for %.0f s while status says Discharging and "
                           "nothing is online: this driver reports discharge as %s", self.name,
                           t_s - self._opposite_since_s, sign)
            self.current_sign_discharging, self._opposite_since_s = sign, None
            return None
        return FLAG_CHARGING, (
            f"current_now has the charging sign ({current_a:+.3f} A; this driver reports discharge as "
            f"{self.current_sign_discharging}) while status says Discharging: a charger was just plugged in?"
        )

    def _check_gauge(self, discharging: bool) -> str | None:
        """Read the gauge's counters; return a note when one reset (0, or rising while discharging)."""
        notes = []
        for name in GAUGE_COUNTERS:
            path = self.dir / name
            if not path.is_file():
                continue
            try:
                value = read_int(path)
            except ReaderError as exc:  # the counters only detect resets: a failed read loses that, not the power
                logger.debug("%s: %s", self.name, exc)
                continue
            previous = self._gauge.get(name)
            self._gauge[name] = value
            if previous is None:
                continue
            if value <= 0 < previous:
                notes.append(f"{name} went from {previous} to {value}")
            elif discharging and previous > 0 and value - previous > GAUGE_RISE_TOLERANCE * previous:
                notes.append(f"{name} rose from {previous} to {value} while discharging")
        if not notes:
            return None
        self.gauge_resets += 1
        note = "fuel gauge reset: " + "; ".join(notes) + " (integrated around: the energy is |I| x V, not the counter)"
        logger.warning("%s: %s", self.name, note)
        return note

    def read_power(self) -> list[PowerSample]:
        """Return battery power now; ``valid=False`` with the reason and flag when it is not the phone's draw."""
        current_raw = read_int(self.dir / "current_now")
        voltage_raw = read_int(self.dir / "voltage_now")
        status = read_text(self.dir / "status") if (self.dir / "status").exists() else "Unknown"
        t_s = self._clock()
        current_a = self._current_a(current_raw)
        voltage_v = self._voltage_v(voltage_raw)
        power_w = abs(current_a) * voltage_v
        invalid = self._invalid(status)
        note = self._check_gauge(discharging=invalid is None)
        low_v, high_v = PLAUSIBLE_VOLTAGE_V
        if invalid is None and not low_v <= voltage_v <= high_v:
            invalid = FLAG_GAUGE_RESET, (
                f"implausible voltage_now ({voltage_v:.3f} V, outside {low_v}..{high_v} V): the fuel gauge is "
                "restarting or not ready"
            )
        if invalid is None:
            invalid = self._check_sign(current_a, t_s)
        else:
            self._opposite_since_s = None  # only an unbroken contradiction while discharging re-learns the sign
        if invalid is not None:
            flag, reason = invalid
            return [PowerSample(t_s=t_s, power_w=power_w, domain=DOMAIN_BATTERY, source=SOURCE, valid=False,
                                reason=reason, flag=flag)]
        return [PowerSample(t_s=t_s, power_w=power_w, domain=DOMAIN_BATTERY, source=SOURCE,
                            flag=FLAG_GAUGE_RESET if note else None)]


def probe_android_battery(
    root: str | Path = "/", current_unit: str = "auto", clock=time.monotonic, current_sign: str = "auto"
):
    """Return ``(reader, None)`` when the battery node answers, else ``(None, reason)``."""
    directory = battery_dir(root)
    for name in ("current_now", "voltage_now"):
        if not (directory / name).is_file():
            return None, f"no {directory / name} (not an Android device, or the kernel does not expose it)"
    reader = AndroidBatteryReader(root, current_unit=current_unit, clock=clock, current_sign=current_sign)
    try:
        reader.read_power()
    except ReaderError as exc:
        return None, str(exc)
    return reader, None
