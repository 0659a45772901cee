"""Fixture readers for tests: power given by the test, labelled ``source="fixture"``, never measured.

Discovery never returns these unless asked explicitly (``discover(fixture_power_w=W)``, the exporter's
``--fixture-power-watts W``). The load tests use them to check that energy per image = W x wall time / images.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from edgediff.telemetry.base import DOMAIN_FIXTURE, SOURCE_FIXTURE, PowerSample, Reader

READER_NAME = "fixture"


class FunctionPowerReader(Reader):
    """Power from a function of time, for integration tests with a known exact integral.

    Args:
        power_fn: Watts at monotonic time ``t_s``.
        domain: The domain to report (``fixture`` by default).
        source: The source label; keep ``fixture`` so no one mistakes it for a measurement.
        clock: Monotonic clock in seconds, shared with the monitor.
    """

    name = READER_NAME
    provides_power = True

    def __init__(
        self,
        power_fn: Callable[[float], float],
        domain: str = DOMAIN_FIXTURE,
        source: str = SOURCE_FIXTURE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.power_fn = power_fn
        self.domain = domain
        self.source = source
        self._clock = clock

    def read_power(self) -> list[PowerSample]:
        """Return ``power_fn(now)``."""
        t_s = self._clock()
        return [PowerSample(t_s=t_s, power_w=float(self.power_fn(t_s)), domain=self.domain, source=self.source)]


class ConstantPowerReader(FunctionPowerReader):
    """A constant power, e.g. ``ConstantPowerReader(50.0)``: 50 W in the domain ``fixture``, forever.

    Args:
        power_w: Watts, finite and >= 0.
        domain: The domain to report.
        source: The source label.
        clock: Monotonic clock in seconds, shared with the monitor.
    """

    def __init__(
        self,
        power_w: float,
        domain: str = DOMAIN_FIXTURE,
        source: str = SOURCE_FIXTURE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(power_w) and power_w >= 0):
            raise ValueError(f"power_w must be a finite number >= 0 watts, got {power_w!r}")
        self.power_w = float(power_w)
        super().__init__(lambda _t_s: self.power_w, domain=domain, source=source, clock=clock)
