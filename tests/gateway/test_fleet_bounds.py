"""The fleet router bounds and cancels its upstream calls, and speaks TLS to upstreams that serve it (issue 31).

Before the fix a request the client gave up on (or never bounded) kept its upstream generating: the router's call to
the upstream had no deadline and was never cancelled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from edgediff.pipeline import GenerationCancelled
from services.gateway.backends.base import BackendResult, GenerateArgs
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
from tests.gateway.fakes import VARIANT, FlakyBackend
from tests.gateway.test_security import make_self_signed

pytestmark = pytest.mark.slow


class _Watched(FlakyBackend):
    """A long generation that records when it was told to stop."""

    def __init__(self) -> None:
        super().__init__(work_s=60.0)
        self.stopped = threading.Event()

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        try:
            return super().generate(args, should_stop, timeout_s)
        except GenerationCancelled:
            self.stopped.set()
            raise


def _upstream(backend: FlakyBackend, **tls: str) -> GatewayServer:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, shutdown_grace_s=0.5,
                           max_backend_wait_s=0.0, **tls)  # type: ignore[arg-type]
    return GatewayServer(config, backend=backend).start()


def _router(upstream: GatewayServer, **settings: object) -> GatewayServer:
    spec = f"{upstream.target};metrics=none;exporter=none;name=up"
    config = GatewayConfig(backend="fleet", port=0, metrics_port=0, max_queue=4, shutdown_grace_s=0.5,
                           upstreams=[spec], policy="fastest", fleet_refresh_s=0.2, max_backend_wait_s=0.0,
                           **settings)  # type: ignore[arg-type]
    return GatewayServer(config).start()


@pytest.fixture
def watched() -> Iterator[tuple[_Watched, GatewayServer]]:
    backend = _Watched()
    server = _upstream(backend)
    try:
        yield backend, server
    finally:
        server.stop(grace_s=0.5)


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_client_that_goes_away_cancels_the_upstream_call(watched: tuple[_Watched, GatewayServer]) -> None:
    backend, upstream = watched
    router = _router(upstream)
    try:
        with GeneratorClient(router.target) as client:
            client.wait_serving(timeout_s=10.0)
            call = client.generate_future(seed=7, steps=2, variant=VARIANT)  # no deadline
            assert _wait(lambda: backend.started == [7], 10.0)
            call.cancel()
            assert backend.stopped.wait(5.0), "the upstream kept generating for a client that went away"
    finally:
        router.stop(grace_s=0.5)


def test_a_request_without_deadline_is_bounded_upstream(watched: tuple[_Watched, GatewayServer]) -> None:
    backend, upstream = watched
    router = _router(upstream, default_deadline_s=1.0)
    try:
        with GeneratorClient(router.target) as client:
            client.wait_serving(timeout_s=10.0)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                client.generate(seed=8, steps=2, variant=VARIANT)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 5.0
            assert backend.stopped.wait(5.0), "the upstream call outlived the router's deadline"
    finally:
        router.stop(grace_s=0.5)


def test_the_router_speaks_tls_to_tls_upstreams(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    upstream = _upstream(FlakyBackend(work_s=0.01), tls_cert=str(cert), tls_key=str(key))
    routers = []
    try:
        good = _router(upstream, upstream_tls_ca=str(cert), upstream_tls_server_name="localhost")
        routers.append(good)
        with GeneratorClient(good.target, timeout_s=10.0) as client:
            client.wait_serving(timeout_s=10.0)
            assert client.generate(seed=1, steps=2, variant=VARIANT).upstream == "up"
        wrong = _router(upstream, upstream_tls_ca=str(cert), upstream_tls_server_name="other.example")
        routers.append(wrong)
        plain = _router(upstream)
        routers.append(plain)
        time.sleep(1.0)
        for router in (wrong, plain):
            with GeneratorClient(router.target, timeout_s=5.0) as client:
                assert client.health() == "NOT_SERVING"  # the upstream cannot be reached that way
    finally:
        for router in routers:
            router.stop(grace_s=0.5)
        upstream.stop(grace_s=0.5)


def test_the_client_presents_a_certificate_to_servers_that_require_one(tmp_path: Path) -> None:
    from concurrent import futures

    from grpc_health.v1 import health, health_pb2_grpc

    cert, key = make_self_signed(tmp_path)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())], root_certificates=cert.read_bytes(),
                                        require_client_auth=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        with GeneratorClient(f"127.0.0.1:{port}", tls_ca=cert, tls_cert=cert, tls_key=key) as client:
            assert client.health(timeout_s=5.0) == "SERVING"
        with GeneratorClient(f"127.0.0.1:{port}", tls_ca=cert) as client, pytest.raises(grpc.RpcError):
            client.health(timeout_s=5.0)
    finally:
        server.stop(grace=None).wait(5)
