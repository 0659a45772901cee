"""Health checks that can be written into the state file and re-run by ``edgediff status`` in another process.

The probes themselves are ``services.healthcheck``'s, the ones the containers' healthchecks run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from services.healthcheck import Unhealthy, check_grpc, check_http


@dataclass(frozen=True)
class HealthCheck:
    """How to ask a service whether it is healthy.

    Attributes:
        kind: ``http`` (a GET that must answer 2xx) or ``grpc`` (grpc.health.v1 ``Check`` must say SERVING).
        target: The URL (http) or ``host:port`` (grpc).
    """

    kind: str
    target: str

    def check(self, timeout_s: float = 2.0) -> bool:
        """True when the service answers healthy within ``timeout_s``."""
        probes = {"http": check_http, "grpc": check_grpc}
        if self.kind not in probes:
            raise ValueError(f"unknown health check kind {self.kind!r}")
        try:
            probes[self.kind](self.target, timeout_s=timeout_s)
        except Unhealthy:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)
