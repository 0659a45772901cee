"""Sensors (NVML, tegrastats, Android battery, RAPL, memory), energy windows and the idle baseline.

One reader per sensor family behind one interface (``base.Reader``), a factory that probes cheaply
(``discover``), and one window API (``EnergyMonitor.begin_window``/``end_window``) used by bench, the exporter and
the load-test reports. Knows nothing of gRPC, Triton or Prometheus.
"""

from __future__ import annotations

from edgediff.telemetry.base import (
    DOMAIN_BATTERY,
    DOMAIN_CPU_PACKAGE,
    DOMAIN_FIXTURE,
    DOMAIN_GPU_BOARD,
    DOMAIN_SOC_TOTAL,
    SOURCE_FIXTURE,
    EnergySample,
    MemorySample,
    PowerSample,
    Reader,
    ReaderError,
    Unavailable,
)
from edgediff.telemetry.discovery import Discovery, discover
from edgediff.telemetry.fixture import ConstantPowerReader, FunctionPowerReader
from edgediff.telemetry.integrate import counter_delta_j, trapezoid_energy_j
from edgediff.telemetry.window import DomainEnergy, DomainReading, EnergyMonitor, Measurement, ReaderStatus

__all__ = [
    "DOMAIN_BATTERY",
    "DOMAIN_CPU_PACKAGE",
    "DOMAIN_FIXTURE",
    "DOMAIN_GPU_BOARD",
    "DOMAIN_SOC_TOTAL",
    "SOURCE_FIXTURE",
    "ConstantPowerReader",
    "Discovery",
    "DomainEnergy",
    "DomainReading",
    "EnergyMonitor",
    "EnergySample",
    "FunctionPowerReader",
    "Measurement",
    "MemorySample",
    "PowerSample",
    "Reader",
    "ReaderError",
    "ReaderStatus",
    "Unavailable",
    "counter_delta_j",
    "discover",
    "trapezoid_energy_j",
]
