"""The fleet router when an upstream goes away (a Swarm task replaced in a rolling update, a pod deleted): a call it
is finishing when it leaves DNS completes (its channel is closed afterwards: closing it at once cancels the call), and
a call it cancels itself while shutting down goes to the next upstream instead of failing."""

from __future__ import annotations

import threading
import time

import pytest

from edgediff.pipeline import GenerationCancelled
from services.gateway.backends import fleet
from services.gateway.backends.base import BackendResult, GenerateArgs
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
from tests.gateway.conftest import free_port
from tests.gateway.fakes import VARIANT, FlakyBackend


def test_an_upstream_leaving_dns_finishes_its_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = FlakyBackend(work_s=1.5)
    upstream = GatewayServer(GatewayConfig(backend="local", model="tiny", port=0, metrics_port=free_port(),
                                           shutdown_grace_s=1.0, max_backend_wait_s=0.0), backend=backend).start()
    listed = threading.Event()
    listed.set()
    real_resolve = fleet.resolve

    def resolve(spec: fleet.UpstreamSpec) -> list[fleet.UpstreamSpec]:
        # the name resolves to the upstream while `listed` is set, then to nothing (the task left DNS)
        real = real_resolve(fleet.UpstreamSpec(address=upstream.target, metrics_url=None, exporter_url=None,
                                               name="gw"))
        return real if listed.is_set() else []

    monkeypatch.setattr(fleet, "resolve", resolve)
    router = GatewayServer(GatewayConfig(backend="fleet", port=0, metrics_port=free_port(), max_concurrency=4,
                                         max_queue=4, shutdown_grace_s=1.0, upstreams=["dns:gw.invalid:1"],
                                         fleet_refresh_s=0.1, max_backend_wait_s=0.0)).start()
    try:
        with GeneratorClient(router.target, timeout_s=30.0) as client:
            client.wait_serving(timeout_s=10.0)
            answer: list[object] = []
            call = threading.Thread(target=lambda: answer.append(client.generate(seed=1, steps=2, variant=VARIANT)))
            call.start()
            time.sleep(0.5)  # the call is at the upstream
            listed.clear()   # several refreshes happen before it ends
            call.join(timeout=20.0)
        assert answer and answer[0].upstream == "gw", "the call in flight was cancelled when its upstream left DNS"
        backend_router = router.backend
        assert isinstance(backend_router, fleet.FleetBackend)
        time.sleep(0.5)
        assert backend_router.upstreams() == [] and backend_router._retired == []  # closed once done
    finally:
        router.stop(grace_s=0.5)
        upstream.stop(grace_s=0.5)


class _ShuttingDown(FlakyBackend):
    """An upstream whose server ends every call (as a gateway does with a call that arrives while it stops)."""

    def generate(self, args: GenerateArgs, should_stop: object, timeout_s: float | None = None) -> BackendResult:
        raise GenerationCancelled("the server is stopping")


def test_a_call_the_upstream_cancels_goes_to_the_next() -> None:
    config = {"backend": "local", "model": "tiny", "port": 0, "shutdown_grace_s": 1.0, "max_backend_wait_s": 0.0}
    stopping = GatewayServer(GatewayConfig(metrics_port=free_port(), **config), backend=_ShuttingDown()).start()
    healthy = GatewayServer(GatewayConfig(metrics_port=free_port(), **config),
                            backend=FlakyBackend(work_s=0.05)).start()
    router = GatewayServer(GatewayConfig(
        backend="fleet", port=0, metrics_port=free_port(), shutdown_grace_s=1.0, policy="edge-first",
        upstreams=[f"{stopping.target};metrics=none;exporter=none;name=stopping",
                   f"{healthy.target};metrics=none;exporter=none;name=healthy"],
        fleet_refresh_s=60.0, max_backend_wait_s=0.0)).start()
    try:
        with GeneratorClient(router.target, timeout_s=30.0) as client:
            client.wait_serving(timeout_s=10.0)
            answer = client.generate(seed=1, steps=2, variant=VARIANT)
        assert answer.upstream == "healthy"
    finally:
        for server in (router, stopping, healthy):
            server.stop(grace_s=0.5)
