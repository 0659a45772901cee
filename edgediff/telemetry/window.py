"""Energy measurement windows over a set of readers, in the spirit of Zeus' ``ZeusMonitor``.

``EnergyMonitor`` polls every reader from a background sampler thread (every ``interval_s``, 10 Hz by default) and
keeps, per power domain, an odometer that only moves forward:

* a domain with a hardware counter (NVML total energy, RAPL ``energy_uj``) adds counter deltas, across wrap-arounds;
* any other domain adds the trapezoidal integral of its timestamped power samples. Invalid samples (a phone on its
  charger) are never integrated: the odometer does not move across them, and a window that contains one is flagged.

Long windows (a phone's minutes-long generation) meet three more things, each handled the same way: the stretch is
not integrated, its seconds are counted per cause (``DomainReading.unmeasured_s``, the exporter's
``edgediff_energy_unmeasured_seconds_total{flag}``), and a window holding any of it is not valid, with the reason
and the cause's code in ``DomainEnergy.flags`` (codes: ``edgediff.telemetry.base.UNMEASURED_FLAGS``):

* a charger plugged in (``charging``, ``external-power``: the reader's invalid samples);
* a gap in the samples longer than ``max_gap_s`` (``sample-gap``: the sampler stalled or the process was frozen;
  the gap is never bridged by the trapezoid as if power had been continuous);
* a suspend (``suspend``): ``CLOCK_BOOTTIME`` running ahead of ``CLOCK_MONOTONIC`` between two polls. Every domain
  of a window holding one is invalid (the window's monotonic duration leaves the suspended time out); a hardware
  counter's odometer still adds what it counted across it.

A fuel-gauge reset (``gauge-reset``) is integrated around when the reader says so (a valid sample with a flag:
the energy does not come from the counter that reset); the code is still listed in the window's ``flags``.

A window reads the odometers at ``begin_window(name)`` and ``end_window(name)`` (each forces a fresh poll, so the
boundaries are exact for polled readers; a streamed reader's last sample is held to the boundary) and returns a
``Measurement``: duration, gross energy per domain, net energy (gross minus the idle baseline's power x duration)
once ``measure_idle`` ran, and the peak of each memory kind seen during the window.

The same odometers feed the exporter's ``edgediff_energy_joules_total``: one window API for bench, exporter and
load-test reports. The load test and the fleet router read the odometers from outside, as two scrapes of that
counter (or Prometheus' ``increase()`` of it): ``edgediff.telemetry.counters`` turns those into the same
``DomainEnergy`` that ``end_window`` returns, and ``energy_row`` gives every report the same per-image numbers and
labels.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.telemetry.base import (
    FLAG_INVALID,
    FLAG_LATE_START,
    FLAG_NO_SAMPLES,
    FLAG_SAMPLE_GAP,
    FLAG_SENSOR_DOWN,
    FLAG_SUSPEND,
    SOURCE_FIXTURE,
    EnergySample,
    PowerSample,
    Reader,
    ReaderError,
    Unavailable,
)
from edgediff.telemetry.discovery import discover
from edgediff.telemetry.estimated_cpu import SOURCE as SOURCE_ESTIMATED
from edgediff.telemetry.integrate import counter_delta_j, trapezoid_step_j

logger = logging.getLogger(__name__)

METHOD_COUNTER = "counter"
METHOD_TRAPEZOID = "trapezoid"
LABEL_MEASURED = "measured"
LABEL_ESTIMATED = "estimated"
LABEL_FIXTURE = "fixture"
DEFAULT_INTERVAL_S = 0.1
"""Sampler period: 10 Hz, the slowest rate at which trapezoidal integration is trusted by default."""
DEFAULT_MAX_GAP_INTERVALS = 20
"""Two samples of a domain further apart than this many sampler periods (and at least ``MIN_MAX_GAP_S``) are a gap."""
MIN_MAX_GAP_S = 2.0
SUSPEND_MIN_S = 0.1
"""``CLOCK_BOOTTIME - CLOCK_MONOTONIC`` growing by more than this between two polls is a suspend."""


def boottime_clock() -> Callable[[], float] | None:
    """``CLOCK_BOOTTIME`` in seconds (it counts suspended time, ``CLOCK_MONOTONIC`` does not); ``None`` off Linux."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    if clock_id is None:
        return None
    try:
        time.clock_gettime(clock_id)
    except OSError:
        return None
    return lambda: time.clock_gettime(clock_id)


