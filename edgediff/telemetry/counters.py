"""Energy from the exporter's counters, read from outside: the one module the load test and the fleet router use.

The exporter publishes each power domain's odometer as ``edgediff_energy_joules_total{domain, source}``, its idle
baseline as ``edgediff_idle_power_watts`` and the seconds it could not integrate as
``edgediff_energy_unmeasured_seconds_total{domain, source, flag}``. Two readings of those (two scrapes, or one
Prometheus ``increase()``) make the same ``DomainEnergy`` a bench window makes (``odometer_window``,
``energy_from_increase``), and ``whole_energy`` applies the bench's rules to them
(``edgediff.bench.report.energy_section``):

* **domains**: the energy is the sum over the *whole* domains; a part of another (a RAPL core or uncore zone inside
  its package, a Jetson rail inside ``soc-total``) is never added to its whole. The counter carries no ``part_of``,
  so ``part_of`` restores it from the readers' own naming (``edgediff.telemetry.rapl.zone_domain``,
  ``edgediff.telemetry.tegrastats.RAIL_DOMAINS``);
* **idle**: net energy is gross minus idle power x the interval, only when every whole domain has an idle baseline;
* **validity**: a whole domain whose counter skipped time in the interval (charger, sampling gap, suspend) makes the
  interval unmeasured: no number rather than one too small.

Prometheus text is parsed with ``prometheus_client``'s parser; HTTP reads never raise (a failed read is a value).
"""

from __future__ import annotations

import dataclasses
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edgediff.constants import (
    METRIC_ENERGY_JOULES_TOTAL,
    METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL,
    METRIC_IDLE_POWER_WATTS,
    METRIC_SENSOR_UP,
)
from edgediff.telemetry.base import (
    DOMAIN_CPU_PACKAGE,
    DOMAIN_SOC_TOTAL,
    FLAG_CHARGING,
    FLAG_COUNTER_RESET,
    FLAG_EXTERNAL_POWER,
    FLAG_GAUGE_RESET,
    FLAG_INVALID,
    FLAG_LATE_START,
    FLAG_SAMPLE_GAP,
    FLAG_STATUS_UNKNOWN,
    FLAG_SUSPEND,
)
from edgediff.telemetry.rapl import SOURCE as SOURCE_RAPL
from edgediff.telemetry.tegrastats import SOURCE as SOURCE_TEGRASTATS
from edgediff.telemetry.window import DomainEnergy, is_estimated_source

DEFAULT_SCRAPE_TIMEOUT_S = 5.0
METHOD_ODOMETER = "odometer"
"""Energy read from outside the monitor: the increase of the exporter's counter (fed by a counter or a trapezoid)."""
FLAG_TEXT = {
    FLAG_CHARGING: "charging or on a charger",
    FLAG_EXTERNAL_POWER: "on external power",
    FLAG_STATUS_UNKNOWN: "battery status unknown",
    FLAG_GAUGE_RESET: "fuel gauge restarting",
    FLAG_SAMPLE_GAP: "no samples (sampler stalled)",
    FLAG_SUSPEND: "device suspended",
    FLAG_INVALID: "invalid samples",
}
"""A few words per unmeasured cause, for reasons built from the exporter's counter (which carries only the code)."""
RAPL_PARTS = ("cpu-core", "cpu-uncore")
"""RAPL zones inside their socket's package (``rapl.zone_domain``): ``cpu-core[-N]`` is part of ``cpu-package[-N]``."""


# --- reading an endpoint ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scrape:
    """One scrape of a ``/metrics`` endpoint.

    Attributes:
        url: The URL scraped.
        t_unix_s: When, in seconds since the epoch (midpoint of the HTTP exchange).
        text: The exposition text, or ``None`` when the scrape failed.
        error: Why it failed, or ``None``.
    """

    url: str
    t_unix_s: float
    text: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scrape:
        """Inverse of ``to_dict``."""
        return cls(str(data["url"]), float(data["t_unix_s"]), data.get("text"), data.get("error"))


