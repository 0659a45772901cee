"""The standard gRPC health service with bounded ``Watch``: open without a token, so it must not be a lever.

grpc-health's ``HealthServicer`` serves ``Watch`` without holding a thread (its ``experimental_non_blocking`` marker),
but keeps every stream open for as long as the client wants and every service name ever watched in memory. This
subclass caps both: at most ``max_streams`` Watch streams at once and at most ``max_services`` distinct service names
watched at once (names are forgotten when their last stream closes); a Watch beyond either cap ends at once with
RESOURCE_EXHAUSTED. ``Check`` is unchanged (it stores nothing and returns at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health

DEFAULT_MAX_WATCH_STREAMS = 64
"""Watch streams at once; each costs a little memory and no thread (Kubernetes and compose probes use Check)."""
DEFAULT_MAX_WATCHED_SERVICES = 8
"""Distinct service names watched at once: the gateway reports two (``""`` and ``edgediff.v1.Generator``)."""


class BoundedHealthServicer(health.HealthServicer):
    """``grpc.health.v1.Health`` with a cap on concurrent Watch streams and on the service names they watch.

    Args:
        max_streams: Watch streams open at once; more answer RESOURCE_EXHAUSTED.
        max_services: Distinct service names watched at once; a Watch of a new name beyond it answers
            RESOURCE_EXHAUSTED.
    """

    def __init__(self, max_streams: int = DEFAULT_MAX_WATCH_STREAMS,
                 max_services: int = DEFAULT_MAX_WATCHED_SERVICES) -> None:
        super().__init__(experimental_non_blocking=True)
        self.max_streams = max_streams
        self.max_services = max_services
        self._streams = 0

    def open_streams(self) -> int:
        """Watch streams open now."""
        with self._lock:
            return self._streams

    def watched_services(self) -> int:
        """Distinct service names some open stream watches."""
        with self._lock:
            return len(self._send_response_callbacks)

    def Watch(self, request: Any, context: grpc.ServicerContext,
              send_response_callback: Callable[[Any], None] | None = None) -> Any:
        """Register a non-blocking watcher, unless a cap is reached (RESOURCE_EXHAUSTED)."""
        service = request.service
        with self._lock:  # grpc-health's RLock: the base class takes it again inside
            if self._streams >= self.max_streams:
                refusal = f"too many health Watch streams open (limit {self.max_streams}); use Check"
            elif service not in self._send_response_callbacks and \
                    len(self._send_response_callbacks) >= self.max_services:
                refusal = f"too many service names watched at once (limit {self.max_services})"
            else:
                refusal = ""
                self._streams += 1
                response = super().Watch(request, context, send_response_callback)
                closed = self._closed(service)
                if not context.add_callback(closed):  # after the base class's, so it runs after it, too
                    closed()  # the call had already ended
        if refusal:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        return response

    def _closed(self, service: str) -> Callable[[], None]:
        def callback() -> None:
            with self._lock:
                self._streams -= 1
                if not self._send_response_callbacks.get(service, True):
                    del self._send_response_callbacks[service]  # its last stream closed: forget the name

        return callback
