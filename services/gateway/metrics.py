"""The gateway's Prometheus metrics, on their own registry and port.

Requests by method and status code, request latency, per-stage latency, images, in-flight generations, queue
depth and capacity (the in-flight limit: in-flight + queued over it is the saturation the autoscaler follows).
Label values are bounded: methods of this server (others are ``other``), gRPC code names, registry variant names
(only validated ones) and the stage names below; never request ids or seeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgediff.constants import (
    METRIC_GATEWAY_BACKEND_WAIT_SECONDS,
    METRIC_GATEWAY_CAPACITY,
    METRIC_GATEWAY_IMAGES_TOTAL,
    METRIC_GATEWAY_IN_FLIGHT,
    METRIC_GATEWAY_QUEUE_DEPTH,
    METRIC_GATEWAY_REQUEST_SECONDS,
    METRIC_GATEWAY_REQUESTS_TOTAL,
    METRIC_GATEWAY_STAGE_SECONDS,
)

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
STAGES = ("queue", "denoise", "decode", "total")
KNOWN_METHODS = ("Generate", "ListVariants", "Check", "ServerReflectionInfo", "Watch")


def method_label(full_method: str) -> str:
    """``/edgediff.v1.Generator/Generate`` -> ``Generate``; unknown methods -> ``other`` (bounded labels)."""
    name = full_method.rsplit("/", 1)[-1]
    return name if name in KNOWN_METHODS else "other"


class GatewayMetrics:
    """The gateway's metrics.

    Args:
        registry: Where to register them; a fresh registry by default (several servers in one test process).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(METRIC_GATEWAY_REQUESTS_TOTAL, "gRPC requests answered, by method and status code",
                                ["method", "code"], registry=self.registry)
        self.request_seconds = Histogram(METRIC_GATEWAY_REQUEST_SECONDS,
                                         "Time from receiving a unary gRPC request to its answer, seconds",
                                         ["method"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.stage_seconds = Histogram(METRIC_GATEWAY_STAGE_SECONDS,
                                       "Per-stage time of successful Generate requests (queue, denoise, decode, "
                                       "total), seconds", ["stage", "variant"], buckets=LATENCY_BUCKETS_S,
                                       registry=self.registry)
        self.images = Counter(METRIC_GATEWAY_IMAGES_TOTAL, "Images returned by Generate", ["variant"],
                              registry=self.registry)
        self.backend_wait_seconds = Histogram(
            METRIC_GATEWAY_BACKEND_WAIT_SECONDS,
            "Time Generate requests that waited for the backend spent queued while it was not serving (Triton "
            "restarting), by final gRPC code, seconds", ["code"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.in_flight = Gauge(METRIC_GATEWAY_IN_FLIGHT, "Generate requests holding a slot (generating now)",
                               registry=self.registry)
        self.queue_depth = Gauge(METRIC_GATEWAY_QUEUE_DEPTH, "Generate requests waiting for a slot",
                                 registry=self.registry)
        self.capacity = Gauge(METRIC_GATEWAY_CAPACITY, "Generate requests allowed to hold a slot at once (the "
                              "in-flight limit: --max-concurrency, by default the backend's capacity)",
                              registry=self.registry)

    def track_admission(self, running: Callable[[], float], waiting: Callable[[], float],
                        capacity: Callable[[], float] | None = None) -> None:
        """Read the in-flight, queue and capacity gauges from the admission controller at scrape time."""
        self.in_flight.set_function(running)
        self.queue_depth.set_function(waiting)
        if capacity is not None:
            self.capacity.set_function(capacity)

    def observe_generation(self, variant: str, images: int, stages_s: dict[str, float]) -> None:
        """Record one successful generation: images and each stage's seconds (keys from ``STAGES``)."""
        self.images.labels(variant=variant).inc(images)
        for stage, seconds in stages_s.items():
            self.stage_seconds.labels(stage=stage, variant=variant).observe(seconds)

    def observe_backend_wait(self, seconds: float, code: str) -> None:
        """Record one request that waited ``seconds`` for the backend and then ended with ``code`` (``OK``...)."""
        self.backend_wait_seconds.labels(code=code).observe(seconds)

    def start_http(self, port: int, host: str) -> tuple[Any, Any]:
        """Serve ``/metrics`` on ``host:port`` in a daemon thread; returns (server, thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=host, registry=self.registry)


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every unary call by method and final status code, and times it (outermost, so refusals count too)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        """Wrap unary-unary handlers; streams pass through uncounted."""
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = method_label(handler_call_details.method)
        inner = handler.unary_unary
        metrics = self.metrics

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            t0 = time.perf_counter()
            failed = True
            try:
                response = inner(request, context)
                failed = False
                return response
            finally:
                code = context.code() or (grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK)
                metrics.requests.labels(method=method, code=code.name).inc()
                metrics.request_seconds.labels(method=method).observe(time.perf_counter() - t0)

        return grpc.unary_unary_rpc_method_handler(observed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
