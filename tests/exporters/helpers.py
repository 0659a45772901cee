"""Helpers of the exporters tests: free loopback ports and ``ldm_<variant>`` request inputs."""

from __future__ import annotations

import socket

import numpy as np


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



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
