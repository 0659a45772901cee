"""The ``scheduler`` field of ``GenerateRequest``: default from the server (a tune profile's), checked, and served."""

from __future__ import annotations

import pytest

from edgediff.errors import InvalidArgumentError
from services.gateway.backends.local import LocalBackend
from services.gateway.validation import validate_generate
from services.proto.edgediff.v1 import generator_pb2


def _backend(sampler=("ddim", 20)) -> LocalBackend:
    backend = LocalBackend("tiny", default_variant="torch-fp32", preload=False)  # not started: no model needed
    backend.default_sampler = sampler
    return backend


def test_empty_scheduler_and_steps_take_the_server_defaults() -> None:
    args = validate_generate(generator_pb2.GenerateRequest(), _backend(("unipc", 8)), max_batch=4)
    assert (args.scheduler, args.steps) == ("unipc", 8)
    args = validate_generate(generator_pb2.GenerateRequest(scheduler="DPMPP", steps=12), _backend(), max_batch=4)
    assert (args.scheduler, args.steps) == ("dpmpp", 12)


@pytest.mark.parametrize(("fields", "words"), [
    ({"scheduler": "euler"}, ["scheduler must be one of ddim, dpmpp, unipc", "euler"]),
    ({"scheduler": "dpmpp", "eta": 0.5}, ["eta must be 0 with scheduler dpmpp"]),
])
def test_bad_scheduler_is_invalid_argument(fields, words) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_generate(generator_pb2.GenerateRequest(**fields), _backend(), max_batch=4)
    for word in words:
        assert word in str(info.value)


@pytest.mark.slow
def test_local_backend_generates_with_the_requested_scheduler() -> None:
    backend = _backend()
    backend.start()
    try:
        args = validate_generate(generator_pb2.GenerateRequest(steps=4, scheduler="unipc"), backend, max_batch=4)
        result = backend.generate(args, lambda: False)
    finally:
        backend.close()
    assert b"unipc" in result.images[0]  # the PNG's edgediff:scheduler text chunk
