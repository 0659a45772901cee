"""The one reader interface every sensor family implements, and the typed values readers return.

Units are SI inside the program and names carry them (``power_w``, ``energy_j``, ``used_bytes``, ``t_s``). Vendor
units (mW, mJ, uJ, uA, uV, kB, MB) are converted once, inside the reader that meets them, never at a call site.

A reader offers up to three capabilities; the defaults return nothing, so a reader only overrides what its sensor
really has:

* ``read_power()``: timestamped power samples, one or more per domain (a streaming reader such as tegrastats returns
  every sample received since the previous call; a polled reader returns one per domain, read now).
* ``read_energy()``: readings of a hardware energy counter (NVML total energy, RAPL ``energy_uj``). A domain that has
  a counter is integrated from the counter, never from power samples.
* ``read_memory()``: memory in use, by kind.

A reader whose sensor is missing is never constructed: discovery returns an ``Unavailable(reader, reason)`` instead.
A reader whose read fails raises ``ReaderError`` with the reason; the sampler marks it down and keeps the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

# --- power domains ------------------------------------------------------------------------------------------------
# A domain names *what* is measured; the source names *which sensor* measured it. Domains of one device that are
# parts of another domain carry ``part_of``: never add a part to its whole (a Jetson's GPU rail is inside the
# module's input rail).
DOMAIN_GPU_BOARD = "gpu-board"
"""Whole graphics board as NVML reports it (GPU die, memory, VRM losses, fans)."""
DOMAIN_SOC_TOTAL = "soc-total"
"""A Jetson module's input rail (``POM_5V_IN`` on JetPack 4 Nano, ``VDD_IN`` on Xavier NX and Orin NX/Nano)."""
DOMAIN_CPU_PACKAGE = "cpu-package"
"""A CPU socket as RAPL ``package-N`` measures it (cores, caches, uncore, integrated graphics)."""
DOMAIN_BATTERY = "battery"
"""Everything a phone draws from its battery (screen included) while it runs on the battery alone."""
DOMAIN_FIXTURE = "fixture"
"""A fixture reader's made-up power, for tests only; never produced by a real sensor."""

SOURCE_FIXTURE = "fixture"
"""Source label of fixture readers: the numbers are given by the test, not measured."""

# --- why energy is not measured ---------------------------------------------------------------------------------
# One short code per cause, shared by samples (``PowerSample.flag``), windows (``DomainEnergy.flags``) and the
# exporter (the ``flag`` label of ``edgediff_energy_unmeasured_seconds_total``). The human sentence stays in
# ``reason``; the code is what a dashboard or a report filters on. A bounded set: never put a value in it.
FLAG_CHARGING = "charging"
"""The battery is charging, full or held by a charger (``status``), or its current has the charging sign."""
FLAG_EXTERNAL_POWER = "external-power"
"""An external supply (usb, ac, wireless) is ``online``: the battery current is not the device's draw."""
FLAG_STATUS_UNKNOWN = "status-unknown"
"""The battery's ``status`` says neither charging nor discharging: whether a charger is attached is unknown."""
FLAG_GAUGE_RESET = "gauge-reset"
"""The fuel gauge restarted: ``charge_counter``/``energy_counter`` went to 0 or backwards, or readings were absurd."""
FLAG_SAMPLE_GAP = "sample-gap"
"""No sample for longer than the monitor's ``max_gap_s`` (sampler stalled, process frozen): not integrated."""
FLAG_SUSPEND = "suspend"
"""The device suspended (``CLOCK_BOOTTIME`` ran ahead of ``CLOCK_MONOTONIC``): the window is not continuous."""
FLAG_INVALID = "invalid"
"""An invalid sample whose reader gave no more specific code."""
FLAG_SENSOR_DOWN = "sensor-down"
"""The reader's last read failed."""
FLAG_NO_SAMPLES = "no-samples"
"""The window holds no sample of the domain."""
FLAG_LATE_START = "late-start"
"""The domain's first sample came after the window began."""
FLAG_COUNTER_RESET = "counter-reset"
"""An odometer read from outside the monitor went backwards (the exporter restarted)."""
UNMEASURED_FLAGS = (
    FLAG_CHARGING, FLAG_EXTERNAL_POWER, FLAG_STATUS_UNKNOWN, FLAG_GAUGE_RESET, FLAG_SAMPLE_GAP, FLAG_SUSPEND,
    FLAG_INVALID,
)
"""The causes the exporter counts unmeasured seconds for (every one exported from 0, so ``increase()`` works)."""


class ReaderError(RuntimeError):
    """A reader could not read its sensor this time; the message is the reason shown in logs and ``sensor_up``."""


@dataclass(frozen=True)
class Unavailable:
    """A sensor family this machine does not offer, and why.

    Attributes:
        reader: The reader's name (``nvml``, ``tegrastats``, ``android-battery``, ``rapl``, ...).
        reason: One line a user can act on, e.g. ``"no intel-rapl:* zone under /sys/class/powercap"``.
    """

    reader: str
    reason: str

    def __str__(self) -> str:
        return f"{self.reader}: {self.reason}"