@dataclass(frozen=True)
class ReaderStatus:
    """Whether a reader's last poll worked (``up``), and if not, why."""

    up: bool
    reason: str | None = None


@dataclass(frozen=True)
class DomainReading:
    """The sampler's current state of one domain (what the exporter publishes).

    Attributes:
        domain: The power domain.
        source: The sensor (``nvml:0``, ``rapl``, ``tegrastats``, ``estimated``, ``fixture``, ...).
        reader: The reader's name.
        method: ``counter`` or ``trapezoid``.
        energy_j: Joules since the monitor started; never decreases.
        power_w: The latest valid power, watts; ``None`` before the first or while samples are invalid.
        estimated: True for estimates (never a measurement).
        part_of: The domain this one is a part of, or ``None``.
        valid: False while the latest sample is invalid.
        reason: Why the latest sample is invalid.
        unmeasured_s: Seconds since the monitor started that the odometer did not integrate, per cause (a flag code
            from ``UNMEASURED_FLAGS``); never decreases. A window whose stretch of it grew is not valid.
    """

    domain: str
    source: str
    reader: str
    method: str
    energy_j: float
    power_w: float | None
    estimated: bool
    part_of: str | None
    valid: bool
    reason: str | None
    unmeasured_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DomainEnergy:
    """Energy of one domain over a window.

    Attributes:
        domain: The power domain.
        source: The sensor that measured it.
        method: ``counter`` (hardware energy counter) or ``trapezoid`` (integrated power samples).
        gross_j: Joules over the window; ``None`` when the window is not valid for this domain.
        net_j: ``gross_j - idle_power_w * duration_s``; ``None`` without an idle baseline for this domain. It can
            be slightly negative when the load drew no more than idle: reported as measured, never clamped.
        idle_power_w: The idle baseline used, watts, or ``None``.
        estimated: True when the number is an estimate (``estimated`` source), not a measurement.
        part_of: The domain this one is a part of; never add a part to its whole.
        valid: False when a sample in the window was invalid, part of it was not integrated (a gap in the samples,
            a suspend), the domain appeared mid-window or the sensor went silent; ``gross_j``/``net_j`` are then
            ``None``.
        reason: Why it is not valid.
        samples: How many samples (power samples or counter reads) the window contains; ``None`` when the energy
            was read from outside the monitor (the exporter's counter).
        flags: Short codes of what happened in the window (``charging``, ``external-power``, ``sample-gap``,
            ``suspend``, ``gauge-reset``, ...; see ``edgediff.telemetry.base``). On an invalid window they say why
            in a form reports and dashboards can filter on; on a valid one they are events the energy was
            integrated around (a fuel-gauge reset).
    """

    domain: str
    source: str
    method: str
    gross_j: float | None
    net_j: float | None
    idle_power_w: float | None
    estimated: bool
    part_of: str | None
    valid: bool
    reason: str | None
    samples: int | None
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", tuple(self.flags))  # a list when read back from JSON

    @classmethod
    def over(
        cls,
        *,
        domain: str,
        source: str,
        method: str,
        gross_j: float | None,
        duration_s: float,
        idle_power_w: float | None,
        estimated: bool,
        part_of: str | None = None,
        reason: str | None = None,
        samples: int | None = None,
        flags: Sequence[str] = (),
    ) -> DomainEnergy:
        """The energy of one domain over a window of ``duration_s`` seconds: the one place net energy is computed.

        Args:
            domain: The power domain.
            source: The sensor.
            method: ``counter``, ``trapezoid`` or ``odometer``.
            gross_j: Joules over the window (ignored when ``reason`` says the window is not valid).
            duration_s: The window's length, seconds.
            idle_power_w: The idle baseline, watts, or ``None``.
            estimated: True for estimates.
            part_of: The domain this one is a part of.
            reason: Why the window is not valid for this domain; ``None`` when it is.
            samples: Samples in the window, or ``None`` when unknown.
            flags: Codes of what happened in the window (why it is not valid, or what was integrated around).
        """
        gross = gross_j if reason is None else None
        net_j = gross - idle_power_w * duration_s if gross is not None and idle_power_w is not None else None
        return cls(domain=domain, source=source, method=method, gross_j=gross, net_j=net_j, idle_power_w=idle_power_w,
                   estimated=estimated, part_of=part_of, valid=reason is None, reason=reason, samples=samples,
                   flags=tuple(dict.fromkeys(flags)))

    @property
    def fixture(self) -> bool:
        """True for a fixture reader's made-up numbers (tests only)."""
        return self.source == SOURCE_FIXTURE

    @property
    def label(self) -> str:
        """``measured``, ``estimated`` or ``fixture``: the weakest provenance wins (see ``energy_label``)."""
        return energy_label(estimated=self.estimated, fixture=self.fixture)


def energy_label(*, estimated: bool, fixture: bool) -> str:
    """``fixture`` beats ``estimated`` beats ``measured``: the weakest provenance wins the label."""
    if fixture:
        return LABEL_FIXTURE
    return LABEL_ESTIMATED if estimated else LABEL_MEASURED


def is_estimated_source(source: str) -> bool:
    """True for the ``source`` label of an estimate (``estimated`` or ``estimated:<how>``), as the exporter shows it."""
    return source == SOURCE_ESTIMATED or source.startswith(SOURCE_ESTIMATED + ":")


def _per(value: float | None, count: float) -> float | None:
    return value / count if value is not None and count > 0 else None


def energy_row(energy: DomainEnergy, duration_s: float, images: int) -> dict[str, Any]:
    """One domain's row in a report (bench and load test alike): the window's energy, per image and as mean power.

    Args:
        energy: The domain's energy over the window.
        duration_s: The window's length, seconds.
        images: Images produced in the window (0: no per-image numbers).
    """
    return {
        "domain": energy.domain,
        "source": energy.source,
        "method": energy.method,
        "estimated": energy.estimated,
        "fixture": energy.fixture,
        "label": energy.label,
        "part_of": energy.part_of,
        "valid": energy.valid,
        "reason": energy.reason,
        "flags": list(energy.flags),
        "samples": energy.samples,
        "idle_power_w": energy.idle_power_w,
        "gross_j": energy.gross_j,
        "net_j": energy.net_j,
        "energy_per_image_j": _per(energy.gross_j, images),
        "net_energy_per_image_j": _per(energy.net_j, images),
        "power_w": _per(energy.gross_j, duration_s),
        "net_power_w": _per(energy.net_j, duration_s),
    }


@dataclass(frozen=True)
class Measurement:
    """What ``end_window`` returns.

    Attributes:
        name: The window's name.
        duration_s: Wall time between ``begin_window`` and ``end_window``, seconds (monotonic clock).
        energy_j: Per domain, gross and net energy.
        peak_memory: Per memory kind, the highest value seen during the window, bytes. ``process-peak-rss`` and
            ``cuda-max-allocated`` are themselves lifetime high-water marks of the process.
    """

    name: str
    duration_s: float
    energy_j: dict[str, DomainEnergy]
    peak_memory: dict[str, int]

    def wholes(self) -> dict[str, DomainEnergy]:
        """Return the domains that are not part of another (the ones that may be compared or summed)."""
        return {d: e for d, e in self.energy_j.items() if e.part_of is None}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (units in the keys: ``duration_s``, ``gross_j``, bytes for memory)."""
        return {
            "name": self.name,
            "duration_s": self.duration_s,
            "energy_j": {d: dataclasses.asdict(e) for d, e in self.energy_j.items()},
            "peak_memory": dict(self.peak_memory),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """Inverse of ``to_dict`` (a window measured in a bench's child process comes back as JSON)."""
        return cls(
            name=str(data.get("name", "")),
            duration_s=float(data["duration_s"]),
            energy_j={d: DomainEnergy(**e) for d, e in data.get("energy_j", {}).items()},
            peak_memory={k: int(v) for k, v in data.get("peak_memory", {}).items()},
        )


@dataclass
class _DomainState:
    domain: str
    source: str
    reader: str
    method: str
    estimated: bool
    part_of: str | None
    energy_j: float = 0.0
    power_w: float | None = None
    t_s: float | None = None
    last_valid: bool = True
    reason: str | None = None
    last_invalid_reason: str | None = None
    samples: int = 0
    invalid_samples: int = 0
    counter_j: float | None = None
    last_invalid_flag: str = FLAG_INVALID
    unmeasured_s: dict[str, float] = field(default_factory=dict)
    """Seconds not integrated, per cause (the exporter's ``edgediff_energy_unmeasured_seconds_total``)."""
    flag_reasons: dict[str, str] = field(default_factory=dict)
    """The latest reason seen per cause, for the window's reason."""
    noted: dict[str, int] = field(default_factory=dict)
    """Valid samples carrying a flag (events integrated around, e.g. a fuel-gauge reset), per flag."""
    pending: tuple[str, float] | None = None
    """A suspend seen by the poll: the next step is not integrated and counts these seconds under this cause."""

    def skip(self, flag: str, seconds: float, reason: str | None = None) -> None:
        """Count ``seconds`` the odometer did not integrate, under ``flag``."""
        self.unmeasured_s[flag] = self.unmeasured_s.get(flag, 0.0) + max(0.0, seconds)
        if reason:
            self.flag_reasons[flag] = reason

    def energy_at(self, t_s: float) -> float:
        """The odometer at ``t_s``: a trapezoid domain holds its latest valid power from its latest sample on."""
        if (
            self.method == METHOD_TRAPEZOID
            and self.last_valid
            and self.pending is None
            and self.power_w is not None
            and self.t_s is not None
            and t_s > self.t_s
        ):
            return self.energy_j + self.power_w * (t_s - self.t_s)
        return self.energy_j


@dataclass
class _Mark:
    t_s: float
    energy_j: dict[str, float]
    samples: dict[str, int]
    invalid_samples: dict[str, int]
    peak_memory: dict[str, int] = field(default_factory=dict)
    unmeasured_s: dict[str, dict[str, float]] = field(default_factory=dict)
    noted: dict[str, dict[str, int]] = field(default_factory=dict)
    suspended_s: float = 0.0


class EnergyMonitor:
    """Samples readers in the background and measures energy over named windows.

    Example::

        monitor = EnergyMonitor.from_discovery()          # every sensor this machine has
        with monitor:
            monitor.measure_idle(5.0)                     # optional idle baseline -> net energy
            monitor.begin_window("generate")
            ...
            m = monitor.end_window("generate")
        m.energy_j["gpu-board"].net_j, m.peak_memory["process-rss"]

    Args:
        readers: The readers to poll (from ``discover``, or fixtures in tests). Names must be unique.
        interval_s: Sampler period in seconds (default 0.1 s = 10 Hz).
        background: Poll from a background thread; ``False`` leaves polling to ``poll()`` (deterministic tests).
        clock: Monotonic clock in seconds; the readers must use the same one.
        sleep: Sleep function used by ``measure_idle`` (a fake clock's ``advance`` in tests).
        unavailable: Sensors discovery could not use, kept for reports and the exporter's ``sensor_up``.
        max_gap_s: Two samples of a trapezoid domain further apart than this are a gap, not integrated (default
            ``DEFAULT_MAX_GAP_INTERVALS`` sampler periods, at least ``MIN_MAX_GAP_S``).
        boottime: A clock that keeps counting while the device is suspended (``CLOCK_BOOTTIME``), to see suspends;
            by default ``boottime_clock()`` when ``clock`` is ``time.monotonic``, else none (a test's fake clock
            passes its own). ``None``: suspends are not detected.
    """

    def __init__(
        self,
        readers: Sequence[Reader],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        unavailable: Sequence[Unavailable] = (),
        max_gap_s: float | None = None,
        boottime: Callable[[], float] | str | None = "auto",
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        if max_gap_s is not None and not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0 seconds, got {max_gap_s!r}")
        names = [r.name for r in readers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"reader names must be unique, got duplicates {duplicates}")
        self.readers: list[Reader] = list(readers)
        self.unavailable: list[Unavailable] = list(unavailable)
        self.interval_s = float(interval_s)
        self.max_gap_s = float(max_gap_s) if max_gap_s is not None else max(
            MIN_MAX_GAP_S, DEFAULT_MAX_GAP_INTERVALS * self.interval_s
        )
        if boottime == "auto":
            boottime = boottime_clock() if clock is time.monotonic else None
        self._boottime: Callable[[], float] | None = boottime if callable(boottime) else None
        self._boot_offset_s: float | None = None
        self._suspended_s = 0.0
        self.background = background
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.RLock()
        self._states: dict[str, _DomainState] = {}
        self._status: dict[str, ReaderStatus] = {r.name: ReaderStatus(True) for r in self.readers}
        self._windows: dict[str, _Mark] = {}
        self._memory: dict[str, int] = {}
        self._idle_power_w: dict[str, float] = {}
        self._idle_duration_s: float | None = None
        self._conflicts: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        if self.interval_s > DEFAULT_INTERVAL_S and any(r.provides_power for r in self.readers):
            logger.warning(
                "sampling at %.1f Hz, below 10 Hz: trapezoidal energy of power-only sensors is less accurate",
                1 / self.interval_s,
            )

    @classmethod
    def from_discovery(
        cls,
        root: str | Path = "/",
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        **discover_options: Any,
    ) -> EnergyMonitor:
        """Build a monitor over every sensor ``discover`` finds.

        Args:
            root: Filesystem root for sysfs/procfs.
            interval_s: Sampler period, seconds.
            background: Poll from a background thread.
            clock: Monotonic clock, seconds.
            sleep: Sleep function for ``measure_idle``.
            **discover_options: Passed to ``edgediff.telemetry.discovery.discover`` (e.g. ``fixture_power_w=50.0``,
                ``estimated_cpu_tdp_w=65.0``, ``tegrastats_command=[...]``).
        """
        found = discover(root, clock=clock, **discover_options)
        return cls(
            found.readers,
            interval_s=interval_s,
            background=background,
            clock=clock,
            sleep=sleep,
            unavailable=found.unavailable,
        )

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> EnergyMonitor:
        """Start the readers (a reader that cannot start becomes ``Unavailable``), poll once, start the sampler."""
        with self._lock:
            if self._started:
                return self
            for reader in list(self.readers):
                try:
                    reader.start()
                except ReaderError as exc:
                    logger.warning("%s unavailable: %s", reader.name, exc)
                    self.readers.remove(reader)
                    self._status.pop(reader.name, None)
                    self.unavailable.append(Unavailable(reader.name, str(exc)))
            self._started = True
            self.poll()
        if self.background:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edgediff-energy-sampler", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the sampler thread and the readers. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        with self._lock:
            for reader in self.readers:
                try:
                    reader.stop()
                except Exception as exc:  # a reader failing to stop must not keep the others running
                    logger.warning("%s: stop failed: %s", reader.name, exc)
            self._started = False

    def __enter__(self) -> EnergyMonitor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        next_s = time.monotonic()
        while True:
            next_s += self.interval_s
            delay = next_s - time.monotonic()
            if delay < 0:  # fell behind (a slow read): do not try to catch up with a burst
                next_s, delay = time.monotonic(), 0.0
            if self._stop.wait(delay):
                return
            self.poll()

    # --- sampling ----------------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Read every reader once, now. Called by the sampler thread; call it yourself when ``background=False``."""
        with self._lock:
            self._check_suspend()
            for reader in self.readers:
                self._poll_reader(reader)

    def _check_suspend(self) -> None:
        """Compare ``CLOCK_BOOTTIME`` with the monotonic clock: growth of their difference is time suspended."""
        if self._boottime is None:
            return
        offset_s = self._boottime() - self._clock()
        previous, self._boot_offset_s = self._boot_offset_s, offset_s
        if previous is None or offset_s - previous <= SUSPEND_MIN_S:
            return
        suspended_s = offset_s - previous
        self._suspended_s += suspended_s
        logger.warning("the device was suspended for %.1f s (CLOCK_BOOTTIME ran ahead of CLOCK_MONOTONIC): windows "
                       "open now are not continuous and power-sampled energy is not integrated across it", suspended_s)
        for state in self._states.values():
            if state.method == METHOD_TRAPEZOID and state.t_s is not None:
                flag, seconds = state.pending or (FLAG_SUSPEND, 0.0)
                state.pending = (flag, seconds + suspended_s)

    def _poll_reader(self, reader: Reader) -> None:
        try:
            for sample in reader.read_energy():
                self._add_energy(reader, sample)
            for sample in sorted(reader.read_power(), key=lambda s: s.t_s):
                self._add_power(reader, sample)
            for mem in reader.read_memory():
                self._memory[mem.kind] = mem.used_bytes
                for mark in self._windows.values():
                    mark.peak_memory[mem.kind] = max(mark.peak_memory.get(mem.kind, 0), mem.used_bytes)
        except ReaderError as exc:
            self._set_status(reader, ReaderStatus(False, str(exc)))
            return
        except Exception as exc:  # one broken reader must not stop the sampler or the other readers
            self._set_status(reader, ReaderStatus(False, f"{type(exc).__name__}: {exc}"))
            return
        self._set_status(reader, ReaderStatus(True))

    def _set_status(self, reader: Reader, status: ReaderStatus) -> None:
        previous = self._status.get(reader.name)
        self._status[reader.name] = status
        if previous == status:
            return
        if not status.up:
            logger.warning("%s is down: %s", reader.name, status.reason)
        elif previous is not None and not previous.up:
            logger.info("%s is up again", reader.name)

    def _state_for(self, reader: Reader, sample: PowerSample | EnergySample, method: str) -> _DomainState | None:
        state = self._states.get(sample.domain)
        if state is None:
            state = _DomainState(
                domain=sample.domain,
                source=sample.source,
                reader=reader.name,
                method=method,
                estimated=getattr(sample, "estimated", False),
                part_of=sample.part_of,
            )
            self._states[sample.domain] = state
            return state
        if state.reader != reader.name:
            if (sample.domain, reader.name) not in self._conflicts:
                self._conflicts.add((sample.domain, reader.name))
                logger.error(
                    "domain %r is already measured by %s; samples from %s are ignored",
                    sample.domain,
                    state.reader,
                    reader.name,
                )
            return None
        return state

    def _add_energy(self, reader: Reader, sample: EnergySample) -> None:
        state = self._state_for(reader, sample, METHOD_COUNTER)
        if state is None or state.method != METHOD_COUNTER:
            return
        if state.counter_j is not None and state.t_s is not None:
            delta_j = counter_delta_j(state.counter_j, sample.energy_j, sample.range_j)
            if sample.energy_j < state.counter_j and sample.range_j is None:
                logger.warning("%s/%s: energy counter went back (reset?); 0 J counted", state.source, state.domain)
            state.energy_j += delta_j
            if sample.t_s > state.t_s:
                state.power_w = delta_j / (sample.t_s - state.t_s)
        state.counter_j = sample.energy_j
        state.t_s = sample.t_s
        state.samples += 1

    def _add_power(self, reader: Reader, sample: PowerSample) -> None:
        state = self._state_for(reader, sample, METHOD_TRAPEZOID)
        if state is None:
            return
        if state.method == METHOD_COUNTER:  # the counter gives energy; the sample only refreshes the gauge
            if sample.valid:
                state.power_w = sample.power_w
            return
        if state.t_s is not None and sample.t_s <= state.t_s:
            return  # not newer than what is integrated already
        state.samples += 1
        skipped = self._skipped_step(state, sample)
        if not sample.valid:
            state.invalid_samples += 1
            flag = sample.flag or FLAG_INVALID
            if state.last_valid or state.reason != sample.reason:
                logger.warning(
                    "%s/%s: samples are invalid and not counted: %s", state.source, state.domain, sample.reason
                )
            if skipped is None and state.t_s is not None:
                skipped = flag, sample.t_s - state.t_s
            state.flag_reasons[flag] = sample.reason or flag
            state.last_valid, state.reason, state.last_invalid_reason = False, sample.reason, sample.reason
            state.last_invalid_flag = flag
        elif sample.flag:
            state.noted[sample.flag] = state.noted.get(sample.flag, 0) + 1
        if skipped is not None:
            state.skip(*skipped)
        if not sample.valid:
            state.power_w, state.t_s = None, sample.t_s
            return
        if not state.last_valid:
            logger.info("%s/%s: samples are valid again", state.source, state.domain)
        if skipped is None and state.last_valid and state.power_w is not None and state.t_s is not None:
            state.energy_j += trapezoid_step_j(state.t_s, state.power_w, sample.t_s, sample.power_w)
        state.power_w, state.t_s = sample.power_w, sample.t_s
        state.last_valid, state.reason = True, None

    def _skipped_step(self, state: _DomainState, sample: PowerSample) -> tuple[str, float] | None:
        """``(cause, seconds)`` when the step to ``sample`` must not be integrated, else ``None``.

        A step is skipped for a cause of its own: a suspend since the previous sample, a gap longer than
        ``max_gap_s``, or an invalid previous sample (its cause then covers the step).
        """
        if state.t_s is None:
            return None
        step_s = sample.t_s - state.t_s
        if state.pending is not None:
            (flag, seconds), state.pending = state.pending, None
            return flag, seconds + step_s
        if step_s > self.max_gap_s:
            reason = (f"no sample for {step_s:.1f} s, more than max_gap_s={self.max_gap_s:g} s (the sampler stalled "
                      "or the process was frozen): not integrated")
            logger.warning("%s/%s: %s", state.source, state.domain, reason)
            state.flag_reasons[FLAG_SAMPLE_GAP] = reason
            return FLAG_SAMPLE_GAP, step_s
        if not state.last_valid:
            return state.last_invalid_flag, step_s
        return None

    # --- state for the exporter --------------------------------------------------------------------------------
    def readings(self) -> list[DomainReading]:
        """Return the current state of every domain (energy since start, latest power)."""
        with self._lock:
            return [
                DomainReading(
                    domain=s.domain,
                    source=s.source,
                    reader=s.reader,
                    method=s.method,
                    energy_j=s.energy_j,
                    power_w=s.power_w if s.last_valid else None,
                    estimated=s.estimated,
                    part_of=s.part_of,
                    valid=s.last_valid,
                    reason=s.reason,
                    unmeasured_s=dict(s.unmeasured_s),
                )
                for s in self._states.values()
            ]

    def reader_status(self) -> dict[str, ReaderStatus]:
        """Return, per reader, whether its last poll worked."""
        with self._lock:
            return dict(self._status)

    @property
    def has_power_sensor(self) -> bool:
        """True when at least one reader measures (or estimates) power or energy."""
        return any(r.provides_power for r in self.readers)

    @property
    def idle_power_w(self) -> dict[str, float]:
        """The idle baseline per domain, watts (empty until ``measure_idle`` or ``set_idle_power``)."""
        with self._lock:
            return dict(self._idle_power_w)

    @property
    def idle_duration_s(self) -> float | None:
        """How long the idle baseline was measured, seconds; ``None`` when it was given or never measured."""
        return self._idle_duration_s

    @property
    def open_windows(self) -> tuple[str, ...]:
        """Names of the windows begun and not yet ended."""
        with self._lock:
            return tuple(self._windows)

    # --- windows -----------------------------------------------------------------------------------------------
    def _mark(self) -> _Mark:
        self.poll()
        t_s = self._clock()
        return _Mark(
            t_s=t_s,
            energy_j={d: s.energy_at(t_s) for d, s in self._states.items()},
            samples={d: s.samples for d, s in self._states.items()},
            invalid_samples={d: s.invalid_samples for d, s in self._states.items()},
            peak_memory=dict(self._memory),
            unmeasured_s={d: dict(s.unmeasured_s) for d, s in self._states.items()},
            noted={d: dict(s.noted) for d, s in self._states.items()},
            suspended_s=self._suspended_s,
        )

    def _measure(self, name: str, mark: _Mark, idle_power_w: Mapping[str, float]) -> Measurement:
        self.poll()
        t_end_s = self._clock()
        duration_s = t_end_s - mark.t_s
        energy: dict[str, DomainEnergy] = {}
        for domain, state in self._states.items():
            samples = state.samples - mark.samples.get(domain, 0)
            invalid = state.invalid_samples - mark.invalid_samples.get(domain, 0)
            reason, flags = self._window_reason(state, mark, t_end_s, samples, invalid)
            energy[domain] = DomainEnergy.over(
                domain=domain,
                source=state.source,
                method=state.method,
                gross_j=state.energy_at(t_end_s) - mark.energy_j[domain] if reason is None else None,
                duration_s=duration_s,
                idle_power_w=idle_power_w.get(domain),
                estimated=state.estimated,
                part_of=state.part_of,
                reason=reason,
                samples=samples,
                flags=flags,
            )
        return Measurement(name=name, duration_s=duration_s, energy_j=energy, peak_memory=dict(mark.peak_memory))

    def _window_reason(
        self, state: _DomainState, mark: _Mark, t_end_s: float, samples: int, invalid: int
    ) -> tuple[str | None, list[str]]:
        """Why the window is not valid for ``state``'s domain (``None`` when it is), and the flags of what happened."""
        domain = state.domain
        status = self._status.get(state.reader, ReaderStatus(True))
        if domain not in mark.energy_j:
            return f"{state.source} produced its first sample after the window began", [FLAG_LATE_START]
        before = mark.unmeasured_s.get(domain, {})
        skipped = {f: v - before.get(f, 0.0) for f, v in state.unmeasured_s.items() if v - before.get(f, 0.0) > 0}
        noted = [f for f, n in state.noted.items() if n > mark.noted.get(domain, {}).get(f, 0)]
        reasons: list[str] = []
        flags: list[str] = []
        suspended_s = self._suspended_s - mark.suspended_s
        if suspended_s > 0:
            reasons.append(f"the device suspended for {suspended_s:.1f} s during the window (CLOCK_BOOTTIME ran "
                           "ahead of CLOCK_MONOTONIC): the window is not continuous")
            flags.append(FLAG_SUSPEND)
        causes = {f: v for f, v in skipped.items() if f not in (FLAG_SAMPLE_GAP, FLAG_SUSPEND)}
        if invalid or causes:  # causes without an invalid sample: the window began while samples were invalid
            detail = "; ".join(f"{state.flag_reasons.get(f, f)} ({v:.1f} s)" for f, v in causes.items())
            head = f"{invalid} of {samples} samples invalid" if invalid else "samples were invalid when it began"
            reasons.append(f"{head}: {detail or state.last_invalid_reason}")
            flags += list(causes) or [state.last_invalid_flag]
        elif not state.last_valid:
            reasons.append(f"samples invalid since before the window: {state.reason}")
            flags.append(state.last_invalid_flag)
        gap_s = skipped.get(FLAG_SAMPLE_GAP, 0.0)
        if state.method == METHOD_TRAPEZOID and state.t_s is not None and t_end_s - state.t_s > self.max_gap_s:
            gap_s += t_end_s - state.t_s  # no sample since: the held power would bridge the gap at the end
            state.flag_reasons[FLAG_SAMPLE_GAP] = (f"no sample for the last {t_end_s - state.t_s:.1f} s of the "
                                                   f"window, more than max_gap_s={self.max_gap_s:g} s")
        if gap_s > 0:
            reasons.append(f"{gap_s:.1f} s not measured: {state.flag_reasons.get(FLAG_SAMPLE_GAP, 'sampling gap')}")
            flags.append(FLAG_SAMPLE_GAP)
        if not reasons and samples == 0:
            reasons.append(f"no sample from {state.source} during the window")
            flags.append(FLAG_NO_SAMPLES)
        if not reasons and not status.up:
            reasons.append(f"{state.reader} is down: {status.reason}")
            flags.append(FLAG_SENSOR_DOWN)
        return ("; ".join(reasons) or None), flags + noted

    def begin_window(self, name: str) -> None:
        """Open a window called ``name`` (starting the monitor if needed).

        Raises:
            ValueError: ``name`` is empty or a window with that name is already open.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        if not self._started:
            self.start()
        with self._lock:
            if name in self._windows:
                raise ValueError(f"window {name!r} is already open; end it before beginning it again")
            self._windows[name] = self._mark()

    def end_window(self, name: str) -> Measurement:
        """Close the window ``name`` and return its measurement.

        Raises:
            ValueError: No window called ``name`` is open.
        """
        with self._lock:
            if name not in self._windows:
                raise ValueError(f"no open window named {name!r}; open windows: {sorted(self._windows)}")
            mark = self._windows.pop(name)
            measurement = self._measure(name, mark, self._idle_power_w)
        for d, e in measurement.energy_j.items():
            tag = " (ESTIMATED)" if e.estimated else ""
            if e.valid:
                logger.debug(
                    "window %s: %s%s gross %.3f J over %.3f s", name, d, tag, e.gross_j, measurement.duration_s
                )
            else:
                logger.warning("window %s: %s%s has no valid energy: %s", name, d, tag, e.reason)
        return measurement

    # --- idle baseline -----------------------------------------------------------------------------------------
    def measure_idle(self, duration_s: float) -> dict[str, float]:
        """Measure idle power per domain over ``duration_s`` seconds; later windows then report net energy.

        Run it while the device does nothing (before loading the model). Domains whose idle window was not valid
        (e.g. a phone on USB) get no baseline and their ``net_j`` stays ``None``.

        Args:
            duration_s: How long to measure, seconds (> 0).

        Returns:
            Idle power per domain, watts.
        """
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0 seconds, got {duration_s!r}")
        if not self._started:
            self.start()
        with self._lock:
            mark = self._mark()
        while (remaining_s := duration_s - (self._clock() - mark.t_s)) > 0:
            self._sleep(min(self.interval_s, remaining_s) if not self.background else remaining_s)
            if not self.background:
                self.poll()
        with self._lock:
            measurement = self._measure("idle", mark, {})
            idle = {
                d: e.gross_j / measurement.duration_s
                for d, e in measurement.energy_j.items()
                if e.gross_j is not None and measurement.duration_s > 0
            }
            self._idle_power_w = idle
            self._idle_duration_s = measurement.duration_s
        for d, e in measurement.energy_j.items():
            tag = " (ESTIMATED)" if e.estimated else ""
            if d in idle:
                logger.info("idle baseline %s%s: %.3f W over %.1f s", d, tag, idle[d], measurement.duration_s)
            else:
                logger.warning("no idle baseline for %s%s: %s", d, tag, e.reason)
        return dict(idle)

    def set_idle_power(self, idle_power_w: Mapping[str, float]) -> None:
        """Use a known idle baseline (watts per domain) instead of measuring one."""
        for domain, watts in idle_power_w.items():
            if not watts >= 0:
                raise ValueError(f"idle power of {domain!r} must be >= 0 watts, got {watts!r}")
        with self._lock:
            self._idle_power_w = dict(idle_power_w)
            self._idle_duration_s = None
