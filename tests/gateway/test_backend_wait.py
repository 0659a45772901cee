"""Requests survive a backend restart: queued (not started) work waits for the backend, started work fails.

A fake backend whose health the test flips stands in for Triton (the real kill-and-restart runs in
``test_triton_gateway.py``); what is tested here is the gateway's admission and retry logic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from edgediff.constants import METRIC_GATEWAY_BACKEND_WAIT_SECONDS
from services.gateway.backends.base import Backend
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
from tests.gateway.conftest import free_port, scrape
from tests.gateway.fakes import VARIANT, FlakyBackend


@pytest.fixture
def fake() -> FlakyBackend:
    return FlakyBackend()


def _gateway(backend: Backend, max_backend_wait_s: float, max_queue: int = 4) -> GatewayServer:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=free_port(), max_concurrency=1,
                           max_queue=max_queue, shutdown_grace_s=2.0, max_backend_wait_s=max_backend_wait_s)
    return GatewayServer(config, backend=backend).start()


@pytest.fixture
def gateway(fake: FlakyBackend) -> Iterator[GatewayServer]:
    server = _gateway(fake, max_backend_wait_s=30.0)
    try:
        yield server
    finally:
        server.stop(grace_s=1.0)


def _call_in_thread(target: str, seed: int, answers: dict[int, object], timeout_s: float = 30.0) -> threading.Thread:
    def call() -> None:
        with GeneratorClient(target, timeout_s=timeout_s) as client:
            try:
                answers[seed] = client.generate(seed=seed, steps=2, variant=VARIANT)
            except grpc.RpcError as exc:
                answers[seed] = exc

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_queued_requests_survive_a_restart_only_started_work_fails(gateway: GatewayServer,
                                                                   fake: FlakyBackend) -> None:
    fake.work_s = 2.0
    answers: dict[int, object] = {}
    threads = [_call_in_thread(gateway.target, 1, answers)]
    _wait_for(lambda: fake.started == [1])
    for seed in (2, 3):  # one after the other: their order in the queue is known
        threads.append(_call_in_thread(gateway.target, seed, answers))
        _wait_for(lambda seed=seed: gateway.admission.waiting == seed - 1)
    fake.set_up(False)  # "Triton" dies: the running request fails, the queued two wait
    _wait_for(lambda: 1 in answers)
    assert isinstance(answers[1], grpc.RpcError)
    assert answers[1].code() == grpc.StatusCode.UNAVAILABLE and "mid-generation" in answers[1].details()
    fake.work_s = 0.05
    threads.append(_call_in_thread(gateway.target, 4, answers))  # arrives while down: held too
    time.sleep(0.8)
    assert sorted(answers) == [1], answers
    assert gateway.admission.waiting == 3
    fake.set_up(True)
    for thread in threads:
        thread.join(30)
    for seed in (2, 3, 4):
        response = answers[seed]
        assert not isinstance(response, grpc.RpcError), response
        assert response.seed == seed
        assert response.timings.backend_wait_ms >= 700, response.timings
        assert response.timings.queue_ms >= response.timings.backend_wait_ms
    assert fake.finished == [2, 3, 4]  # FIFO kept through the outage
    samples = scrape(gateway.metrics_port)
    count = samples[(f"{METRIC_GATEWAY_BACKEND_WAIT_SECONDS}_count", (("code", "OK"),))]
    assert count == 3


def test_work_refused_before_it_started_is_retried(gateway: GatewayServer, fake: FlakyBackend) -> None:
    fake.unsent_failures = 2  # health says up, but the backend refuses the connection twice (it just died)
    with GeneratorClient(gateway.target, timeout_s=30) as client:
        response = client.generate(seed=9, steps=2, variant=VARIANT)
    assert response.seed == 9 and fake.finished == [9]
    assert response.timings.backend_wait_ms > 0


@pytest.mark.parametrize(("max_backend_wait_s", "at_most_s"), [
    (0.5, 10.0),  # held while the backend is down, then refused saying why
    (0.0, 5.0),  # 0: refused at once, never held
])
def test_a_down_backend_is_waited_for_at_most_max_backend_wait(fake: FlakyBackend, max_backend_wait_s: float,
                                                                at_most_s: float) -> None:
    server = _gateway(fake, max_backend_wait_s=max_backend_wait_s)
    try:
        fake.set_up(False)
        with GeneratorClient(server.target, timeout_s=30) as client:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                client.generate(seed=1, steps=2, variant=VARIANT)
            waited = time.monotonic() - t0
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "fake backend is down" in info.value.details()
        assert ("--max-backend-wait" in info.value.details()) is (max_backend_wait_s > 0)
        assert max_backend_wait_s <= waited < at_most_s
        samples = scrape(server.metrics_port)
        held = samples.get((f"{METRIC_GATEWAY_BACKEND_WAIT_SECONDS}_count", (("code", "UNAVAILABLE"),)), 0)
        assert held == (1 if max_backend_wait_s > 0 else 0)
    finally:
        server.stop(grace_s=1.0)


def test_bounded_by_the_clients_deadline(gateway: GatewayServer, fake: FlakyBackend) -> None:
    fake.set_up(False)
    with GeneratorClient(gateway.target) as client, pytest.raises(grpc.RpcError) as info:
        client.generate(seed=1, steps=2, variant=VARIANT, timeout_s=0.6)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for(lambda: gateway.admission.waiting == 0)  # the request left the queue


def test_bad_fields_never_wait_for_a_down_backend(gateway: GatewayServer, fake: FlakyBackend) -> None:
    fake.set_up(False)
    with GeneratorClient(gateway.target, timeout_s=30) as client:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            client.generate(seed=1, steps=5000, variant=VARIANT)  # invalid: answered at once, backend down
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert time.monotonic() - t0 < 5


def test_full_queue_is_refused_at_once_while_down(fake: FlakyBackend) -> None:
    server = _gateway(fake, max_backend_wait_s=30.0, max_queue=1)
    answers: dict[int, object] = {}
    try:
        fake.set_up(False)
        thread = _call_in_thread(server.target, 1, answers)
        _wait_for(lambda: server.admission.waiting == 1)
        with GeneratorClient(server.target, timeout_s=30) as client, pytest.raises(grpc.RpcError) as info:
            client.generate(seed=2, steps=2, variant=VARIANT)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        fake.set_up(True)
        thread.join(30)
        assert not isinstance(answers[1], grpc.RpcError), answers[1]
    finally:
        server.stop(grace_s=1.0)
