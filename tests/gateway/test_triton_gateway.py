"""The triton backend against a real tritonserver (the exporters' repository and launcher): same images as the local
backend, deadlines, and recovery after Triton is killed and restarted on the same ports."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgediff.constants import METRIC_GATEWAY_REQUESTS_TOTAL
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
from tests.gateway.conftest import free_port, scrape

pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install 'edgediff[triton]')")

VARIANT = "torch-fp32"
REQUEST = {"seed": 5, "steps": 6, "eta": 0.5, "batch_size": 2, "variant": VARIANT}
HELD_DEADLINE_S = 600.0
"""Deadline and --max-backend-wait of the request held while Triton restarts (slow on a loaded machine)."""


def _wait_health(client: GeneratorClient, wanted: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    status = ""
    while time.monotonic() < deadline:
        status = client.health()
        if status == wanted:
            break
        time.sleep(0.1)
    return status


def test_unreachable_triton_is_unavailable_not_serving() -> None:
    config = GatewayConfig(backend="triton", triton_url=f"127.0.0.1:{free_port()}", port=0, metrics_port=0,
                           health_interval_s=0.2, max_backend_wait_s=0.0)  # 0: fail at once instead of holding
    with GatewayServer(config) as server, GeneratorClient(server.target, timeout_s=10) as client:
        assert client.health() == "NOT_SERVING"
        assert client.health("edgediff.v1.Generator") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as info:
            client.generate(steps=2, variant=VARIANT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "unreachable" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            client.generate(steps=2)  # no default variant can be chosen while Triton is away
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as info:  # validation still answers without Triton
            client.generate(steps=5000, variant=VARIANT)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listing = client.list_variants()
        assert listing.backend == "triton"
        assert not any(v.available for v in listing.variants)
        assert all("unreachable" in v.reason for v in listing.variants)


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory: pytest.TempPathFactory, gateway_cache: Path) -> Path:
    repository = pytest.importorskip("exporters.repository", reason="exporters.repository is not there yet")
    repo = tmp_path_factory.mktemp("triton-repo")
    repository.export_repository(model="tiny", target="cpu", variants=[VARIANT], repo=repo)
    return repo


@pytest.fixture(scope="module")
def triton_ports() -> dict[str, int]:
    return {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}


def _start_triton(repo: Path, ports: dict[str, int]) -> Any:
    triton_server = pytest.importorskip("services.triton.launcher", reason="services.triton.launcher is not there yet")
    from edgediff.errors import BackendMissingError

    try:
        triton_server.find_tritonserver()
    except BackendMissingError as exc:
        pytest.skip(str(exc))
    return triton_server.TritonServer(repo, startup_timeout_s=180, **ports).start()


@pytest.fixture(scope="module")
def triton(triton_repo: Path, triton_ports: dict[str, int]) -> Iterator[dict[str, Any]]:
    """A running tritonserver in a mutable box (the restart test replaces it)."""
    box = {"server": _start_triton(triton_repo, triton_ports)}
    try:
        yield box
    finally:
        box["server"].stop(timeout_s=10)


@pytest.fixture(scope="module")
def triton_gateway(triton: dict[str, Any]) -> Iterator[GatewayServer]:
    server = triton["server"]
    config = GatewayConfig(backend="triton", triton_url=server.grpc_url, port=0, metrics_port=free_port(),
                           max_concurrency=2, max_queue=2, health_interval_s=0.25, shutdown_grace_s=2.0,
                           max_backend_wait_s=HELD_DEADLINE_S, max_steps=1000)  # long work: 1000 steps
    gateway = GatewayServer(config).start()
    try:
        yield gateway
    finally:
        gateway.stop(grace_s=1.0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_same_image_as_local(triton_gateway: GatewayServer, local_gateway: GatewayServer) -> None:
    with GeneratorClient(triton_gateway.target) as client:  # no deadline: gRPC's "infinite" one must not leak on
        assert client.health() == "SERVING"
        listing = client.list_variants()
        rows = {v.name: v for v in listing.variants}
        assert (listing.backend, listing.model) == ("triton", "tiny")
        assert rows[VARIANT].available and rows[VARIANT].is_default
        assert not rows["onnx-fp32"].available and "ldm_onnx_fp32" in rows["onnx-fp32"].reason
        remote = client.generate(**REQUEST)
        with pytest.raises(grpc.RpcError) as info:
            client.generate(steps=2, variant="onnx-fp32")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with GeneratorClient(local_gateway.target, timeout_s=120) as client:
        local = client.generate(**REQUEST)
    assert len(remote.images) == 2
    assert list(remote.images) == list(local.images), "Triton's PNGs equal the in-process ones byte for byte"
    assert (remote.model, remote.variant, remote.steps, remote.seed) == ("tiny", VARIANT, 6, 5)
    assert remote.weights_origin.startswith("synthetic")
    assert remote.timings.denoise_ms > 0 and remote.timings.total_ms >= remote.timings.denoise_ms


@pytest.mark.slow
def test_deadline_cancels_the_triton_call(triton_gateway: GatewayServer) -> None:
    with GeneratorClient(triton_gateway.target) as client:
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            client.generate(steps=1000, variant=VARIANT, timeout_s=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - t0 < 5
        assert len(client.generate(steps=2, variant=VARIANT, timeout_s=60).images) == 1


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_triton_then_restart(triton_gateway: GatewayServer, triton: dict[str, Any], triton_repo: Path,
                                  triton_ports: dict[str, int]) -> None:
    port = triton_gateway.metrics_port
    unavailable_key = (METRIC_GATEWAY_REQUESTS_TOTAL, (("code", "UNAVAILABLE"), ("method", "Generate")))
    unavailable_before = scrape(port).get(unavailable_key, 0.0)
    with GeneratorClient(triton_gateway.target, timeout_s=120) as client:
        before = client.generate(**REQUEST)
        answers: list[object] = []

        def in_flight() -> None:
            try:
                answers.append(client.generate(seed=1, steps=1000, variant=VARIANT))
            except grpc.RpcError as exc:
                answers.append(exc)

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(1.0)  # the long request is inside Triton now
        server = triton["server"]
        os.killpg(server.pid, signal.SIGKILL)
        thread.join(timeout=30)
        server.stop(timeout_s=5)
        assert len(answers) == 1 and isinstance(answers[0], grpc.RpcError), answers
        assert answers[0].code() == grpc.StatusCode.UNAVAILABLE, answers[0].details()  # started work fails
        assert _wait_health(client, "NOT_SERVING", 10) == "NOT_SERVING"
        assert scrape(port)[unavailable_key] - unavailable_before == 1

        held: list[object] = []

        def while_down() -> None:  # accepted while Triton is away: waits for it instead of failing
            try:  # a deadline longer than a slow Triton restart on a loaded machine
                held.append(client.generate(**REQUEST, timeout_s=HELD_DEADLINE_S))
            except grpc.RpcError as exc:
                held.append(exc)

        waiter = threading.Thread(target=while_down)
        waiter.start()
        time.sleep(1.0)
        assert held == [] and triton_gateway.admission.waiting == 1
        triton["server"] = _start_triton(triton_repo, triton_ports)  # same ports; the gateway is not restarted
        waiter.join(timeout=HELD_DEADLINE_S + 10)
        assert len(held) == 1 and not isinstance(held[0], grpc.RpcError), held
        assert held[0].timings.backend_wait_ms >= 1000.0
        assert list(held[0].images) == list(before.images)
        client.wait_serving(timeout_s=30)
        assert client.health("edgediff.v1.Generator") == "SERVING"
        after = client.generate(**REQUEST)
        assert scrape(port)[unavailable_key] - unavailable_before == 1
    assert list(after.images) == list(before.images)
