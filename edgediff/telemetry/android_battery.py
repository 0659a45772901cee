"""Android phones through the battery's sysfs node, ``/sys/class/power_supply/battery/``.

Files read: ``current_now``, ``voltage_now``, ``status``, plus ``online`` of every other supply (usb, ac, wireless,
...). Power is ``|I| x V`` in the domain ``battery``: everything the phone draws, screen included.

Vendors disagree on ``current_now``, and this reader handles both conventions it meets:

* **Sign.** The kernel ABI and AOSP's ``BatteryManager`` say negative while discharging (Pixel, most Qualcomm
  reference kernels); several vendors report positive while discharging. Power uses ``|I|`` so the sign never
  matters for the number; whether the phone is charging is read from ``status`` and the external supplies, never
  guessed from the sign. The sign seen while discharging is recorded in ``current_sign_discharging`` for reports.
* **Unit.** The ABI says microamperes; some vendors (several Samsung kernels) write milliamperes. With
  ``current_unit="auto"`` the unit is decided once, on the first non-zero reading: ``|raw| < 10000`` is taken as
  mA (as uA it would be under 10 mA, less than any phone draws while it runs a model; as mA it is 0..10 A),
  anything larger as uA. The decision is logged; pass ``current_unit="uA"`` or ``"mA"`` to override it.
* ``voltage_now`` is in microvolts per the ABI; a value under 100000 can only be millivolts (a Li-ion cell sits at
  3.0..4.5 V) and is read as such.

A reading is **invalid** (``valid=False`` with the reason, never silently used) unless ``status`` is
``Discharging`` and no external supply is ``online``: on a charger or on USB the battery current is the phone's
draw minus the charge current, not what the phone consumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgediff.telemetry.base import DOMAIN_BATTERY, PowerSample, Reader, ReaderError, read_int, read_text

logger = logging.getLogger(__name__)

READER_NAME = "android-battery"
SOURCE = "android-battery"
POWER_SUPPLY_DIR = "sys/class/power_supply"
AUTO_MILLIAMPERE_BELOW = 10_000
"""``|current_now| < AUTO_MILLIAMPERE_BELOW`` is read as mA by ``current_unit="auto"``; larger values as uA."""
MILLIVOLT_BELOW = 100_000
"""``voltage_now < MILLIVOLT_BELOW`` is read as mV; larger values as uV."""
_CURRENT_UNITS = {"uA": 1e-6, "mA": 1e-3}


def battery_dir(root: str | Path = "/", supply: str = "battery") -> Path:
    """Return the sysfs directory of the battery under ``root``."""
    return Path(root) / POWER_SUPPLY_DIR / supply


class AndroidBatteryReader(Reader):
    """Battery power of an Android phone (or any Linux device with a ``power_supply`` battery node).

    Args:
        root: Filesystem root that holds ``sys/`` (``/`` on a phone; a fixture tree in tests).
        supply: The battery's supply name under ``/sys/class/power_supply``.
        current_unit: ``"auto"`` (see the module docstring), ``"uA"`` or ``"mA"``.
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
    ) -> None:
        if current_unit not in ("auto", *_CURRENT_UNITS):
            raise ValueError(f"current_unit must be 'auto', 'uA' or 'mA', got {current_unit!r}")
        self.root = Path(root)
        self.dir = battery_dir(root, supply)
        self.current_unit: str | None = None if current_unit == "auto" else current_unit
        """The unit in use; ``None`` until ``auto`` has seen a non-zero reading."""
        self.current_sign_discharging: str | None = None
        """``"negative"`` or ``"positive"``: how this vendor signs the current while discharging, once seen."""
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
        return raw * _CURRENT_UNITS[self.current_unit]

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

    def invalid_reason(self, status: str) -> str | None:
        """Return why a reading taken in ``status`` must not be used, or ``None`` when it can be."""
        if status == "Charging":
            return "the battery is charging (status=Charging)"
        if status in ("Full", "Not charging"):
            return f"a charger is attached (status={status})"
        if status != "Discharging":
            return f"battery status is {status!r}; cannot tell whether a charger is attached"
        online = self.external_power()
        if online:
            return f"on external power ({', '.join(online)} online)"
        return None

    def read_power(self) -> list[PowerSample]:
        """Return battery power now; ``valid=False`` with the reason when charging or on external power."""
        current_raw = read_int(self.dir / "current_now")
        voltage_raw = read_int(self.dir / "voltage_now")
        status = read_text(self.dir / "status") if (self.dir / "status").exists() else "Unknown"
        t_s = self._clock()
        current_a = self._current_a(current_raw)
        power_w = abs(current_a) * self._voltage_v(voltage_raw)
        reason = self.invalid_reason(status)
        if reason is None and current_raw != 0 and self.current_sign_discharging is None:
            self.current_sign_discharging = "negative" if current_raw < 0 else "positive"
            logger.info("%s: this vendor reports the discharge current as %s", self.name, self.current_sign_discharging)
        return [
            PowerSample(
                t_s=t_s, power_w=power_w, domain=DOMAIN_BATTERY, source=SOURCE, valid=reason is None, reason=reason
            )
        ]


def probe_android_battery(root: str | Path = "/", current_unit: str = "auto", clock=time.monotonic):
    """Return ``(reader, None)`` when the battery node answers, else ``(None, reason)``."""
    directory = battery_dir(root)
    for name in ("current_now", "voltage_now"):
        if not (directory / name).is_file():
            return None, f"no {directory / name} (not an Android device, or the kernel does not expose it)"
    reader = AndroidBatteryReader(root, current_unit=current_unit, clock=clock)
    try:
        reader.read_power()
    except ReaderError as exc:
        return None, str(exc)
    return reader, None
