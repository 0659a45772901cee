"""What the bench needs of a target that serves the variants elsewhere (``edgediff bench --through gateway``).

The core defines the protocol and never imports the transport: ``cli/bench.py`` passes an implementation
(``services.gateway.bench_target.GatewayTarget``) to ``run_bench``.
"""

from __future__ import annotations

from typing import Protocol

from edgediff.bench.runner import RunSpec, VariantRun
from edgediff.telemetry.window import EnergyMonitor


class RemoteTarget(Protocol):
    """A serving endpoint the bench measures through."""

    target: str

    def variants(self, model: str) -> dict[str, tuple[bool, str]]:
        """The served variants as ``name -> (available, reason)``, after checking the endpoint serves ``model``."""
        ...

    def measure(self, spec: RunSpec, monitor: EnergyMonitor | None = None) -> VariantRun:
        """Warm-ups then timed generations of ``spec.variant``, inside one energy window of ``monitor``."""
        ...
