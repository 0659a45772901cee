"""The Prometheus collector of the telemetry exporter: power, energy, idle power, memory, sensor health, build.

``collect()`` runs on every scrape. Memory is read fresh from the readers then; power and energy come from the
``EnergyMonitor``'s sampler, whose odometers only move forward (hardware counters across wrap-arounds, trapezoidal
integration otherwise), so ``edgediff_energy_joules_total`` is a true counter: ``rate()`` of it is power and
``increase()`` of it is energy. One failing read costs its own series for one scrape, never the whole scrape.

Series (base units, bounded labels):

* ``edgediff_power_watts{domain,source}``: latest valid power (absent while a domain's samples are invalid);
* ``edgediff_energy_joules_total{domain,source}``: joules since the exporter started;
* ``edgediff_energy_unmeasured_seconds_total{domain,source,flag}``: seconds the energy counter did not integrate,
  by cause (``charging``, ``external-power``, ``status-unknown``, ``gauge-reset``, ``sample-gap``, ``suspend``,
  ``invalid``), for the power-sampled domains (a hardware counter keeps counting), every cause exported from 0.
  A window over which it grew misses that stretch: the load test then reports the domain's energy as not valid,
  with the cause, instead of a number too small;
* ``edgediff_idle_power_watts{domain,source}``: idle baseline, when measured at start;
* ``edgediff_memory_used_bytes{kind}``;
* ``edgediff_sensor_up{reader}``: 1 when the reader's last poll worked and its samples are valid, 0 for readers
  that are down, invalid (a phone charging) or unavailable; the reason is in the exporter's log;
* ``edgediff_build_info{version,python}``: always 1.

Estimated numbers carry ``source="estimated"``; fixture numbers carry ``source="fixture"``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import edgediff
from edgediff.constants import (
    METRIC_BUILD_INFO,
    METRIC_ENERGY_JOULES_TOTAL,
    METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL,
    METRIC_IDLE_POWER_WATTS,
    METRIC_MEMORY_USED_BYTES,
    METRIC_POWER_WATTS,
    METRIC_SENSOR_UP,
)
from edgediff.telemetry.base import UNMEASURED_FLAGS, Reader, ReaderError, Unavailable
from edgediff.telemetry.window import METHOD_TRAPEZOID, EnergyMonitor

logger = logging.getLogger(__name__)


def edgediff_version() -> str:
    """Return the installed edgediff version, or the source tree's ``__version__``."""
    try:
        return importlib.metadata.version("edgediff")
    except importlib.metadata.PackageNotFoundError:

        return str(getattr(edgediff, "__version__", "unknown"))


class TelemetryCollector(Collector):
    """Reads the monitor's state and fresh memory on each scrape.

    Args:
        monitor: A started ``EnergyMonitor``.
        unavailable: Sensors that are not usable here (shown as ``sensor_up 0``); defaults to the monitor's.
        memory_readers: Readers asked for memory on each scrape; defaults to the monitor's readers.
    """

    def __init__(
        self,
        monitor: EnergyMonitor,
        unavailable: Sequence[Unavailable] | None = None,
        memory_readers: Iterable[Reader] | None = None,
    ) -> None:
        self.monitor = monitor
        self._unavailable = unavailable
        self._memory_readers = list(memory_readers) if memory_readers is not None else None
        self._build_labels = (edgediff_version(), platform.python_version())
        self._failing: dict[str, str] = {}
        self._failing_lock = threading.Lock()  # scrapes may run concurrently (threaded HTTP server)

    def _read_memory(self) -> dict[str, int]:
        readers = self._memory_readers if self._memory_readers is not None else self.monitor.readers
        used: dict[str, int] = {}
        for reader in readers:
            try:
                samples = reader.read_memory()
            except (ReaderError, OSError) as exc:
                with self._failing_lock:
                    if self._failing.get(reader.name) != str(exc):
                        logger.warning("%s: memory read failed on scrape: %s", reader.name, exc)
                    self._failing[reader.name] = str(exc)
                continue
            with self._failing_lock:
                self._failing.pop(reader.name, None)
            for sample in samples:
                used.setdefault(sample.kind, sample.used_bytes)
        return used

    def collect(self) -> Iterator[Metric]:
        """Yield every family, built fresh for this scrape."""
        power = GaugeMetricFamily(
            METRIC_POWER_WATTS, "Latest valid power per domain, watts.", labels=["domain", "source"]
        )
        energy = CounterMetricFamily(
            METRIC_ENERGY_JOULES_TOTAL,
            "Energy per domain since the exporter started, joules (hardware counter or trapezoidal integration).",
            labels=["domain", "source"],
        )
        unmeasured = CounterMetricFamily(
            METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL,
            "Seconds the energy counter did not integrate since the exporter started, by cause (flag).",
            labels=["domain", "source", "flag"],
        )
        idle = GaugeMetricFamily(
            METRIC_IDLE_POWER_WATTS, "Idle baseline power measured at start, watts.", labels=["domain", "source"]
        )
        memory = GaugeMetricFamily(METRIC_MEMORY_USED_BYTES, "Memory in use by kind, bytes.", labels=["kind"])
        up = GaugeMetricFamily(
            METRIC_SENSOR_UP, "1 when the reader works and its samples are valid, else 0.", labels=["reader"]
        )
        build = GaugeMetricFamily(METRIC_BUILD_INFO, "edgediff build; always 1.", labels=["version", "python"])

        readings = self.monitor.readings()
        idle_power_w = self.monitor.idle_power_w
        invalid_readers = set()
        for reading in readings:
            labels = [reading.domain, reading.source]
            energy.add_metric(labels, reading.energy_j)
            if reading.method == METHOD_TRAPEZOID or reading.unmeasured_s:  # a hardware counter misses nothing
                for flag in (*UNMEASURED_FLAGS, *sorted(set(reading.unmeasured_s) - set(UNMEASURED_FLAGS))):
                    unmeasured.add_metric([*labels, flag], reading.unmeasured_s.get(flag, 0.0))
            if reading.power_w is not None:
                power.add_metric(labels, reading.power_w)
            if reading.domain in idle_power_w:
                idle.add_metric(labels, idle_power_w[reading.domain])
            if not reading.valid:
                invalid_readers.add(reading.reader)

        for kind, used_bytes in sorted(self._read_memory().items()):
            memory.add_metric([kind], used_bytes)

        for name, status in sorted(self.monitor.reader_status().items()):
            up.add_metric([name], 1.0 if status.up and name not in invalid_readers else 0.0)
        unavailable = self._unavailable if self._unavailable is not None else self.monitor.unavailable
        for item in unavailable:
            up.add_metric([item.reader], 0.0)

        build.add_metric(list(self._build_labels), 1.0)
        yield from (power, energy, unmeasured, idle, memory, up, build)
