"""Find the sensors this machine has: cheap probes, working readers back, and a typed reason for every other one.

``discover`` never invents a number: a sensor it cannot read becomes ``Unavailable(reader, reason)``. The estimated
CPU reader and the fixture reader are never chosen unless asked for by their options.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgediff.errors import InvalidArgumentError
from edgediff.telemetry import android_battery, estimated_cpu, memory, nvml, rapl, tegrastats
from edgediff.telemetry.base import DOMAIN_CPU_PACKAGE, Reader, ReaderError, Unavailable
from edgediff.telemetry.fixture import ConstantPowerReader

logger = logging.getLogger(__name__)


@dataclass
class Discovery:
    """What ``discover`` found.

    Attributes:
        readers: Readers that answered their probe, not yet started.
        unavailable: One entry per sensor family that is not usable here, with the reason.
    """

    readers: list[Reader] = field(default_factory=list)
    unavailable: list[Unavailable] = field(default_factory=list)

    @property
    def has_power_sensor(self) -> bool:
        """True when at least one reader measures (or estimates) power or energy."""
        return any(r.provides_power for r in self.readers)

    def reasons(self) -> str:
        """All the unavailable sensors and why, on one line (``"nvml: ...; rapl: ..."``)."""
        return "; ".join(str(u) for u in self.unavailable) or "none"


def discover(
    root: str | Path = "/",
    *,
    clock: Callable[[], float] = time.monotonic,
    nvml_enabled: bool = True,
    tegrastats_command: Sequence[str] | None = ("tegrastats",),
    tegrastats_interval_s: float = 0.1,
    battery_current_unit: str = "auto",
    battery_current_sign: str = "auto",
    rapl_enabled: bool = True,
    memory_pid: int | None = None,
    estimated_cpu_tdp_w: float | None = None,
    fixture_power_w: float | None = None,
) -> Discovery:
    """Probe every sensor family and return the readers that work.

    Args:
        root: Filesystem root that holds ``sys/`` and ``proc/`` (``/``; a fixture tree in tests). NVML is a library
            and is probed regardless of ``root``.
        clock: Monotonic clock in seconds for every reader (the monitor's clock).
        nvml_enabled: Probe NVIDIA GPUs through NVML.
        tegrastats_command: The tegrastats executable and leading arguments; ``None`` skips Jetson probing.
        tegrastats_interval_s: tegrastats sampling interval, seconds (default 0.1).
        battery_current_unit: ``auto``, ``uA`` or ``mA`` for Android's ``current_now`` (see ``android_battery``).
        battery_current_sign: ``auto``, ``negative`` or ``positive``: how the battery driver signs a discharge.
        rapl_enabled: Probe RAPL zones.
        memory_pid: Watch another process's memory (``None``: this process).
        estimated_cpu_tdp_w: Turn on the ESTIMATED CPU power (utilization x this TDP in watts). Ignored, with a
            reason, when RAPL measures the CPU package.
        fixture_power_w: Add a ``ConstantPowerReader`` of this many watts (tests and load-test checks only).

    Returns:
        The working readers (not started) and the unavailable ones with their reasons.
    """
    if estimated_cpu_tdp_w is not None and not estimated_cpu_tdp_w > 0:
        raise InvalidArgumentError(f"estimated_cpu_tdp_w must be > 0 watts, got {estimated_cpu_tdp_w!r}")
    if fixture_power_w is not None and not fixture_power_w >= 0:
        raise InvalidArgumentError(f"fixture_power_w must be >= 0 watts, got {fixture_power_w!r}")
    if not tegrastats_interval_s > 0:
        raise InvalidArgumentError(f"tegrastats_interval_s must be > 0 seconds, got {tegrastats_interval_s!r}")
    found = Discovery()

    if nvml_enabled:
        readers, reason = nvml.probe_nvml(clock)
        found.readers.extend(readers)
        if reason:
            found.unavailable.append(Unavailable(nvml.READER_NAME, reason))

    if tegrastats_command:
        executable = shutil.which(tegrastats_command[0])
        if executable is None:
            reason = f"{tegrastats_command[0]!r} not found on PATH (not a Jetson, or JetPack's tools are missing)"
            found.unavailable.append(Unavailable(tegrastats.READER_NAME, reason))
        else:
            found.readers.append(
                tegrastats.TegrastatsReader(tegrastats_command, interval_s=tegrastats_interval_s, clock=clock)
            )

    battery, reason = android_battery.probe_android_battery(
        root, current_unit=battery_current_unit, clock=clock, current_sign=battery_current_sign
    )
    if battery is not None:
        found.readers.append(battery)
    else:
        found.unavailable.append(Unavailable(android_battery.READER_NAME, reason or "unknown"))

    rapl_reader = None
    if rapl_enabled:
        zones, reason = rapl.find_rapl_zones(root)
        if zones:
            rapl_reader = rapl.RaplReader(zones, clock=clock)
            found.readers.append(rapl_reader)
        else:
            found.unavailable.append(Unavailable(rapl.READER_NAME, reason or "unknown"))

    if estimated_cpu_tdp_w is not None:
        if rapl_reader is not None and any(z.domain == DOMAIN_CPU_PACKAGE for z in rapl_reader.zones):
            reason = "RAPL measures cpu-package on this machine; an estimate is never used where a measurement exists"
            found.unavailable.append(Unavailable(estimated_cpu.READER_NAME, reason))
        else:
            reader = estimated_cpu.EstimatedCpuReader(estimated_cpu_tdp_w, root=root, clock=clock)
            try:
                estimated_cpu.read_cpu_times(reader.stat_path)
            except ReaderError as exc:
                found.unavailable.append(Unavailable(estimated_cpu.READER_NAME, str(exc)))
            else:
                found.readers.append(reader)

    if fixture_power_w is not None:
        logger.warning("fixture power %.3f W: a made-up number for tests, labelled source=fixture", fixture_power_w)
        found.readers.append(ConstantPowerReader(fixture_power_w, clock=clock))

    mem, reason = memory.probe_memory(root, memory_pid)
    if mem is not None:
        found.readers.append(mem)
    else:
        found.unavailable.append(Unavailable(memory.READER_NAME, reason or "unknown"))

    for item in found.unavailable:
        logger.info("%s unavailable: %s", item.reader, item.reason)
    return found
