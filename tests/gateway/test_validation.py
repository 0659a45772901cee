"""Request validation without a server: defaults, float32 eta, field names and ranges in the messages."""

from __future__ import annotations

import numpy as np
import pytest

from edgediff.errors import InvalidArgumentError, VariantUnavailableError
from services.gateway.backends.local import LocalBackend
from services.gateway.validation import validate_generate, wire_float
from services.proto.edgediff.v1 import generator_pb2


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    return LocalBackend("tiny", default_variant="torch-fp32", preload=False)  # not started: no model needed


def test_defaults(backend: LocalBackend) -> None:
    args = validate_generate(generator_pb2.GenerateRequest(), backend, max_batch=4)
    assert (args.seed, args.steps, args.eta, args.variant, args.batch, args.format) == (0, 20, 0.0, "torch-fp32", 1,
                                                                                         "png")


def test_float32_eta_is_the_decimal_sent(backend: LocalBackend) -> None:
    request = generator_pb2.GenerateRequest(eta=0.3, steps=5, batch_size=2, seed=9, variant="torch-fp32")
    assert request.eta != 0.3  # the wire value is float32
    args = validate_generate(request, backend, max_batch=4)
    assert args.eta == 0.3 and (args.steps, args.batch, args.seed) == (5, 2, 9)
    assert wire_float(np.float32(0.7)) == 0.7 and wire_float(np.float32(1.0)) == 1.0


@pytest.mark.parametrize(("fields", "error", "words"), [
    ({"steps": 1001}, InvalidArgumentError, ["steps", "1..1000"]),
    ({"eta": 1.01}, InvalidArgumentError, ["eta", "0..1"]),
    ({"batch_size": 3}, InvalidArgumentError, ["batch_size", "1..2"]),
    ({"seed": 2**63}, InvalidArgumentError, ["seed"]),
    ({"format": "webp"}, InvalidArgumentError, ["format", "png"]),
    ({"variant": "bogus"}, InvalidArgumentError, ["variant", "bogus"]),
])
def test_errors_name_the_field(backend: LocalBackend, fields: dict, error: type, words: list[str]) -> None:
    with pytest.raises(error) as info:
        validate_generate(generator_pb2.GenerateRequest(**fields), backend, max_batch=2)
    for word in words:
        assert word in str(info.value)


def test_unavailable_variant_says_why(backend: LocalBackend) -> None:
    unavailable = [v for v in backend.variants() if not v.available]
    if not unavailable:
        pytest.skip("every variant is available on this machine")
    with pytest.raises(VariantUnavailableError, match=unavailable[0].reason[:20]):
        validate_generate(generator_pb2.GenerateRequest(variant=unavailable[0].name), backend, max_batch=2)
