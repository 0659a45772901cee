"""Helpers of the exporters tests: free loopback ports, a served tiny repository, ``ldm_<variant>`` request inputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from services.healthcheck import free_port


def serve_tiny(repo: Path, variants: list[str]) -> Iterator[Any]:
    """Export ``variants`` of the tiny preset into ``repo`` and serve them with a real tritonserver (explicit model
    control, free ports); yields the ``TritonServer`` and stops it afterwards (for module-scoped fixtures)."""
    from exporters.repository import export_repository, model_names
    from services.triton.launcher import TritonServer

    export_repository(model="tiny", target="cpu", variants=variants, repo=repo)
    models = [name for v in variants for name in model_names(v).values()]
    ports = sorted({free_port() for _ in range(3)})
    assert len(ports) == 3
    server = TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                          model_control="explicit", load_models=models, startup_timeout_s=300)
    server.start()
    yield server
    server.stop()
    assert server.pid is None


def grpc_client(server: Any) -> Iterator[Any]:
    """A ``tritonclient.grpc`` client of ``server``, closed afterwards (for fixtures)."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        yield client


MAX_PIXEL_DIFF = 1
"""Served vs in-process images: at most 1 uint8 level per pixel (the same compiled models on the same fp32 tensors
give identical images; the level only absorbs a different CPU kernel choice)."""


def assert_same_images(got: np.ndarray, expected: np.ndarray) -> None:
    """``got`` is a uint8 batch like ``expected`` within ``MAX_PIXEL_DIFF``."""
    assert got.shape == expected.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= MAX_PIXEL_DIFF, f"max pixel difference {diff.max()}"


def in_process(components: Any, variant: str, **kwargs: Any) -> Any:
    """The same generation in this process: what the served one must equal."""
    from edgediff.variants import build_variant

    return build_variant(variant, components).pipeline(components)(**kwargs)


def ldm_inputs(*, seed: int, steps: int, eta: float | None = None, batch: int | None = None) -> list:
    """``tritonclient.grpc`` inputs of an ``ldm_<variant>`` request (ETA and BATCH omitted when None)."""
    import tritonclient.grpc as grpcclient

    from edgediff.constants import LDM_INPUT_BATCH, LDM_INPUT_ETA, LDM_INPUT_SEED, LDM_INPUT_STEPS

    values = [(LDM_INPUT_SEED, "INT64", np.array([seed], np.int64)),
              (LDM_INPUT_STEPS, "INT32", np.array([steps], np.int32))]
    if eta is not None:
        values.append((LDM_INPUT_ETA, "FP32", np.array([eta], np.float32)))
    if batch is not None:
        values.append((LDM_INPUT_BATCH, "INT32", np.array([batch], np.int32)))
    inputs = []
    for name, dtype, value in values:
        tensor = grpcclient.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs
