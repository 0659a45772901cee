"""Idle ``grpc.health.v1.Health/Watch`` streams (open without a token) cannot starve Check or Generate.

Before the fix the malformed-request interceptor turned grpc-health's non-blocking Watch into a plain generator, so
each idle Watch held one of the gateway's 17 worker threads: 30 of them and every other call ended in
DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.client import GeneratorClient
from services.gateway.health import BoundedHealthServicer
from services.gateway.server import GatewayConfig, GatewayServer

pytestmark = pytest.mark.slow

IDLE_WATCHES = 30


@pytest.fixture(scope="module")
def gateway(_isolated_cache: object) -> Iterator[GatewayServer]:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, shutdown_grace_s=1.0,
                           max_watch_streams=IDLE_WATCHES + 2, max_watched_services=4)
    server = GatewayServer(config).start()
    try:
        yield server
    finally:
        server.stop(grace_s=0.5)


WATCH_TIMEOUT_S = 60.0
"""Each stream's deadline: longer than the test (a starved server frees a thread only when one expires)."""


def _open(channel: grpc.Channel, service: str = "") -> grpc.Future:
    return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service),
                                                     timeout=WATCH_TIMEOUT_S)


def _watch(channel: grpc.Channel, service: str = "") -> grpc.Future:
    stream = _open(channel, service)
    assert next(stream).status in (health_pb2.HealthCheckResponse.SERVING,
                                   health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
    return stream


def test_idle_watches_do_not_starve_check_or_generate(gateway: GatewayServer) -> None:
    channels = [grpc.insecure_channel(gateway.target) for _ in range(IDLE_WATCHES)]
    streams = [_open(channel) for channel in channels]
    try:
        time.sleep(1.0)  # every Watch reaches the server and stays open, idle
        with GeneratorClient(gateway.target) as client:
            assert client.health(timeout_s=5.0) == "SERVING"
            response = client.generate(seed=1, steps=1, timeout_s=10.0)
            assert len(response.images) == 1
        for stream in streams:
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for stream in streams:
            stream.cancel()
        for channel in channels:
            channel.close()


def test_watch_streams_and_service_names_are_capped(gateway: GatewayServer) -> None:
    channel = grpc.insecure_channel(gateway.target)
    streams = []
    try:
        for _ in range(IDLE_WATCHES + 2):
            streams.append(_watch(channel))
        extra = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5.0)
        with pytest.raises(grpc.RpcError) as info:
            next(extra)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for stream in streams:
            stream.cancel()
    try:
        names = [_watch(channel, f"no-such-service-{i}") for i in range(4)]
        extra = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="one-more"),
                                                          timeout=5.0)
        with pytest.raises(grpc.RpcError) as info:
            next(extra)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "service names" in (info.value.details() or "")
        for stream in names:
            stream.cancel()
    finally:
        channel.close()


def test_closed_watches_free_their_service_names() -> None:
    servicer = BoundedHealthServicer(max_streams=2, max_services=1)
    assert servicer.watched_services() == 0

    class Context:
        def __init__(self) -> None:
            self.callbacks: list = []

        def add_callback(self, callback: object) -> bool:
            self.callbacks.append(callback)
            return True

        def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise RuntimeError(code, details)

    sent: list = []
    context = Context()
    servicer.Watch(health_pb2.HealthCheckRequest(service="x"), context, sent.append)
    assert servicer.watched_services() == 1 and servicer.open_streams() == 1
    with pytest.raises(RuntimeError, match="service names"):
        servicer.Watch(health_pb2.HealthCheckRequest(service="y"), Context(), sent.append)
    for callback in context.callbacks:
        callback()
    assert servicer.watched_services() == 0 and servicer.open_streams() == 0
    servicer.Watch(health_pb2.HealthCheckRequest(service="y"), Context(), sent.append)
    assert servicer.watched_services() == 1
