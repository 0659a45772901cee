"""Property-based fuzzing of the Generator API: any request or raw bytes get a valid status with a message.

Never INTERNAL, UNKNOWN or a crash, and the server still serves afterwards. Validation is the point, so most
examples run against a gateway over a fake backend (a valid request returns at once); a few go to the real local
backend on the tiny preset (steps capped so each generation is short). Hypothesis is derandomized (fixed examples,
no example database) so the test is reproducible and bounded in time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install 'edgediff[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from services.gateway.client import GeneratorClient  # noqa: E402
from services.gateway.server import GatewayConfig, GatewayServer  # noqa: E402
from services.gateway.validation import DEFAULT_MAX_STEPS  # noqa: E402
from services.proto.edgediff.v1 import generator_pb2  # noqa: E402
from tests.gateway.fakes import VARIANT, FlakyBackend  # noqa: E402

GENERATE = "/edgediff.v1.Generator/Generate"
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
           grpc.StatusCode.RESOURCE_EXHAUSTED}
"""Statuses a malformed or out-of-range request may get (the fake never fails; the queue may be full)."""
FIELD_NAMES = ("seed", "steps", "eta", "variant", "batch_size", "format", "request")
MAX_BATCH = 4
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

uint32 = st.integers(0, 2**32 - 1)
small_or_any_uint32 = st.one_of(st.integers(0, 1100), uint32)
short_text = st.one_of(st.sampled_from(["", "png", "PNG", " png ", VARIANT, "onnx-fp32", "jpeg", "torch-fp32\x00"]),
                       st.text(max_size=64), st.text(max_size=3000))
requests = st.builds(
    generator_pb2.GenerateRequest,
    seed=st.one_of(st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1)),
    steps=small_or_any_uint32,
    eta=st.floats(width=32, allow_nan=True, allow_infinity=True),
    variant=short_text,
    batch_size=st.one_of(st.integers(0, 8), uint32),
    format=short_text,
)


@pytest.fixture(scope="module")
def fake_gateway() -> Iterator[GatewayServer]:
    config = GatewayConfig(backend="local", model="tiny", port=0, metrics_port=0, max_concurrency=2, max_queue=4,
                           max_batch=MAX_BATCH, shutdown_grace_s=2.0, max_backend_wait_s=5.0)
    backend = FlakyBackend(work_s=0.0)
    server = GatewayServer(config, backend=backend).start()
    try:
        yield server
    finally:
        server.stop(grace_s=1.0)


@pytest.fixture(scope="module")
def fake_client(fake_gateway: GatewayServer) -> Iterator[GeneratorClient]:
    with GeneratorClient(fake_gateway.target, timeout_s=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def raw_generate(fake_gateway: GatewayServer) -> Iterator[grpc.UnaryUnaryMultiCallable]:
    """``Generate`` taking and returning raw bytes (no client-side serialization)."""
    with grpc.insecure_channel(fake_gateway.target) as channel:
        yield channel.unary_unary(GENERATE, request_serializer=None, response_deserializer=None)


def _expected_valid(request: generator_pb2.GenerateRequest) -> bool:
    """Whether the gateway must accept ``request`` (mirrors the documented ranges, not the code)."""
    eta = float(request.eta)
    fmt_ok = request.format.strip().lower() in ("", "png")
    return (request.seed <= 2**63 - 1 and request.steps <= DEFAULT_MAX_STEPS and math.isfinite(eta) and 0 <= eta <= 1
            and request.batch_size <= MAX_BATCH and fmt_ok and request.variant.strip() in ("", VARIANT))


def _check_failure(exc: grpc.RpcError) -> None:
    assert exc.code() in ALLOWED, (exc.code(), exc.details())
    assert exc.details(), f"{exc.code()} without a message"


@FUZZ
@given(request=requests)
def test_any_request_gets_a_clear_answer(fake_client: GeneratorClient, request: generator_pb2.GenerateRequest
                                         ) -> None:
    try:
        response = fake_client._stub.Generate(request, timeout=30)
    except grpc.RpcError as exc:
        _check_failure(exc)
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            assert not _expected_valid(request), exc.details()
            assert any(name in exc.details() for name in FIELD_NAMES), exc.details()
        return
    assert _expected_valid(request), request
    assert response.variant == VARIANT and len(response.images) == max(1, request.batch_size)
    assert response.steps == (request.steps or 20)


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), st.binary(min_size=4096, max_size=70_000)))
def test_raw_bytes_get_a_clear_answer(raw_generate: grpc.UnaryUnaryMultiCallable, data: bytes) -> None:
    try:
        reply = raw_generate(data, timeout=30)
    except grpc.RpcError as exc:
        _check_failure(exc)
        return
    assert generator_pb2.GenerateResponse.FromString(reply).images  # bytes that happened to be a valid request


def test_unknown_methods_and_huge_fields(fake_gateway: GatewayServer, fake_client: GeneratorClient) -> None:
    with grpc.insecure_channel(fake_gateway.target) as channel:
        for method in ("/edgediff.v1.Generator/Nope", "/no.such.Service/Call", "/"):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(method, request_serializer=None, response_deserializer=None)(b"\x01", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED and info.value.details()
    for field in ("variant", "format"):
        with pytest.raises(grpc.RpcError) as info:
            fake_client.generate(**{field: "x" * 8_000_000})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details() and len(info.value.details()) < 1000
    assert fake_client.health() == "SERVING"
    assert len(fake_client.generate(seed=1, steps=2).images) == 1


@settings(derandomize=True, database=None, deadline=None, max_examples=25,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=st.builds(generator_pb2.GenerateRequest, seed=st.integers(0, 2**64 - 1), steps=st.integers(0, 3),
                         eta=st.floats(width=32, allow_nan=True), variant=short_text,
                         batch_size=st.integers(0, 6), format=short_text),
       data=st.binary(max_size=64))
def test_real_local_backend_survives_fuzzing(local_client: GeneratorClient, local_gateway: GatewayServer,
                                             request: generator_pb2.GenerateRequest, data: bytes) -> None:
    if request.steps == 0:
        request.steps = 1  # 0 means 20 steps: keep real generations short
    try:
        local_client._stub.Generate(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, (exc.code(), exc.details())
        assert exc.details()
    with grpc.insecure_channel(local_gateway.target) as channel:
        try:
            channel.unary_unary(GENERATE, request_serializer=None, response_deserializer=None)(data, timeout=60)
        except grpc.RpcError as exc:
            assert exc.code() in ALLOWED, (exc.code(), exc.details())
            assert exc.details()


def test_local_backend_serves_after_fuzzing(local_client: GeneratorClient) -> None:
    assert local_client.health() == "SERVING"
    response = local_client.generate(seed=3, steps=2, variant="torch-fp32")
    assert len(response.images) == 1 and response.images[0].startswith(b"\x89PNG")
