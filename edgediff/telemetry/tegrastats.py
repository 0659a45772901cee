"""NVIDIA Jetson boards through ``tegrastats``: power rails, RAM, swap and GPU load, parsed from its output lines.

Two line formats exist. JetPack 4 (Nano, TX2, Xavier) prints rails as ``NAME cur/avg`` in milliwatts without a
unit; JetPack 5 and 6 (Orin) print ``NAME curmW/avgmW`` and may prefix the line with a date::

    RAM 2011/3956MB (lfb 150x4MB) SWAP 0/1978MB ... GR3D_FREQ 0%@921 ... POM_5V_IN 2170/2170 POM_5V_GPU 0/0 ...
    RAM 2472/7620MB ... GR3D_FREQ 0%@[305] ... VDD_IN 4437mW/4437mW VDD_CPU_GPU_CV 515mW/515mW VDD_SOC ...

The first number of a rail is the instantaneous reading (used here); the second is tegrastats' running average.

Each rail maps to one power domain. The module's input rail is the whole (``soc-total``): ``POM_5V_IN`` on a
JetPack 4 Nano, ``VDD_IN`` on Xavier NX, TX2 and Orin NX/Nano. The other rails are parts of it, marked
``part_of="soc-total"``, and must never be added to it: on a Nano ``POM_5V_GPU`` is the GPU (domain ``gpu``) and
``POM_5V_CPU`` the CPU (domain ``cpu``); on Orin ``VDD_CPU_GPU_CV`` is one rail feeding CPU, GPU and the vision
accelerators together (domain ``cpu-gpu-cv``; it is *not* the GPU alone), ``VDD_SOC`` the rest of the SoC. Boards
whose tegrastats shows no input rail (AGX Xavier, AGX Orin) report their rails as separate domains with no
``soc-total``. RAM and SWAP are printed in MiB (tegrastats' "MB").
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edgediff.telemetry.base import DOMAIN_SOC_TOTAL, MemorySample, PowerSample, Reader, ReaderError

logger = logging.getLogger(__name__)

READER_NAME = "tegrastats"
SOURCE = "tegrastats"
MIB = 1024 * 1024

RAIL_DOMAINS: dict[str, tuple[str, str | None]] = {
    # JetPack 4, Nano: the 5 V module input and two of its parts.
    "POM_5V_IN": (DOMAIN_SOC_TOTAL, None),
    "POM_5V_GPU": ("gpu", DOMAIN_SOC_TOTAL),
    "POM_5V_CPU": ("cpu", DOMAIN_SOC_TOTAL),
    # Xavier NX (JetPack 4/5), Orin NX and Orin Nano (JetPack 5/6), TX2: the module input.
    "VDD_IN": (DOMAIN_SOC_TOTAL, None),
    "VDD_CPU_GPU_CV": ("cpu-gpu-cv", DOMAIN_SOC_TOTAL),
    "VDD_SOC": ("soc", DOMAIN_SOC_TOTAL),
    # TX2 (JetPack 4).
    "VDD_SYS_GPU": ("gpu", DOMAIN_SOC_TOTAL),
    "VDD_SYS_CPU": ("cpu", DOMAIN_SOC_TOTAL),
    "VDD_SYS_SOC": ("soc", DOMAIN_SOC_TOTAL),
    "VDD_SYS_DDR": ("dram", DOMAIN_SOC_TOTAL),
    "VDD_4V0_WIFI": ("wifi", DOMAIN_SOC_TOTAL),
    # AGX Orin (JetPack 5/6): no input rail in tegrastats.
    "VDD_GPU_SOC": ("gpu-soc", None),
    "VDD_CPU_CV": ("cpu-cv", None),
    "VIN_SYS_5V0": ("sys-5v0", None),
    "VDDQ_VDD2_1V8AO": ("dram", None),
    # AGX Xavier (JetPack 4/5): no input rail in tegrastats.
    "GPU": ("gpu", None),
    "CPU": ("cpu", None),
    "SOC": ("soc", None),
    "CV": ("cv", None),
    "VDDRQ": ("dram", None),
    "SYS5V": ("sys-5v", None),
}
"""Rail name -> (domain, the domain it is part of). Rails not listed get their lower-cased name as domain."""

_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+)(?:,\d+)*\]?)?")
# A rail: an upper-case name, then "cur/avg" (JetPack 4, mW implied) or "curmW/avgmW" (JetPack 5/6), then a space
# or the end of the line (so "RAM 2011/3956MB" and "IRAM 0/252kB" are not rails).
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(mW)?/(\d+)(?:mW)?(?=\s|$)")


class TegrastatsParseError(ValueError):
    """A line is not a tegrastats report (a warning or an error message printed by the tool)."""


@dataclass(frozen=True)
class Rail:
    """One power rail of one tegrastats line.

    Attributes:
        name: As printed (``POM_5V_IN``, ``VDD_CPU_GPU_CV``, ...).
        domain: The power domain it measures.
        part_of: The domain it is a part of, when that whole is on the same line; else ``None``.
        power_w: Instantaneous power, watts.
        average_w: tegrastats' running average since it started, watts.
    """

    name: str
    domain: str
    part_of: str | None
    power_w: float
    average_w: float


@dataclass(frozen=True)
class TegrastatsFrame:
    """Everything this module reads from one tegrastats line.

    Attributes:
        rails: Power rails in the order printed.
        ram_used_bytes: ``RAM used`` (MiB converted to bytes), or ``None`` when absent.
        ram_total_bytes: ``RAM total``, bytes.
        swap_used_bytes: ``SWAP used``, bytes.
        swap_total_bytes: ``SWAP total``, bytes.
        gpu_utilization_ratio: ``GR3D_FREQ`` load on 0..1.
        gpu_freq_hz: ``GR3D_FREQ`` clock (the first GPC's on AGX Orin), hertz; ``None`` when not printed.
        units_in_line: True for the JetPack 5/6 format (``mW`` printed after each rail value).
    """

    rails: tuple[Rail, ...]
    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    gpu_utilization_ratio: float | None = None
    gpu_freq_hz: float | None = None
    units_in_line: bool = False

    def rail(self, name: str) -> Rail:
        """Return the rail called ``name``; ``KeyError`` naming the rails present when it is absent."""
        for rail in self.rails:
            if rail.name == name:
                return rail
        raise KeyError(f"no rail {name!r} in this line; rails: {[r.name for r in self.rails]}")

    def power_samples(self, t_s: float) -> list[PowerSample]:
        """Return one power sample per rail, stamped ``t_s``."""
        return [
            PowerSample(t_s=t_s, power_w=r.power_w, domain=r.domain, source=SOURCE, part_of=r.part_of)
            for r in self.rails
        ]

    def memory_samples(self) -> list[MemorySample]:
        """Return RAM and swap in use (``tegrastats-ram-used``, ``swap-used``) when the line has them."""
        out = []
        if self.ram_used_bytes is not None:
            out.append(MemorySample(kind="tegrastats-ram-used", used_bytes=self.ram_used_bytes, source=SOURCE))
        if self.swap_used_bytes is not None:
            out.append(MemorySample(kind="swap-used", used_bytes=self.swap_used_bytes, source=SOURCE))
        return out


def parse_line(line: str) -> TegrastatsFrame:
    """Parse one tegrastats line (JetPack 4, 5 or 6 format).

    Args:
        line: One line of ``tegrastats`` output.

    Raises:
        TegrastatsParseError: The line has neither RAM nor a power rail (not a report).
    """
    ram = _RAM.search(line)
    swap = _SWAP.search(line)
    gr3d = _GR3D.search(line)
    raw_rails = _RAIL.findall(line)
    if ram is None and not raw_rails:
        raise TegrastatsParseError(f"not a tegrastats report: {line.strip()[:120]!r}")
    names = {name for name, *_ in raw_rails}
    rails = []
    for name, cur_mw, _unit, avg_mw in raw_rails:
        domain, part_of = RAIL_DOMAINS.get(name, (name.lower().replace("_", "-"), None))
        if part_of is not None and not any(RAIL_DOMAINS.get(n, ("", None))[0] == part_of for n in names):
            part_of = None  # the whole is not on this line: do not claim a containment nobody can check
        rails.append(Rail(name, domain, part_of, int(cur_mw) / 1e3, int(avg_mw) / 1e3))
    return TegrastatsFrame(
        rails=tuple(rails),
        ram_used_bytes=int(ram.group(1)) * MIB if ram else None,
        ram_total_bytes=int(ram.group(2)) * MIB if ram else None,
        swap_used_bytes=int(swap.group(1)) * MIB if swap else None,
        swap_total_bytes=int(swap.group(2)) * MIB if swap else None,
        gpu_utilization_ratio=int(gr3d.group(1)) / 100 if gr3d else None,
        gpu_freq_hz=int(gr3d.group(2)) * 1e6 if gr3d and gr3d.group(2) is not None else None,
        units_in_line=any(unit for _, _, unit, _ in raw_rails),
    )


class TegrastatsReader(Reader):
    """Runs ``tegrastats --interval <ms>`` and turns each line into power samples stamped when it arrived.

    Args:
        command: The tegrastats command and its arguments before ``--interval`` (a fake script in tests).
        interval_s: Sampling interval, seconds (default 0.1 s, i.e. 10 Hz).
        clock: Monotonic clock in seconds, shared with the monitor.
        first_line_timeout_s: How long ``start`` waits for the first report before giving up; default
            ``max(3 s, 20 intervals)``.
    """

    name = READER_NAME
    provides_power = True

    def __init__(
        self,
        command: Sequence[str] = ("tegrastats",),
        interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        first_line_timeout_s: float | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0 seconds, got {interval_s!r}")
        if not command:
            raise ValueError("command must name the tegrastats executable, got an empty sequence")
        self.command = tuple(command)
        self.interval_s = interval_s
        self._clock = clock
        self._timeout_s = first_line_timeout_s if first_line_timeout_s is not None else max(3.0, 20 * interval_s)
        self._lock = threading.Lock()
        self._pending: list[tuple[float, TegrastatsFrame]] = []
        self._latest: tuple[float, TegrastatsFrame] | None = None
        self._first = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._exit_reason: str | None = None
        self._last_other_line = ""

    def start(self) -> None:
        """Launch tegrastats and wait for its first report."""
        if self._proc is not None:
            return
        interval_ms = max(1, round(self.interval_s * 1e3))
        argv = [*self.command, "--interval", str(interval_ms)]
        # Lines are stamped when they arrive: ask for line-buffered output in case stdout to a pipe is buffered.
        stdbuf = shutil.which("stdbuf")
        if stdbuf is not None:
            argv = [stdbuf, "-oL", *argv]
        try:
            self._proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace"
            )
        except OSError as exc:
            raise ReaderError(f"cannot run {self.command[0]!r}: {exc.strerror or exc}") from exc
        self._thread = threading.Thread(target=self._pump, name="edgediff-tegrastats", daemon=True)
        self._thread.start()
        self._first.wait(self._timeout_s)
        with self._lock:
            started = self._latest is not None
        if not started:
            reason = self._exit_reason or f"no report from {self.command[0]!r} within {self._timeout_s:g} s"
            self.stop()
            raise ReaderError(reason)

    def _pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            t_s = self._clock()
            try:
                frame = parse_line(line)
            except TegrastatsParseError:
                self._last_other_line = line.strip()
                logger.debug("tegrastats: skipped a line that is not a report: %r", line.strip())
                continue
            with self._lock:
                self._pending.append((t_s, frame))
                self._latest = (t_s, frame)
            self._first.set()
        code = proc.wait()
        tail = f": {self._last_other_line[:200]}" if self._last_other_line else ""
        self._exit_reason = f"tegrastats exited with code {code}{tail}"
        self._first.set()

    def read_power(self) -> list[PowerSample]:
        """Return the rails of every line received since the previous call."""
        with self._lock:
            pending, self._pending = self._pending, []
            latest = self._latest
        if not pending:
            if self._exit_reason is not None:
                raise ReaderError(self._exit_reason)
            if latest is not None and self._clock() - latest[0] > max(2.0, 20 * self.interval_s):
                raise ReaderError(f"no tegrastats report for {self._clock() - latest[0]:.1f} s")
        return [sample for t_s, frame in pending for sample in frame.power_samples(t_s)]

    def read_memory(self) -> list[MemorySample]:
        """RAM and swap in use from the latest line."""
        with self._lock:
            latest = self._latest
        return latest[1].memory_samples() if latest is not None else []

    @property
    def latest_frame(self) -> TegrastatsFrame | None:
        """The most recent parsed line (GPU load and clock included), or ``None`` before the first."""
        with self._lock:
            return self._latest[1] if self._latest is not None else None

    def stop(self) -> None:
        """Terminate tegrastats (``SIGTERM``, then ``SIGKILL`` after 2 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if proc.stdout is not None:
            proc.stdout.close()
