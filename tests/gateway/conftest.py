"""Gateway fixtures: real gateways on 127.0.0.1 (free ports), always stopped, over the tiny preset."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.healthcheck import free_port

MAX_BATCH = 4


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a Prometheus endpoint: {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="session")
def gateway_cache(_isolated_cache: Path) -> Path:
    """The session's artifact cache (``EDGEDIFF_CACHE_DIR``, set by the suite's conftest); gateways inherit it."""
    return _isolated_cache


@pytest.fixture(scope="session")
def local_gateway(gateway_cache: Path) -> Iterator[object]:
    """One local-backend gateway for the session: tiny preset, concurrency 1, queue 1, max batch 4, max steps 1000,
    metrics on."""
    from services.gateway.server import GatewayConfig, GatewayServer

    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=free_port(), max_concurrency=1,
                           max_queue=1, max_batch=MAX_BATCH, shutdown_grace_s=5.0,
                           max_steps=1000)  # the core's largest: test_deadline_cancels_the_work needs slow work
    server = GatewayServer(config).start()
    try:
        yield server
    finally:
        server.stop(grace_s=2.0)


@pytest.fixture
def local_client(local_gateway: object) -> Iterator[object]:
    """A plaintext client of ``local_gateway`` with a 60 s default deadline."""
    from services.gateway.client import GeneratorClient

    with GeneratorClient(local_gateway.target, timeout_s=60.0) as client:  # type: ignore[attr-defined]
        yield client
