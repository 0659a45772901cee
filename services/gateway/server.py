"""Build and run the gateway: the Generator servicer, gRPC health checking, server reflection, auth, metrics.

``GatewayServer`` is usable in-process (tests, ``edgediff up``); ``serve(config)`` runs one until SIGTERM or SIGINT
and shuts down gracefully: stop accepting, let in-flight requests finish (bounded by ``shutdown_grace_s``), exit 0.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgediff.constants import (
    DEFAULT_HOST,
    GATEWAY_GRPC_PORT,
    GATEWAY_METRICS_PORT,
    SERVE_MAX_BATCH,
    TRITON_GRPC_PORT,
)
from edgediff.errors import InvalidArgumentError
from services.gateway.admission import Admission
from services.gateway.auth import BearerTokenInterceptor
from services.gateway.backends.base import Backend
from services.gateway.health import DEFAULT_MAX_WATCH_STREAMS, DEFAULT_MAX_WATCHED_SERVICES, BoundedHealthServicer
from services.gateway.malformed import MalformedRequestInterceptor
from services.gateway.metrics import GatewayMetrics, MetricsInterceptor
from services.gateway.servicer import GeneratorServicer
from services.gateway.validation import DEFAULT_MAX_STEPS, check_max_batch, check_max_steps
from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc

if TYPE_CHECKING:
    from services.gateway.backends.fleet import UpstreamSpec

logger = logging.getLogger(__name__)

GENERATOR_SERVICE = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name
"""``edgediff.v1.Generator``: also the service name whose health the gateway reports."""
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest gRPC message either way (a batch of 256x256 PNGs stays far below)."""
BACKENDS = ("triton", "local", "fleet")
DEFAULT_MAX_BACKEND_WAIT_S = 120.0
"""Default ``--max-backend-wait``: longer than a supervised Triton restart of a small repository (under a minute)."""
MAX_BACKEND_WAIT_LIMIT_S = 3600.0
SPARE_WORKERS = 8
"""Server threads beyond concurrency + queue, so refusals, health checks and ListVariants answer at once."""
DEFAULT_DEADLINE_S = 600.0
"""Default ``--default-deadline``: a Generate whose client set no deadline is cancelled after this many seconds
(a celebahq-256 image at 20 steps takes seconds on a GPU, about a minute on a phone)."""
MAX_DEADLINE_S = 24 * 3600.0


