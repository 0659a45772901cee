"""An ESTIMATE of CPU power, for machines with no CPU power sensor: utilization x a TDP the user gives.

Off unless the user passes a TDP. Every sample it produces has ``estimated=True`` and the source ``estimated``, so
metrics (``source="estimated"``), reports (``"estimated": true``) and logs all say it is not a measurement. The
model is crude on purpose: a real CPU draws a sizeable share of its TDP when idle and can exceed it in turbo, so
use it to compare runs on one machine, never as a measured energy.

Utilization is the busy share of all CPUs between two reads of ``proc/stat`` (the ``cpu`` line: everything but
``idle`` and ``iowait`` counts as busy), under a configurable root.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgediff.telemetry.base import DOMAIN_CPU_PACKAGE, PowerSample, Reader, ReaderError, read_text

logger = logging.getLogger(__name__)

READER_NAME = "estimated"
SOURCE = "estimated"


def read_cpu_times(path: Path) -> tuple[int, int]:
    """Return ``(busy, total)`` jiffies from the aggregate ``cpu`` line of a ``/proc/stat`` file."""
    for line in read_text(path).splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                values = [int(v) for v in fields[1:]]
            except ValueError as exc:
                raise ReaderError(f"{path}: cannot parse the cpu line {line!r}") from exc
            # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
            values = values[:8]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values)
            return total - idle, total
    raise ReaderError(f"{path} has no aggregate 'cpu' line")


class EstimatedCpuReader(Reader):
    """CPU power estimated as utilization x ``tdp_w``, labelled ``estimated`` everywhere.

    Args:
        tdp_w: The CPU's thermal design power in watts (> 0), given by the user.
        root: Filesystem root that holds ``proc/stat``.
        clock: Monotonic clock in seconds, shared with the monitor.
    """

    name = READER_NAME
    provides_power = True

    def __init__(self, tdp_w: float, root: str | Path = "/", clock: Callable[[], float] = time.monotonic) -> None:
        if not tdp_w > 0:
            raise ValueError(f"tdp_w must be > 0 watts, got {tdp_w!r}")
        self.tdp_w = float(tdp_w)
        self.stat_path = Path(root) / "proc" / "stat"
        self._clock = clock
        self._previous: tuple[int, int] | None = None

    def start(self) -> None:
        """Take the first ``/proc/stat`` reading, the start of the first utilization interval."""
        self._previous = read_cpu_times(self.stat_path)
        logger.warning(
            "estimated: CPU power is ESTIMATED as utilization x TDP %.1f W, not measured; numbers labelled 'estimated'",
            self.tdp_w,
        )

    def read_power(self) -> list[PowerSample]:
        """Return the estimate over the interval since the previous read (nothing on the very first read)."""
        busy, total = read_cpu_times(self.stat_path)
        t_s = self._clock()
        previous, self._previous = self._previous, (busy, total)
        if previous is None or total <= previous[1]:
            return []
        utilization = min(1.0, max(0.0, (busy - previous[0]) / (total - previous[1])))
        return [
            PowerSample(
                t_s=t_s, power_w=utilization * self.tdp_w, domain=DOMAIN_CPU_PACKAGE, source=SOURCE, estimated=True
            )
        ]
