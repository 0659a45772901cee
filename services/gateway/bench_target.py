"""Measure a variant through the gRPC gateway (``edgediff bench --through gateway ADDR``): a bench ``RemoteTarget``.

Total latency is the client's wall time around each ``Generate`` call (network, queueing, PNG encoding included);
the denoise and decode stages come from the response's ``timings``. The gateway returns images only, so the latent
error is not available; the serving process's memory is on the server (read it from the telemetry exporter), so
the report's memory is "not measured" here. The energy window uses this machine's sensors: it means something only
when the gateway and its backend run on this machine.

The core bench knows only the ``edgediff.bench.remote.RemoteTarget`` protocol; ``cli/bench.py`` hands it a
``GatewayTarget``, so the core never imports grpc.
"""

from __future__ import annotations

import io
import time
from typing import Any

import grpc
import numpy as np

from edgediff.bench.runner import STATUS_FAILED, STATUS_OK, STATUS_UNAVAILABLE, RunSpec, VariantRun
from edgediff.errors import EdgediffError, InvalidArgumentError
from edgediff.io import atomic_write_bytes
from edgediff.schedulers import split_row
from edgediff.telemetry.window import EnergyMonitor
from services.gateway.client import GeneratorClient

MEMORY_NOT_MEASURED = ("not measured: through the gateway the serving process runs elsewhere; read its memory from "
                       "the telemetry exporter (edgediff_memory_used_bytes)")
MS_PER_S = 1000.0


def connect(target: str, *, token: str | None = None, tls_ca: str | None = None,
            tls_server_name: str | None = None) -> GeneratorClient:
    """A ``GeneratorClient`` for ``target`` (TLS when ``tls_ca`` is given)."""
    return GeneratorClient(target, token=token, tls_ca=tls_ca, tls_server_name=tls_server_name)


class GatewayTarget:
    """The bench's ``RemoteTarget`` over one gateway: its variant list and ``Generate`` calls."""

    def __init__(self, target: str, *, token: str | None = None, tls_ca: str | None = None,
                 tls_server_name: str | None = None) -> None:
        self.client = connect(target, token=token, tls_ca=tls_ca, tls_server_name=tls_server_name)
        self.target = target

    def variants(self, model: str) -> dict[str, tuple[bool, str]]:
        """See ``gateway_variants``."""
        return gateway_variants(self.client, model)

    def measure(self, spec: RunSpec, monitor: EnergyMonitor | None = None) -> VariantRun:
        """See ``measure_through_gateway``."""
        return measure_through_gateway(spec, self.client, monitor)

    def close(self) -> None:
        """Close the channel."""
        self.client.close()


def gateway_variants(client: Any, model: str) -> dict[str, tuple[bool, str]]:
    """The gateway's variants as ``name -> (available, reason)``, after checking it serves ``model``.

    Raises:
        EdgediffError: the gateway cannot be reached, or serves another model preset.
    """
    try:
        response = client.list_variants(timeout_s=30.0)
    except grpc.RpcError as exc:
        raise EdgediffError(f"--through gateway {client.target}: {exc.code().name}: {exc.details()}") from exc
    if response.model and response.model != model:
        raise InvalidArgumentError(f"--model: the gateway at {client.target} serves {response.model!r}, not {model!r}; "
                                   f"pass --model {response.model}")
    return {v.name: (bool(v.available), v.reason) for v in response.variants}


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _weights(origin: str) -> dict[str, Any]:
    synthetic = origin.startswith("synthetic")
    return {"kind": "synthetic" if synthetic else "remote", "path": None, "sha256": None, "seed": None,
            "label": f"{origin or 'unknown'} (reported by the gateway)", "synthetic": synthetic}


def measure_through_gateway(spec: RunSpec, client: Any, monitor: EnergyMonitor | None = None) -> VariantRun:
    """Warm-ups then timed ``Generate`` calls of ``spec.variant`` through ``client``, inside one energy window.

    Raises:
        InvalidArgumentError: the gateway refused an argument (INVALID_ARGUMENT): every variant would fail.
        EdgediffError: the gateway is unreachable or refused the token.
    """
    run = VariantRun(variant=spec.variant, status=STATUS_FAILED)
    run.telemetry = ({"power_readers": [r.name for r in monitor.readers if r.provides_power],
                      "unavailable": [str(u) for u in monitor.unavailable]} if monitor is not None
                     else {"power_readers": [], "unavailable": ["telemetry disabled (--no-energy)"]})

    def call(seed: int) -> tuple[Any, float]:
        t0 = time.perf_counter()

        response = client.generate(seed=seed, steps=spec.steps, eta=spec.eta, variant=split_row(spec.variant)[0],
                                   batch_size=spec.batch, scheduler=spec.scheduler)
        return response, time.perf_counter() - t0

    try:
        for _ in range(spec.warmup):
            _, total_s = call(spec.seed)
            run.warmup_s.append(total_s)
        results = []
        if monitor is not None:
            monitor.begin_window(spec.variant)
        try:
            for seed in spec.seeds():
                results.append((seed, *call(seed)))
        finally:
            measurement = monitor.end_window(spec.variant) if monitor is not None else None
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgumentError(f"gateway {client.target}: {details}") from exc
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED):
            raise EdgediffError(f"gateway {client.target}: {code.name}: {details}") from exc
        run.status = STATUS_UNAVAILABLE if code == grpc.StatusCode.FAILED_PRECONDITION else STATUS_FAILED
        run.error, run.error_type = f"{code.name}: {details}", code.name
        return run
    first = results[0][1]
    if first.steps and first.steps != spec.steps:
        raise EdgediffError(f"gateway {client.target} ran {first.steps} steps instead of {spec.steps}")
    run.weights = _weights(first.weights_origin)
    run.info = {"device": "remote", "gateway": client.target, "variant": first.variant}
    run.runs = [{"seed": seed, "denoise_s": r.timings.denoise_ms / MS_PER_S, "decode_s": r.timings.decode_ms / MS_PER_S,
                 "total_s": total_s, "queue_s": r.timings.queue_ms / MS_PER_S,
                 "server_total_s": r.timings.total_ms / MS_PER_S} for seed, r, total_s in results]
    run.images = np.stack([_decode_png(png) for _, r, _ in results for png in r.images])
    run.window = measurement.to_dict() if measurement is not None else None
    run.memory = {"process_peak_rss_bytes": None, "setup_peak_rss_bytes": None, "process_rss_bytes": None,
                  "peak_reset": False, "cuda_max_allocated_bytes": None,
                  "window_peak_bytes": {}, "method": MEMORY_NOT_MEASURED}
    if spec.sample_path:
        atomic_write_bytes(spec.sample_path, first.images[0])
    run.status = STATUS_OK
    return run