@dataclass(frozen=True)
class PowerSample:
    """One power reading.

    Attributes:
        t_s: When it was taken, in seconds on the monotonic clock of the reader's monitor (``time.monotonic``).
        power_w: Power in watts.
        domain: What was measured (``soc-total``, ``gpu``, ``battery``, ``cpu-package``, ...).
        source: Which sensor measured it (``nvml:0``, ``tegrastats``, ``android-battery``, ``estimated``, ...).
        valid: False when the value must not be used as a measurement (a phone charging or on USB power).
        reason: Why the sample is invalid; ``None`` when valid.
        estimated: True when the number is a model's estimate, not a measurement (estimated CPU power).
        part_of: The domain this one is a part of (``soc-total`` for a Jetson GPU rail); ``None`` for a whole.
        flag: A code from ``UNMEASURED_FLAGS`` saying why an invalid sample is invalid (``invalid`` when the reader
            gave none); on a valid sample, an event the reader integrated around (``gauge-reset``), else ``None``.
    """

    t_s: float
    power_w: float
    domain: str
    source: str
    valid: bool = True
    reason: str | None = None
    estimated: bool = False
    part_of: str | None = None
    flag: str | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.power_w) or self.power_w < 0:
            raise ValueError(
                f"power_w must be a finite number >= 0, got {self.power_w!r} ({self.source}/{self.domain})"
            )
        if not self.valid and not self.reason:
            raise ValueError(f"an invalid sample needs a reason ({self.source}/{self.domain})")
        if not self.valid and self.flag is None:
            object.__setattr__(self, "flag", FLAG_INVALID)


@dataclass(frozen=True)
class EnergySample:
    """One reading of a hardware energy counter.

    Attributes:
        t_s: When it was read, in seconds on the monotonic clock.
        energy_j: The counter's raw value converted to joules (it may wrap; see ``range_j``).
        domain: What the counter measures.
        source: Which sensor it is.
        range_j: The value at which the counter wraps back to 0 (RAPL ``max_energy_range_uj``); ``None`` when the
            counter does not wrap in practice (NVML's 64-bit millijoule counter).
        part_of: As for ``PowerSample``.
    """

    t_s: float
    energy_j: float
    domain: str
    source: str
    range_j: float | None = None
    part_of: str | None = None


@dataclass(frozen=True)
class MemorySample:
    """Memory in use, of one kind.

    Attributes:
        kind: ``process-rss``, ``process-peak-rss`` (VmHWM, a lifetime high-water mark), ``system-used``,
            ``system-available``, ``cuda-allocated``, ``cuda-max-allocated``, ``gpu-used`` (NVML), ``swap-used``.
        used_bytes: Bytes.
        source: Where the number comes from (``procfs``, ``nvml:0``, ``torch.cuda``, ``tegrastats``).
    """

    kind: str
    used_bytes: int
    source: str


class Reader:
    """Base class of every reader: a sensor family of one vendor, behind one interface.

    Subclasses set ``name`` (the ``reader`` label of ``edgediff_sensor_up``) and ``provides_power`` (True when the
    reader measures power or energy, False for memory-only readers), and override the ``read_*`` methods their
    sensor supports. ``start``/``stop`` bracket sampling for readers that run something (tegrastats); for the others
    they do nothing. Readers are used from the sampler thread and, for memory, from the exporter's scrape thread:
    ``read_memory`` must be safe to call concurrently with the other reads.
    """

    name: str = "reader"
    provides_power: bool = True

    def start(self) -> None:
        """Start sampling (launch a subprocess, prime a counter). Raises ``ReaderError`` when it cannot."""

    def stop(self) -> None:
        """Stop sampling and release what ``start`` took. Safe to call twice."""

    def read_power(self) -> list[PowerSample]:
        """Return power samples taken since the previous call (polled readers: one per domain, read now)."""
        return []

    def read_energy(self) -> list[EnergySample]:
        """Return one reading of each hardware energy counter the reader has."""
        return []

    def read_memory(self) -> list[MemorySample]:
        """Return memory in use, by kind, read now."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def read_text(path: Path) -> str:
    """Read a small sysfs/procfs file, stripped, turning every OS error into ``ReaderError`` naming the path."""
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except PermissionError as exc:
        raise ReaderError(f"permission denied reading {path}") from exc
    except OSError as exc:
        raise ReaderError(f"cannot read {path}: {exc.strerror or exc}") from exc


def read_int(path: Path) -> int:
    """Read a sysfs file holding one integer; ``ReaderError`` naming the path and the text when it is not one."""
    text = read_text(path)
    try:
        return int(text)
    except ValueError as exc:
        raise ReaderError(f"{path} holds {text!r}, not an integer") from exc
