"""Fixtures of the exporters tests."""

from __future__ import annotations

import pytest

from tests.exporters.helpers import free_port


@pytest.fixture
def ports() -> dict[str, int]:
    """Three distinct free ports for HTTP, gRPC and metrics."""
    chosen: set[int] = set()
    while len(chosen) < 3:
        chosen.add(free_port())
    http, grpc, metrics = sorted(chosen)
    return {"http_port": http, "grpc_port": grpc, "metrics_port": metrics}
