"""Intel and AMD CPUs through the Linux powercap RAPL interface, ``/sys/class/powercap/intel-rapl:*``.

Each zone directory holds ``name`` (``package-0``, ``core``, ``uncore``, ``dram``, ``psys``), ``energy_uj`` (a
counter in microjoules that wraps back to 0) and ``max_energy_range_uj`` (the value it wraps at). Zones map to
domains:

* ``package-N`` -> ``cpu-package`` for socket 0, ``cpu-package-N`` for the others;
* ``core`` and ``uncore`` (sub-zones of a package) -> ``cpu-core``/``cpu-uncore`` (``-N``), parts of the package;
* ``dram`` -> ``dram`` (``-N``): memory power, outside the package even where the sysfs tree nests it;
* ``psys`` -> ``platform``: the whole SoC platform on laptops.

Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694); the probe says so instead of reporting no
CPU power. ``intel-rapl-mmio:*`` zones duplicate the package zone and are ignored.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgediff.telemetry.base import DOMAIN_CPU_PACKAGE, EnergySample, Reader, ReaderError, read_int, read_text

READER_NAME = "rapl"
SOURCE = "rapl"
POWERCAP_DIR = "sys/class/powercap"
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_PACKAGE = re.compile(r"^package-(\d+)$")


@dataclass(frozen=True)
class RaplZone:
    """One RAPL zone.

    Attributes:
        path: The zone's sysfs directory.
        zone_name: Its ``name`` file (``package-0``, ``core``, ``dram``, ...).
        domain: The power domain it measures.
        part_of: The domain it is a part of (the package, for ``core`` and ``uncore``), else ``None``.
        range_j: ``max_energy_range_uj`` in joules: where ``energy_uj`` wraps.
    """

    path: Path
    zone_name: str
    domain: str
    part_of: str | None
    range_j: float


def _suffixed(base: str, socket: int) -> str:
    return base if socket == 0 else f"{base}-{socket}"


def zone_domain(zone_name: str, socket: int) -> tuple[str, str | None]:
    """Return ``(domain, part_of)`` of a RAPL zone called ``zone_name`` on socket ``socket``."""
    package = _suffixed(DOMAIN_CPU_PACKAGE, socket)
    if _PACKAGE.match(zone_name):
        return package, None
    if zone_name in ("core", "uncore"):
        return _suffixed(f"cpu-{zone_name}", socket), package
    if zone_name == "dram":
        return _suffixed("dram", socket), None
    if zone_name == "psys":
        return _suffixed("platform", socket), None
    return _suffixed(f"rapl-{zone_name}", socket), None


def find_rapl_zones(root: str | Path = "/") -> tuple[list[RaplZone], str | None]:
    """List the RAPL zones under ``root`` and check that their counters can be read.

    Returns:
        ``(zones, None)`` when every zone's ``energy_uj`` was read, else ``([], reason)``.
    """
    base = Path(root) / POWERCAP_DIR
    dirs = []
    for path in sorted(base.glob("intel-rapl:*")) if base.is_dir() else []:
        match = _ZONE_DIR.match(path.name)
        if match and (path / "energy_uj").exists():
            dirs.append((path, match))
    if not dirs:
        return [], f"no intel-rapl:* zone with energy_uj under {base} (no RAPL on this CPU, or powercap not loaded)"
    sockets: dict[str, int] = {}
    zones = []
    try:
        for path, match in dirs:  # parents sort before their sub-zones ("intel-rapl:0" < "intel-rapl:0:0")
            zone_name = read_text(path / "name")
            package = _PACKAGE.match(zone_name)
            top = match.group(1)
            if match.group(2) is None:
                sockets[top] = int(package.group(1)) if package else 0
            socket = sockets.get(top, 0)
            domain, part_of = zone_domain(zone_name, socket)
            range_j = read_int(path / "max_energy_range_uj") / 1e6
            read_int(path / "energy_uj")
            zones.append(RaplZone(path, zone_name, domain, part_of, range_j))
    except ReaderError as exc:
        reason = str(exc)
        if "permission denied" in reason:
            reason += " (energy_uj is root-only since Linux 5.10: run as root or grant read access to it)"
        return [], reason
    return zones, None


class RaplReader(Reader):
    """Reads every RAPL zone's energy counter; the monitor turns counter deltas into energy, across wrap-arounds.

    Args:
        zones: From ``find_rapl_zones``.
        clock: Monotonic clock in seconds, shared with the monitor.
    """

    name = READER_NAME
    provides_power = True

    def __init__(self, zones: list[RaplZone], clock: Callable[[], float] = time.monotonic) -> None:
        if not zones:
            raise ValueError("zones must list at least one RAPL zone; use find_rapl_zones(root)")
        self.zones = list(zones)
        self._clock = clock

    def read_energy(self) -> list[EnergySample]:
        """Read each zone's ``energy_uj`` (microjoules, converted to joules)."""
        samples = []
        for zone in self.zones:
            energy_uj = read_int(zone.path / "energy_uj")
            samples.append(
                EnergySample(
                    t_s=self._clock(),
                    energy_j=energy_uj / 1e6,
                    domain=zone.domain,
                    source=SOURCE,
                    range_j=zone.range_j,
                    part_of=zone.part_of,
                )
            )
        return samples