def scrape(url: str, timeout_s: float = DEFAULT_SCRAPE_TIMEOUT_S) -> Scrape:
    """GET ``url`` and return the text with the time it was taken; failures are returned, never raised."""
    before_s = time.time()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except (OSError, ValueError, urllib.error.URLError) as exc:
        return Scrape(url, time.time(), None, f"cannot scrape {url}: {getattr(exc, 'reason', None) or exc}")
    return Scrape(url, (before_s + time.time()) / 2.0, text, None)


def samples_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value)]}`` of Prometheus exposition text.

    Raises:
        ValueError: Text that is not Prometheus exposition format.
    """
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def sum_counter(text: str, name: str) -> float | None:
    """Sum every series of the counter ``name`` (its sample name, ``..._total``).

    Returns 0 when the counter is declared without series yet (a labelled counter before its first increment), and
    ``None`` when it is absent.
    """
    declared, total = False, 0.0
    for family in text_string_to_metric_families(text):
        if family.type == "counter" and family.name == name.removesuffix("_total"):
            declared = True
        for sample in family.samples:
            if sample.name == name:
                declared, total = True, total + float(sample.value)
    return total if declared else None


# --- what an exporter scrape says about energy ------------------------------------------------------------------
@dataclass(frozen=True)
class ExporterState:
    """What one exporter scrape says about energy.

    Attributes:
        energy_j: ``edgediff_energy_joules_total`` per ``(domain, source)``.
        idle_power_w: ``edgediff_idle_power_watts`` per ``(domain, source)`` (empty without an idle baseline).
        sensor_up: ``edgediff_sensor_up`` per reader.
        unmeasured_s: ``edgediff_energy_unmeasured_seconds_total`` per ``(domain, source, flag)``.
    """

    energy_j: dict[DomainKey, float] = field(default_factory=dict)
    idle_power_w: dict[DomainKey, float] = field(default_factory=dict)
    sensor_up: dict[str, float] = field(default_factory=dict)
    unmeasured_s: dict[UnmeasuredKey, float] = field(default_factory=dict)


def _key(labels: Mapping[str, str]) -> DomainKey:
    return labels.get("domain", ""), labels.get("source", "")


def parse_exporter(text: str) -> ExporterState:
    """Parse the exporter's exposition text (``prometheus_client``'s parser).

    Raises:
        ValueError: Text that is not Prometheus exposition format.
    """
    state = ExporterState()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == METRIC_ENERGY_JOULES_TOTAL:
                state.energy_j[_key(sample.labels)] = float(sample.value)
            elif sample.name == METRIC_IDLE_POWER_WATTS:
                state.idle_power_w[_key(sample.labels)] = float(sample.value)
            elif sample.name == METRIC_SENSOR_UP:
                state.sensor_up[sample.labels.get("reader", "")] = float(sample.value)
            elif sample.name == METRIC_ENERGY_UNMEASURED_SECONDS_TOTAL:
                state.unmeasured_s[(*_key(sample.labels), sample.labels.get("flag", ""))] = float(sample.value)
    return state


def no_sensor_reason(sensor_up: Mapping[str, float]) -> str:
    """The "unavailable" reason when the exporter exports no energy series."""
    down = sorted(reader for reader, up in sensor_up.items() if up == 0)
    if down:
        return f"no power sensor: edgediff_sensor_up is 0 for {', '.join(down)} (see the exporter's log for why)"
    return f"no power sensor: the exporter exports no {METRIC_ENERGY_JOULES_TOTAL} series"


# --- two readings of the odometers -> the core's DomainEnergy ---------------------------------------------------
DomainKey = tuple[str, str]
"""``(domain, source)``: how an energy series is labelled outside the monitor (the exporter's counter)."""


UnmeasuredKey = tuple[str, str, str]
"""``(domain, source, flag)``: how the exporter labels ``edgediff_energy_unmeasured_seconds_total``."""


def unmeasured_reason(unmeasured_s: Mapping[str, float]) -> str | None:
    """The reason a window is not valid when its odometer skipped ``unmeasured_s`` seconds per cause; else ``None``."""
    parts = [f"{seconds:.1f} s of the window not measured ({flag}: {FLAG_TEXT.get(flag, flag)})"
             for flag, seconds in sorted(unmeasured_s.items()) if seconds > 0]
    return "; ".join(parts) or None


def unmeasured_increase(
    start_s: Mapping[UnmeasuredKey, float], end_s: Mapping[UnmeasuredKey, float]
) -> dict[DomainKey, dict[str, float]]:
    """Per ``(domain, source)``, the unmeasured seconds per cause that grew between two readings of the counter.

    A series absent at the start counts from 0 (the exporter exports every cause from 0, so one that appeared
    mid-window started with the exporter or with its domain).
    """
    out: dict[DomainKey, dict[str, float]] = {}
    for (domain, source, flag), seconds in end_s.items():
        grew = seconds - start_s.get((domain, source, flag), 0.0)
        if grew > 0:
            out.setdefault((domain, source), {})[flag] = grew
    return out


def energy_from_increase(
    increase_j: Mapping[DomainKey, float],
    duration_s: float,
    idle_power_w: Mapping[DomainKey, float],
    unmeasured_s: Mapping[DomainKey, Mapping[str, float]] | None = None,
) -> list[DomainEnergy]:
    """The ``DomainEnergy`` of each series whose odometer increased by ``increase_j`` over the window.

    Args:
        increase_j: Joules per ``(domain, source)`` over the window (e.g. Prometheus' ``increase()``).
        duration_s: The window's length, seconds.
        idle_power_w: Idle baseline per ``(domain, source)``, watts (missing: no net energy for that series).
        unmeasured_s: Per ``(domain, source)``, the seconds per cause the odometer skipped during the window
            (``unmeasured_increase``); a series with any is not valid: its increase misses that stretch.
    """
    unmeasured_s = unmeasured_s or {}
    out = []
    for (domain, source), gross_j in sorted(increase_j.items()):
        skipped = {f: v for f, v in unmeasured_s.get((domain, source), {}).items() if v > 0}
        out.append(DomainEnergy.over(domain=domain, source=source, method=METHOD_ODOMETER, gross_j=gross_j,
                                     duration_s=duration_s, idle_power_w=idle_power_w.get((domain, source)),
                                     estimated=is_estimated_source(source), reason=unmeasured_reason(skipped),
                                     flags=sorted(skipped)))
    return out


def odometer_window(
    start_j: Mapping[DomainKey, float],
    end_j: Mapping[DomainKey, float],
    duration_s: float,
    idle_power_w: Mapping[DomainKey, float],
    start_unmeasured_s: Mapping[UnmeasuredKey, float] | None = None,
    end_unmeasured_s: Mapping[UnmeasuredKey, float] | None = None,
) -> list[DomainEnergy]:
    """The window between two readings of the odometers (two scrapes of the exporter's counter).

    A series that appeared after the first reading, whose counter went backwards (the exporter restarted), or whose
    unmeasured seconds grew (a charger, a sampling gap, a suspend during the window) is not valid for the window
    and says why.

    Args:
        start_j: Odometer per ``(domain, source)`` at the window's start, joules.
        end_j: The same at its end.
        duration_s: The window's length, seconds.
        idle_power_w: Idle baseline per ``(domain, source)``, watts.
        start_unmeasured_s: ``edgediff_energy_unmeasured_seconds_total`` per ``(domain, source, flag)`` at the start.
        end_unmeasured_s: The same at the end.
    """
    increase_j: dict[DomainKey, float] = {}
    invalid: list[DomainEnergy] = []
    for key, value_j in sorted(end_j.items()):
        reason, flag = None, None
        if key not in start_j:
            reason, flag = "appeared during the window", FLAG_LATE_START
        elif value_j < start_j[key]:
            reason, flag = f"went backwards ({value_j - start_j[key]:.3f} J; restarted?)", FLAG_COUNTER_RESET
        if reason is None:
            increase_j[key] = value_j - start_j[key]
            continue
        invalid.append(DomainEnergy.over(domain=key[0], source=key[1], method=METHOD_ODOMETER, gross_j=None,
                                         duration_s=duration_s, idle_power_w=idle_power_w.get(key),
                                         estimated=is_estimated_source(key[1]), reason=reason, flags=[flag]))
    skipped = unmeasured_increase(start_unmeasured_s or {}, end_unmeasured_s or {})
    measured = energy_from_increase(increase_j, duration_s, idle_power_w, skipped)
    return sorted(measured + invalid, key=lambda e: (e.domain, e.source))


# --- the bench's rules ------------------------------------------------------------------------------------------
def part_of(domain: str, source: str, present: Iterable[DomainKey]) -> str | None:
    """The whole domain that ``(domain, source)`` is a part of, among the ``present`` series; ``None`` for a whole.

    The readers' own naming: a RAPL ``cpu-core[-N]``/``cpu-uncore[-N]`` zone is inside ``cpu-package[-N]``; a
    tegrastats rail is inside ``soc-total`` when that rail is read too. Other domains are wholes.
    """
    keys = set(present)
    if source == SOURCE_RAPL:
        for part in RAPL_PARTS:
            if domain == part or domain.startswith(part + "-"):
                whole = DOMAIN_CPU_PACKAGE + domain[len(part):]
                return whole if (whole, source) in keys else None
    if source == SOURCE_TEGRASTATS and domain != DOMAIN_SOC_TOTAL and (DOMAIN_SOC_TOTAL, source) in keys:
        return DOMAIN_SOC_TOTAL
    return None


def with_parts(domains: list[DomainEnergy]) -> list[DomainEnergy]:
    """``domains`` with ``part_of`` restored (``part_of``) where the counter's labels lost it."""
    keys = [(d.domain, d.source) for d in domains]
    return [d if d.part_of is not None else dataclasses.replace(d, part_of=part_of(d.domain, d.source, keys))
            for d in domains]


def counter_window(start: ExporterState, end: ExporterState, duration_s: float) -> list[DomainEnergy]:
    """Every domain's energy between two exporter scrapes ``duration_s`` apart (valid or not, parts marked).

    The core's ``odometer_window``: gross from the counter's increase, net with the idle baseline, a domain invalid
    when its counter went backwards, appeared mid-window or skipped time.
    """
    return with_parts(odometer_window(start.energy_j, end.energy_j, duration_s, end.idle_power_w,
                                      start.unmeasured_s, end.unmeasured_s))


@dataclass(frozen=True)
class WholeEnergy:
    """The bench's headline over an interval: the sum of the whole domains.

    Attributes:
        gross_j: Joules of the whole domains.
        net_j: ``gross_j`` minus idle power x interval; ``None`` unless every whole domain has an idle baseline.
        domains: The whole domains summed.
    """

    gross_j: float
    net_j: float | None
    domains: tuple[str, ...]

    def per_image_j(self, images: float) -> float | None:
        """Net joules per image when known, else gross; ``None`` without images."""
        if not images > 0:
            return None
        return (self.net_j if self.net_j is not None else self.gross_j) / images


def whole_energy(domains: list[DomainEnergy]) -> WholeEnergy | None:
    """Sum the whole domains, as the bench's headline does; ``None`` when none is valid or any whole is invalid.

    A whole domain that is not valid over the interval (it skipped time, went backwards) makes the sum a partial
    one, which would read as too little energy: no number then.
    """
    wholes = [d for d in domains if d.part_of is None]
    if not wholes or any(not d.valid or d.gross_j is None for d in wholes):
        return None
    gross_j = sum(float(d.gross_j or 0.0) for d in wholes)
    nets = [d.net_j for d in wholes]
    net_j = sum(float(n) for n in nets if n is not None) if all(n is not None for n in nets) else None
    return WholeEnergy(gross_j, net_j, tuple(sorted(d.domain for d in wholes)))
