"""Clients never see the server's filesystem: weights_origin names preset, weights and hash; errors and variant
reasons have their paths replaced (the server's log keeps them)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import grpc
import pytest

from edgediff.errors import VariantUnavailableError
from edgediff.models.weights import WeightsOrigin
from services.gateway.backends.base import BackendResult, GenerateArgs, VariantStatus, public_weights_label
from services.gateway.client import GeneratorClient
from services.gateway.redact import redact_paths
from services.gateway.server import GatewayConfig, GatewayServer
from tests.gateway.fakes import VARIANT, FlakyBackend

SECRET = "/home/alice/private-models/ldm-celebahq"


class LeakyBackend(FlakyBackend):
    """Reports a reason and raises an error that both name local files."""

    def variants(self) -> list[VariantStatus]:
        return [VariantStatus(name=VARIANT, available=False, reason=f"missing {SECRET}/unet/model.onnx")]

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        raise VariantUnavailableError(f"cannot open {SECRET}/unet/model.onnx: truncated")


def test_weights_label_has_no_path() -> None:
    pytest.importorskip("diffusers")
    from services.gateway.backends.local import LocalBackend

    backend = LocalBackend("tiny", preload=False)
    backend._components = SimpleNamespace(  # type: ignore[assignment]
        weights=WeightsOrigin(kind="directory", path=SECRET, sha256="ab12" * 16))
    label = backend.weights_label()
    assert label == "directory weights 'ldm-celebahq' for tiny (sha256 ab12ab12ab12)"
    assert "/home" not in label and "alice" not in label
    assert public_weights_label("tiny", "synthetic", "cd" * 32, seed=3) == \
        "synthetic weights for tiny (seed 3, sha256 cdcdcdcdcdcd)"
    assert public_weights_label("", "../../etc", "") == "unknown weights for an unknown preset"


def test_errors_and_reasons_reach_clients_without_paths() -> None:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, shutdown_grace_s=1.0)
    with GatewayServer(config, backend=LeakyBackend()) as server, \
            GeneratorClient(server.target, timeout_s=30) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.generate(seed=1, steps=2, variant=VARIANT)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "alice" not in info.value.details() and "<path>/model.onnx" in info.value.details()
        reasons = [v.reason for v in client.list_variants().variants]
        assert reasons and all("alice" not in r for r in reasons) and "<path>/model.onnx" in reasons[0]


def test_redact_keeps_addresses_and_urls() -> None:
    assert redact_paths("Triton at 127.0.0.1:8001 is unreachable") == "Triton at 127.0.0.1:8001 is unreachable"
    assert redact_paths("see http://example.org/a/b") == "see http://example.org/a/b"
    assert redact_paths("read ~/w/x.onnx and /var/lib/y/") == "read <path>/x.onnx and <path>/"
