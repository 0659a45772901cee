"""What one request may cost is bounded by the server, whatever the client asks (issue 31, item 5 and 8).

Real gateways on loopback over ``FlakyBackend`` (no model), and the local backend's variant allow-list and pipeline
cache on the tiny preset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import pytest

from edgediff.errors import InvalidArgumentError
from services.gateway.backends.base import BackendResult, GenerateArgs
from services.gateway.backends.local import LocalBackend
from services.gateway.client import GeneratorClient
from services.gateway.server import GatewayConfig, GatewayServer
from services.gateway.validation import DEFAULT_MAX_STEPS
from tests.gateway.fakes import VARIANT, FlakyBackend


def _gateway(backend: FlakyBackend, **settings: object) -> GatewayServer:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, shutdown_grace_s=0.5,
                           max_backend_wait_s=0.0, **settings)  # type: ignore[arg-type]
    return GatewayServer(config, backend=backend).start()


@pytest.fixture
def quick() -> Iterator[tuple[FlakyBackend, GatewayServer]]:
    backend = FlakyBackend(work_s=0.01)
    server = _gateway(backend, max_steps=50)
    try:
        yield backend, server
    finally:
        server.stop(grace_s=0.5)


def test_steps_above_the_servers_maximum_are_refused(quick: tuple[FlakyBackend, GatewayServer]) -> None:
    backend, server = quick
    with GeneratorClient(server.target, timeout_s=10.0) as client:
        assert client.generate(seed=1, steps=50, variant=VARIANT).steps == 50
        with pytest.raises(grpc.RpcError) as info:
            client.generate(seed=1, steps=51, variant=VARIANT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "steps must be in 1..50" in (info.value.details() or "")
    assert backend.started == [1]  # the refused request never reached the backend


def test_the_default_maximum_of_steps_is_sane() -> None:
    assert 20 <= GatewayConfig(backend="local").max_steps == DEFAULT_MAX_STEPS < 1000
    for bad in (0, 1001):
        with pytest.raises(InvalidArgumentError, match="--max-steps"):
            GatewayConfig(backend="local", max_steps=bad).check()
    with pytest.raises(InvalidArgumentError, match="--steps"):
        GatewayConfig(backend="local", steps=60, max_steps=50).check()


def test_a_generate_without_deadline_is_cancelled_at_the_servers_default() -> None:
    backend = FlakyBackend(work_s=30.0)
    server = _gateway(backend, default_deadline_s=1.0)
    try:
        t0 = time.monotonic()
        with GeneratorClient(server.target) as client, pytest.raises(grpc.RpcError) as info:
            client.generate(seed=5, steps=2, variant=VARIANT)  # no deadline from the client
        elapsed = time.monotonic() - t0
    finally:
        server.stop(grace_s=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "1 s" in (info.value.details() or "")
    assert elapsed < 5.0 and backend.started == [5] and backend.finished == []


def test_a_huge_client_string_is_short_in_the_log_and_the_answer(quick: tuple[FlakyBackend, GatewayServer],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    _backend, server = quick
    huge = "/x" * 2_000_000  # 4 MB of a path-like scheduler name (a path makes the servicer log the message)
    with (caplog.at_level(logging.DEBUG), GeneratorClient(server.target, timeout_s=10.0) as client,
          pytest.raises(grpc.RpcError) as info):
        client.generate(seed=1, steps=2, variant=VARIANT, scheduler=huge)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "scheduler" in (info.value.details() or "") and len(info.value.details() or "") < 2048
    assert all(len(record.getMessage()) < 4096 for record in caplog.records)


class _InternalFailure(FlakyBackend):
    def internal_addresses(self) -> list[str]:
        return ["triton.internal:8001"]

    def generate(self, args: GenerateArgs, should_stop: object, timeout_s: float | None = None) -> BackendResult:
        raise RuntimeError("Triton at triton.internal:8001 failed; peer ipv4:10.0.3.7:8001 and http://10.0.3.7:8002/")


def test_errors_to_clients_carry_no_internal_address() -> None:
    server = _gateway(_InternalFailure())
    try:
        with GeneratorClient(server.target, timeout_s=10.0) as client, pytest.raises(grpc.RpcError) as info:
            client.generate(seed=1, steps=2, variant=VARIANT)
    finally:
        server.stop(grace_s=0.5)
    details = info.value.details() or ""
    assert info.value.code() == grpc.StatusCode.INTERNAL and "failed" in details
    for secret in ("triton.internal", "10.0.3.7", "8001", "8002"):
        assert secret not in details, details


def test_the_local_backend_builds_only_allowed_variants() -> None:
    backend = LocalBackend("tiny", default_variant="torch-fp32", preload=False)
    assert backend.variant_status("torch-fp32").available
    refused = backend.variant_status("jit-fp32")  # runnable on every CPU, but not allowed
    assert not refused.available and "--allow-variants" in refused.reason
    assert not backend.variant_status("trt-fp16").available  # not runnable: its own reason comes first
    assert "--allow-variants" not in backend.variant_status("trt-fp16").reason
    wide = LocalBackend("tiny", default_variant="torch-fp32", preload=False, allowed_variants=["all"])
    assert wide.variant_status("jit-fp32").available
    listed = LocalBackend("tiny", default_variant="torch-fp32", preload=False, allowed_variants=["jit-fp32"])
    assert listed.variant_status("jit-fp32").available and listed.variant_status("torch-fp32").available
    with pytest.raises(InvalidArgumentError, match="--allow-variants"):
        LocalBackend("tiny", preload=False, allowed_variants=["no-such-variant"])


@pytest.mark.slow
def test_the_pipeline_cache_is_bounded(_isolated_cache: object) -> None:
    backend = LocalBackend("tiny", default_variant="torch-fp32", preload=False,
                           allowed_variants=["torch-fp32", "jit-fp32", "onnx-fp32"], max_pipelines=2)
    backend.start()
    args = {"seed": 0, "steps": 1, "eta": 0.0, "batch": 1, "format": "png", "scheduler": "ddim"}
    try:
        for variant in ("torch-fp32", "jit-fp32", "torch-fp32", "onnx-fp32"):
            backend.generate(GenerateArgs(variant=variant, **args), lambda: False)  # type: ignore[arg-type]
        assert backend.cached_variants() == ["torch-fp32", "onnx-fp32"]  # jit was the least recently used
    finally:
        backend.close()


def test_serve_flags_set_the_bounds() -> None:
    import argparse

    from cli.serve import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--backend", "local", "--model", "tiny", "--variant", "torch-fp32", "--steps", "20",
                              "--max-steps", "40", "--default-deadline", "90", "--allow-variants",
                              "torch-fp32, torch-bf16", "--max-pipelines", "3"])
    config = config_from_args(args)
    assert (config.max_steps, config.default_deadline_s, config.max_pipelines) == (40, 90.0, 3)
    assert config.allowed_variants == ["torch-fp32", "torch-bf16"]
    defaults = config_from_args(parser.parse_args(["--backend", "local", "--model", "tiny", "--variant",
                                                   "torch-fp32", "--steps", "20"]))
    assert defaults.allowed_variants is None and defaults.max_steps == DEFAULT_MAX_STEPS


def test_for_client_hides_addresses_but_keeps_the_words() -> None:
    from services.gateway.redact import MAX_CLIENT_MESSAGE_CHARS, for_client

    text = ("Triton at triton:8001 is unreachable (ipv6:[fd00::5]:8001, 192.168.4.2, localhost:8001, "
            "http://exporter:9400/metrics); pip install tritonclient; try openvino-fp32-dc3@dpmpp:10 from "
            "/srv/m/x.onnx")
    public = for_client(text, ["triton:8001"])
    for gone in ("triton:8001", "fd00::5", "192.168.4.2", "localhost:8001", "exporter:9400", "/srv/m"):
        assert gone not in public, public
    assert "tritonclient" in public and "dpmpp:10" in public and "<path>/x.onnx" in public
    assert len(for_client("x" * 10**6)) < MAX_CLIENT_MESSAGE_CHARS + 64


class _SlowListing(FlakyBackend):
    def variants(self) -> list:
        time.sleep(1.0)
        return super().variants()


def test_calls_beyond_the_servers_limit_are_refused_not_queued() -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = _gateway(_SlowListing(), max_concurrency=1, max_queue=0, max_watch_streams=1)
    try:
        limit = server.admission.max_concurrency_bound + 0 + 8 + 1  # workers (bound + queue + spare) + Watch streams
        with GeneratorClient(server.target, timeout_s=20.0) as client:
            def call(_: int) -> str:
                try:
                    client.list_variants()
                    return "OK"
                except grpc.RpcError as exc:
                    return exc.code().name

            with ThreadPoolExecutor(limit + 6) as pool:
                codes = list(pool.map(call, range(limit + 6)))
    finally:
        server.stop(grace_s=0.5)
    assert "RESOURCE_EXHAUSTED" in codes and codes.count("OK") >= limit - 1, codes