@dataclass
class GatewayConfig:
    """Everything ``edgediff serve`` can set.

    Attributes:
        backend: ``triton`` or ``local``.
        model: Preset served by the local backend (Triton reports its own).
        weights: Weights folder of the local backend.
        weights_seed: Seed of synthetic weights (local backend).
        variant: Default variant (local: torch-fp32; triton: the first ready ``ldm_*`` in registry order).
        host: Address to bind (loopback unless told otherwise).
        port: gRPC port (0: any free port; see ``GatewayServer.port``).
        metrics_port: Prometheus port; 0 disables the metrics endpoint.
        triton_url: Triton's gRPC ``host:port``.
        max_concurrency: Generations at once; None: the backend's capacity (``Backend.capacity``).
        max_queue: Requests that may wait for a slot; beyond it RESOURCE_EXHAUSTED.
        max_batch: Largest ``batch_size``.
        tls_cert: PEM certificate chain; with ``tls_key`` the server speaks TLS only.
        tls_key: PEM private key.
        token: Bearer token required from clients (None: no auth). Never logged.
        threads: Intra-op threads of the local backend.
        preload: Local backend: build the default variant before serving.
        max_memory: Local backend: memory budget in bytes; with no ``variant`` it (else the total RAM) chooses the
            default (the low-memory one when short).
        shutdown_grace_s: Seconds in-flight requests get to finish on shutdown.
        health_interval_s: Triton backend: seconds between health probes.
        max_backend_wait_s: Seconds an accepted, not yet started request waits for the backend to serve again
            (Triton restarting) before UNAVAILABLE; each request's own deadline still applies; 0 fails at once.
        upstreams: Fleet backend: the upstream gateways (``--upstream`` values, ``backends.fleet.parse_upstream``).
        policy: Fleet backend: ``fastest``, ``lowest-energy`` or ``edge-first``.
        fleet_refresh_s: Fleet backend: seconds between health checks and metric scrapes of the upstreams.
        latency_target_s: Fleet backend: edge-first's latency target for requests without a deadline.
        upstream_token: Fleet backend: bearer token the upstreams require. Never logged.
        upstream_tls_ca: Fleet backend: CA certificate of upstreams that speak TLS (with it the router speaks TLS).
        upstream_tls_cert: Fleet backend: client certificate chain for upstreams that require one.
        upstream_tls_key: Fleet backend: private key of ``upstream_tls_cert``.
        upstream_tls_server_name: Fleet backend: name checked against the upstreams' certificates.
        upstream_specs: Fleet backend: ``upstreams`` as ``check()`` parsed them (the backend is built from these).
        scheduler: Sampler of requests that name none (``ddim``, ``dpmpp``, ``unipc``; a tune profile's).
        steps: Steps of requests that send 0.
        max_steps: Largest ``steps`` a request may ask for (``--max-steps``; at most ``edgediff.request.MAX_STEPS``).
        default_deadline_s: Seconds a Generate whose client set no deadline may take before it is cancelled
            (DEADLINE_EXCEEDED).
        allowed_variants: Local backend: the variants requests may name, so built and kept in memory (None: the
            default variant only; ``["all"]``: every installed one).
        max_pipelines: Local backend: built pipelines kept in memory (least recently used ones are dropped).
        max_watch_streams: Health Watch streams open at once (open without a token, so bounded).
        max_watched_services: Distinct service names health Watch streams may watch at once.
    """

    backend: str
    model: str = "celebahq-256"
    weights: str | None = None
    weights_seed: int = 0
    variant: str | None = None
    host: str = DEFAULT_HOST
    port: int = GATEWAY_GRPC_PORT
    metrics_port: int = GATEWAY_METRICS_PORT
    triton_url: str = f"{DEFAULT_HOST}:{TRITON_GRPC_PORT}"
    max_concurrency: int | None = None
    max_queue: int = 8
    max_batch: int = SERVE_MAX_BATCH
    tls_cert: str | None = None
    tls_key: str | None = None
    token: str | None = field(default=None, repr=False)
    threads: int | None = None
    preload: bool = True
    max_memory: int | None = None
    shutdown_grace_s: float = 30.0
    health_interval_s: float = 1.0
    max_backend_wait_s: float = DEFAULT_MAX_BACKEND_WAIT_S
    upstreams: list[str] = field(default_factory=list)
    policy: str = "edge-first"
    fleet_refresh_s: float = 2.0
    latency_target_s: float = 30.0
    upstream_token: str | None = field(default=None, repr=False)
    upstream_tls_ca: str | None = None
    upstream_tls_cert: str | None = None
    upstream_tls_key: str | None = None
    upstream_tls_server_name: str | None = None
    scheduler: str = "ddim"
    steps: int = 20
    max_steps: int = DEFAULT_MAX_STEPS
    default_deadline_s: float = DEFAULT_DEADLINE_S
    allowed_variants: list[str] | None = None
    max_pipelines: int = 2  # backends.local.DEFAULT_MAX_PIPELINES (not imported here: it imports torch)
    max_watch_streams: int = DEFAULT_MAX_WATCH_STREAMS
    max_watched_services: int = DEFAULT_MAX_WATCHED_SERVICES
    upstream_specs: list[UpstreamSpec] = field(default_factory=list, init=False, repr=False, compare=False)

    def check(self) -> None:
        """Raise ``InvalidArgumentError`` naming the flag of the first bad setting."""
        backend_module(self.backend)
        check_max_batch(self.max_batch)
        Admission(self.max_concurrency, self.max_queue)
        for name, port in (("port", self.port), ("metrics-port", self.metrics_port)):
            if not 0 <= port <= 65535:
                raise InvalidArgumentError(f"--{name} must be in 0..65535, got {port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgumentError("--tls-cert and --tls-key must be given together")
        if (self.upstream_tls_cert is None) != (self.upstream_tls_key is None):
            raise InvalidArgumentError("--upstream-tls-cert and --upstream-tls-key must be given together")
        if self.upstream_tls_ca is None and (self.upstream_tls_cert or self.upstream_tls_server_name):
            raise InvalidArgumentError("--upstream-tls-cert and --upstream-tls-server-name need --upstream-tls-ca")
        for flag, path in (("upstream-tls-ca", self.upstream_tls_ca), ("upstream-tls-cert", self.upstream_tls_cert),
                           ("upstream-tls-key", self.upstream_tls_key)):
            if path is not None:
                _read_pem(flag, path)
        if self.shutdown_grace_s < 0:
            raise InvalidArgumentError(f"--shutdown-grace must be >= 0, got {self.shutdown_grace_s}")
        if self.health_interval_s <= 0:
            raise InvalidArgumentError(f"--health-interval must be > 0, got {self.health_interval_s}")
        if self.backend == "fleet":
            from services.gateway.backends.fleet import check_settings

            self.upstream_specs = check_settings(self.upstreams, self.policy, self.fleet_refresh_s,
                                                 self.latency_target_s)
        elif self.upstreams:
            raise InvalidArgumentError(f"--upstream is for --backend fleet, not {self.backend}")
        check_max_steps(self.max_steps)
        if not 1 <= self.steps <= self.max_steps:
            raise InvalidArgumentError(f"--steps must be in 1..{self.max_steps} (--max-steps), got {self.steps}")
        if not 0 < self.default_deadline_s <= MAX_DEADLINE_S:
            raise InvalidArgumentError(f"--default-deadline must be in (0, {MAX_DEADLINE_S:g}] seconds, "
                                       f"got {self.default_deadline_s}")
        if self.max_pipelines < 1:
            raise InvalidArgumentError(f"--max-pipelines must be >= 1, got {self.max_pipelines}")
        if self.allowed_variants is not None and self.backend != "local":
            raise InvalidArgumentError(f"--allow-variants is for --backend local, not {self.backend}")
        if self.max_watch_streams < 1 or self.max_watched_services < 2:
            raise InvalidArgumentError("the health Watch limits must allow at least 1 stream and 2 service names")
        if not 0 <= self.max_backend_wait_s <= MAX_BACKEND_WAIT_LIMIT_S:
            raise InvalidArgumentError(f"--max-backend-wait must be in 0..{MAX_BACKEND_WAIT_LIMIT_S:g} seconds, "
                                       f"got {self.max_backend_wait_s}")


def backend_module(name: str) -> str:
    """The module implementing backend ``name`` (imported only when that backend is used)."""
    if name not in BACKENDS:
        raise InvalidArgumentError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return f"services.gateway.backends.{name}"


def make_backend(config: GatewayConfig) -> Backend:
    """The backend ``config`` names; ``config`` has been checked (``GatewayConfig.check``, which parses it).

    The backend's module is imported only now: ``local`` never imports tritonclient.
    """
    backend = _make_backend(config)
    backend.default_sampler = (config.scheduler, config.steps)
    return backend


def _make_backend(config: GatewayConfig) -> Backend:
    module = importlib.import_module(backend_module(config.backend))
    if config.backend == "fleet":
        return module.FleetBackend(config.upstream_specs, policy=config.policy,
                                   refresh_s=config.fleet_refresh_s, latency_target_s=config.latency_target_s,
                                   token=config.upstream_token, tls_ca=config.upstream_tls_ca,
                                   tls_cert=config.upstream_tls_cert, tls_key=config.upstream_tls_key,
                                   tls_server_name=config.upstream_tls_server_name,
                                   default_deadline_s=config.default_deadline_s)
    if config.backend == "local":
        return module.LocalBackend(config.model, weights=config.weights, weights_seed=config.weights_seed,
                                   default_variant=config.variant, threads=config.threads, preload=config.preload,
                                   max_memory=config.max_memory, allowed_variants=config.allowed_variants,
                                   max_pipelines=config.max_pipelines)
    return module.TritonBackend(config.triton_url, default_variant=config.variant,
                                health_interval_s=config.health_interval_s)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _read_pem(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"--{flag}: cannot read {path}: {exc.strerror or exc}") from None


class GatewayServer:
    """One gateway: gRPC server + health + reflection + optional metrics endpoint over a backend.

    Args:
        config: The settings.
        backend: A backend to use instead of the one ``config`` names (tests).
    """

    def __init__(self, config: GatewayConfig, backend: Backend | None = None) -> None:
        config.check()
        self.config = config
        self.backend = backend if backend is not None else make_backend(config)
        self.metrics = GatewayMetrics()
        self.backend.register_metrics(self.metrics.registry)
        self.admission = Admission(config.max_concurrency, config.max_queue, capacity=self.backend.capacity)
        self.metrics.track_admission(lambda: self.admission.running, lambda: self.admission.waiting,
                                     lambda: self.admission.max_concurrency)
        self.health = BoundedHealthServicer(config.max_watch_streams, config.max_watched_services)
        self._server: grpc.Server | None = None
        self._metrics_http: Any = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @property
    def target(self) -> str:
        """``host:port`` clients connect to."""
        return _address(self.config.host, self.port or self.config.port)

    def _set_health(self, healthy: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", GENERATOR_SERVICE):
            self.health.set(service, status)

    def start(self) -> GatewayServer:
        """Start the backend, bind the port, serve; returns self.

        Raises:
            InvalidArgumentError: the port cannot be bound or a TLS file cannot be read.
        """
        config = self.config
        if not is_loopback(config.host) and config.token is None and config.tls_cert is None:
            logger.warning("serving on %s without TLS or a token: anyone who can reach it can generate", config.host)
        self._set_health(False)
        self.backend.add_health_listener(self._set_health)
        self.backend.start()
        interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(self.metrics)]
        if config.token is not None:
            interceptors.append(BearerTokenInterceptor(config.token))
        interceptors.append(MalformedRequestInterceptor())  # innermost: the handlers above copy its deserializer
        workers = self.admission.max_concurrency_bound + config.max_queue + SPARE_WORKERS
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway"),
            interceptors=interceptors,
            # beyond this many calls at once gRPC answers RESOURCE_EXHAUSTED instead of queueing without bound;
            # Watch streams hold no thread (non-blocking), so they get their own share
            maximum_concurrent_rpcs=workers + config.max_watch_streams,
            options=[("grpc.so_reuseport", 0), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                     ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        generator_pb2_grpc.add_GeneratorServicer_to_server(
            GeneratorServicer(self.backend, self.admission, self.metrics, max_batch=config.max_batch,
                              max_backend_wait_s=config.max_backend_wait_s, max_steps=config.max_steps,
                              default_deadline_s=config.default_deadline_s), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (GENERATOR_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server)
        try:
            self.port = self._bind(server)
            if config.metrics_port:
                self._metrics_http = self._start_metrics()
                self.metrics_port = config.metrics_port
        except BaseException:
            server.stop(None)
            self.backend.close()
            raise
        server.start()
        self._server = server
        if self.backend.healthy():
            self._set_health(True)
        logger.info("gateway (%s backend) listening on %s", self.backend.name, self.target)
        return self

    def _bind(self, server: grpc.Server) -> int:
        """Add the (TLS or plaintext) port; returns the bound port number."""
        config = self.config
        address = _address(config.host, config.port)
        try:
            if config.tls_cert is not None and config.tls_key is not None:
                creds = grpc.ssl_server_credentials([(_read_pem("tls-key", config.tls_key),
                                                      _read_pem("tls-cert", config.tls_cert))])
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise InvalidArgumentError(f"--port: cannot bind {address}: {exc}") from None
        if not port:
            raise InvalidArgumentError(f"--port: cannot bind {address}")
        return port

    def _start_metrics(self) -> Any:
        config = self.config
        try:
            return self.metrics.start_http(config.metrics_port, config.host)
        except OSError as exc:
            raise InvalidArgumentError(f"--metrics-port: cannot bind {config.host}:{config.metrics_port}: "
                                       f"{exc.strerror or exc}") from None

    def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls, give in-flight ones ``grace_s`` (default ``shutdown_grace_s``), then close all."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.config.shutdown_grace_s if grace_s is None else grace_s
            self.health.enter_graceful_shutdown()
            if self._server is not None:
                self._server.stop(grace).wait(grace + 10.0)
            if self._metrics_http is not None:
                httpd, _thread = self._metrics_http
                httpd.shutdown()
                httpd.server_close()
            self.backend.close()
            self._stopped.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until ``stop`` finished (or ``timeout_s``); True when stopped."""
        return self._stopped.wait(timeout_s)

    def __enter__(self) -> GatewayServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: GatewayConfig) -> int:
    """Run a gateway until SIGTERM or SIGINT, then shut down gracefully; returns the exit code (0).

    Prints one ``listening`` line on stdout once the port is bound, so scripts (and tests using port 0) know where.

    Raises:
        EdgediffError: bad settings, an unbindable port, an unavailable default variant, bad weights.
    """
    server = GatewayServer(config)
    stop_requested = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop_requested.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    server.start()
    metrics = f", metrics on {config.host}:{server.metrics_port}" if server.metrics_port else ""
    print(f"edgediff serve: listening on {server.target} (backend {server.backend.name}, model "
          f"{server.backend.model_name()}{metrics})", flush=True)
    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        logger.info("%s received: finishing in-flight requests (up to %.0f s)", ",".join(received) or "stop",
                    config.shutdown_grace_s)
        server.stop()
    print("edgediff serve: stopped", file=sys.stderr, flush=True)
    return 0

