"""The ``triton`` backend: forwards each request to Triton's ``ldm_<variant>`` model through ``tritonclient.grpc``.

A watcher thread probes Triton every ``health_interval_s`` (live? which ``ldm_*`` models are READY?) and flips the
gateway's health between SERVING and NOT_SERVING; when Triton comes back the same channel reconnects (short
reconnect backoff), so the gateway recovers without a restart. A request whose client disconnects or whose deadline
passes cancels its Triton call; a connection failure answers UNAVAILABLE. Triton's ``IMAGE`` output is encoded as
PNG here with the same metadata (from the model's config ``parameters``) as the in-process pipeline writes.

Capacity (the gateway's default concurrency): the instance count of the default variant's ``ldm_<variant>`` model,
read from its config once it is READY. Each instance runs one generation, so that many generations reach the part
models' dynamic batchers together; more would only wait inside Triton, where the gateway cannot see or bound them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from edgediff.availability import require
from edgediff.constants import (
    LDM_INPUT_BATCH,
    LDM_INPUT_ETA,
    LDM_INPUT_SCHEDULER,
    LDM_INPUT_SEED,
    LDM_INPUT_STEPS,
    LDM_OUTPUT_IMAGE,
    LDM_OUTPUT_TIMINGS,
    LDM_TIMINGS_FIELDS,
    PIPELINE_MODEL_PREFIX,
    triton_model_name,
)
from edgediff.errors import InvalidArgumentError, VariantUnavailableError
from edgediff.pipeline import GenerationCancelled, encode_png, run_metadata
from edgediff.variants import get_variant, variant_names
from exporters.configs import instance_count
from services.gateway.backends.base import (
    Backend,
    BackendResult,
    BackendUnavailableError,
    GenerateArgs,
    VariantStatus,
    public_weights_label,
)

logger = logging.getLogger(__name__)

READY = "READY"
POLL_S = 0.05
"""How often a waiting request checks whether its client is gone."""
PROBE_FAILURES_BEFORE_DOWN = 2
"""Slow probes (timeouts) tolerated before NOT_SERVING; a refused connection counts as down at once."""
PNG_BASE_KEYS = ("preset", "variant", "weights", "weights_sha256")
"""``ldm_<variant>`` config parameters that every PNG carries first (as ``BuiltVariant.pipeline`` writes them)."""
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
"""Reconnect quickly after Triton restarts (gRPC's default backoff grows to two minutes)."""


def _status_name(exc: Any) -> str:
    """``StatusCode.UNAVAILABLE`` -> ``UNAVAILABLE`` (tritonclient keeps the gRPC status as a string)."""
    status = exc.status() if hasattr(exc, "status") else None
    return str(status or "").rsplit(".", 1)[-1]


NEVER_CONNECTED_MARKERS = ("failed to connect", "connection refused", "dns resolution failed")
"""gRPC core messages of a call that never reached the server (no connection was made), lower case."""


def never_connected(message: str) -> bool:
    """Whether a gRPC UNAVAILABLE message says the call never reached the server (so no work started there)."""
    text = message.lower()
    return any(marker in text for marker in NEVER_CONNECTED_MARKERS)


class _ModelInfo:
    """What the gateway needs of one ``ldm_<variant>`` model: input dtypes/shapes, config parameters, instances."""

    def __init__(self, metadata: dict[str, Any], config: dict[str, Any]) -> None:
        self.inputs = {t["name"]: (t["datatype"], [1 if int(d) < 0 else int(d) for d in t["shape"]])
                       for t in metadata.get("inputs", [])}
        config = config.get("config", config)
        params = config.get("parameters", {})
        self.parameters = {k: v.get("string_value", "") for k, v in params.items()}
        self.instances = instance_count(config)

    def png_base(self) -> dict[str, str]:
        return {key: self.parameters.get(key, "") for key in PNG_BASE_KEYS}

    def weights_label(self) -> str:
        """Preset, weights kind and sha256 prefix (the config's parameters carry no path)."""
        return public_weights_label(self.parameters.get("preset", ""), self.parameters.get("weights", "unknown"),
                                    self.parameters.get("weights_sha256", ""))


class TritonBackend(Backend):
    """Generates through Triton.

    Args:
        url: Triton's gRPC ``host:port``.
        default_variant: Variant for requests that leave it empty; None: the first READY ``ldm_*`` in registry order.
        health_interval_s: Seconds between health probes.
        probe_timeout_s: Deadline of each probe.
    """

    name = "triton"

    def __init__(self, url: str, *, default_variant: str | None = None, health_interval_s: float = 1.0,
                 probe_timeout_s: float = 2.0) -> None:
        super().__init__()
        if default_variant is not None:
            get_variant(default_variant)
        self.url = url
        self._default = default_variant
        self._interval_s = health_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._client: Any = None
        self._errors: Any = None
        self._lock = threading.Lock()
        self._healthy = False
        self._reachable = False
        self._last_error = f"Triton at {url} has not been probed yet"
        self._failures = 0
        self._models: dict[str, tuple[str, str]] = {}
        self._info: dict[str, _ModelInfo] = {}
        self._preset = ""
        self._capacity: int | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (lazily: Triton may come up later), probe once, and start the health watcher."""
        grpcclient = require("tritonclient.grpc")
        self._errors = require("tritonclient.utils").InferenceServerException
        self._client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
        self.refresh()
        if not self._healthy:
            logger.warning("Triton at %s is not serving yet (%s); health stays NOT_SERVING until it is",
                           self.url, self._last_error)
        self._watcher = threading.Thread(target=self._watch, name="triton-health", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop the watcher and close the channel."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=self._interval_s + self._probe_timeout_s + 1.0)
        if self._client is not None:
            self._client.close()

    def _watch(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.refresh()
            except Exception:  # the watcher must survive anything; the next probe tries again
                logger.exception("Triton health probe failed unexpectedly")

    # --- health ------------------------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Probe Triton now: liveness and the repository index; returns (and publishes) whether it can serve."""
        try:
            live = self._client.is_server_live(client_timeout=self._probe_timeout_s)
            index = self._client.get_model_repository_index(as_json=True, client_timeout=self._probe_timeout_s)
        except self._errors as exc:
            self._probe_failed(_status_name(exc), exc.message() if hasattr(exc, "message") else str(exc))
            return False
        if not live:
            self._probe_failed("UNAVAILABLE", "Triton is not live")
            return False
        models = {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in index.get("models", [])}
        prefix = PIPELINE_MODEL_PREFIX
        any_ready = any(name.startswith(prefix) and state == READY for name, (state, _) in models.items())
        with self._lock:
            self._models = models
            self._failures = 0
            self._info = {k: v for k, v in self._info.items() if models.get(k, ("",))[0] == READY}
        if any_ready:
            self._set_state(reachable=True, healthy=True, reason="")
            self._refresh_capacity()
        else:
            self._set_state(reachable=True, healthy=False,
                            reason=f"no {prefix}* model is READY in Triton at {self.url}")
        return any_ready

    def _probe_failed(self, code: str, message: str) -> None:
        with self._lock:
            self._failures += 1
            failures = self._failures
        if code == "UNAVAILABLE" or failures >= PROBE_FAILURES_BEFORE_DOWN:
            self._set_down(f"{code or 'error'}: {message}")

    def _set_down(self, why: str) -> None:
        self._set_state(reachable=False, healthy=False, reason=f"Triton at {self.url} is unreachable ({why})")

    def _set_state(self, *, reachable: bool, healthy: bool, reason: str) -> None:
        with self._lock:
            changed = healthy != self._healthy
            self._healthy = healthy
            self._reachable = reachable
            self._last_error = reason
            if not reachable:
                self._info.clear()  # Triton may come back with another repository
        if changed:
            if healthy:
                logger.info("Triton at %s is serving", self.url)
            else:
                logger.warning("gateway NOT_SERVING: %s", reason)
            self._notify_health(healthy)

    def healthy(self) -> bool:  # noqa: D102
        return self._healthy

    def capacity(self) -> int | None:
        """The default variant's ``ldm_<variant>`` instances (None until Triton served its config once)."""
        return self._capacity

    def _refresh_capacity(self) -> None:
        try:
            variant = self.default_variant()
            info = self._fetch_info(triton_model_name(PIPELINE_MODEL_PREFIX, variant))
        except Exception as exc:  # keep the last known capacity; the next probe tries again
            logger.debug("cannot read the capacity of Triton's pipeline model: %s", exc)
            return
        if info.instances != self._capacity:
            logger.info("Triton runs %d generations of %s at once: the gateway's capacity", info.instances, variant)
        self._capacity = info.instances

    def unavailable_reason(self) -> str:  # noqa: D102
        return "" if self._healthy else self._last_error

    def internal_addresses(self) -> list[str]:
        """Triton's address (``triton:8001`` names no IP, so only this says it is an address)."""
        return [self.url]

    def _require_up(self) -> None:
        if not self._reachable:
            raise BackendUnavailableError(self._last_error, started=False)

    # --- variants ----------------------------------------------------------------------------------------------
    def model_name(self) -> str:
        """The preset of Triton's models (from an ``ldm_*`` config), or "" while none could be asked."""
        if not self._preset and self._healthy:
            try:
                self._model_info(triton_model_name(PIPELINE_MODEL_PREFIX, self.default_variant()))
            except Exception as exc:  # only a label: a failure here must not fail ListVariants
                logger.debug("cannot read the preset from Triton: %s", exc)
        return self._preset

    def known_variants(self) -> list[str]:  # noqa: D102
        return variant_names()

    def variant_status(self, name: str) -> VariantStatus:  # noqa: D102
        variant = get_variant(name)
        self._require_up()
        model = triton_model_name(PIPELINE_MODEL_PREFIX, name)
        state, reason = self._models.get(model, ("", ""))
        row = {"name": name, "backend": variant.backend, "precision": variant.precision}
        if not state:
            return VariantStatus(available=False, reason=f"Triton at {self.url} has no {model} model (export it: "
                                 f"edgediff export --variants {name})", **row)
        if state != READY:
            return VariantStatus(available=False, reason=f"{model} is {state} in Triton: {reason or 'not loaded'}",
                                 **row)
        return VariantStatus(available=True, **row)

    def default_variant(self) -> str:  # noqa: D102
        if self._default is not None:
            return self._default
        self._require_up()
        for name in variant_names():
            if self._models.get(triton_model_name(PIPELINE_MODEL_PREFIX, name), ("",))[0] == READY:
                return name
        raise VariantUnavailableError(f"no {PIPELINE_MODEL_PREFIX}* model is READY in Triton at {self.url}; "
                                      "export one with 'edgediff export' and restart Triton")

    def _model_info(self, model: str) -> _ModelInfo:
        try:
            return self._fetch_info(model)
        except self._errors as exc:
            raise self._translate(exc, model) from None

    def _fetch_info(self, model: str) -> _ModelInfo:
        """``model``'s info, cached while it stays READY; raises tritonclient's errors as they are."""
        with self._lock:
            info = self._info.get(model)
        if info is not None:
            return info
        timeout_s = self._probe_timeout_s
        info = _ModelInfo(self._client.get_model_metadata(model, as_json=True, client_timeout=timeout_s),
                          self._client.get_model_config(model, as_json=True, client_timeout=timeout_s))
        with self._lock:
            self._info[model] = info
            self._preset = info.parameters.get("preset", self._preset)
        return info

    # --- generation --------------------------------------------------------------------------------------------
    def _translate(self, exc: Any, model: str, *, sent: bool = False) -> Exception:
        """A tritonclient error as the exception the servicer maps to a status.

        Args:
            exc: The tritonclient error.
            model: The Triton model asked.
            sent: Whether the inference request may have reached Triton (False: metadata calls, or a connection
                that was never made); unsent requests are held by the gateway until Triton is back.
        """
        code = _status_name(exc)
        message = exc.message() if hasattr(exc, "message") else str(exc)
        if code == "UNAVAILABLE" and not self.refresh() and not self._reachable:
            started = sent and not never_connected(message)
            return BackendUnavailableError(f"Triton at {self.url} is unreachable: {message}", started=started)
        if code in ("DEADLINE_EXCEEDED", "CANCELLED"):
            return GenerationCancelled(f"{model}: {message}")
        if code == "INVALID_ARGUMENT":
            return InvalidArgumentError(f"{model}: {message}")
        if code in ("NOT_FOUND", "UNAVAILABLE", "FAILED_PRECONDITION"):
            return VariantUnavailableError(f"{model} cannot run in Triton: {message}")
        return RuntimeError(f"Triton {model} failed ({code or 'error'}): {message}")

    def _inputs(self, info: _ModelInfo, args: GenerateArgs) -> list[Any]:
        grpcclient = require("tritonclient.grpc")
        from tritonclient.utils import triton_to_np_dtype

        values = {LDM_INPUT_SEED: args.seed, LDM_INPUT_STEPS: args.steps, LDM_INPUT_ETA: args.eta,
                  LDM_INPUT_BATCH: args.batch, LDM_INPUT_SCHEDULER: args.scheduler}
        if args.scheduler != "ddim" and LDM_INPUT_SCHEDULER not in info.inputs:
            raise VariantUnavailableError(f"ldm_{args.variant} has no {LDM_INPUT_SCHEDULER} input (exported before "
                                          f"schedulers existed): re-export it to serve scheduler {args.scheduler}")
        inputs = []
        for name, value in values.items():
            if name not in info.inputs:
                continue  # optional input the model does not declare
            datatype, shape = info.inputs[name]
            tensor = grpcclient.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(np.full(shape, value, dtype=triton_to_np_dtype(datatype)))
            inputs.append(tensor)
        return inputs

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        """One ``ldm_<variant>`` inference; cancelled when ``should_stop`` turns true."""
        grpcclient = require("tritonclient.grpc")
        self._require_up()
        model = triton_model_name(PIPELINE_MODEL_PREFIX, args.variant)
        info = self._model_info(model)
        outputs = [grpcclient.InferRequestedOutput(LDM_OUTPUT_IMAGE),
                   grpcclient.InferRequestedOutput(LDM_OUTPUT_TIMINGS)]
        done = threading.Event()
        box: dict[str, Any] = {}

        def on_done(result: Any, error: Any) -> None:
            box["result"], box["error"] = result, error
            done.set()

        try:
            call = self._client.async_infer(model, self._inputs(info, args), on_done, outputs=outputs,
                                            client_timeout=timeout_s)
        except self._errors as exc:
            raise self._translate(exc, model) from None
        while not done.wait(POLL_S):
            if should_stop():
                call.cancel()
                raise GenerationCancelled(f"{model}: cancelled (client gone or deadline passed)")
        if box["error"] is not None:
            raise self._translate(box["error"], model, sent=True)
        result = box["result"]
        images = result.as_numpy(LDM_OUTPUT_IMAGE)
        images = images.reshape(-1, *images.shape[-3:])
        timings = dict(zip(LDM_TIMINGS_FIELDS, result.as_numpy(LDM_OUTPUT_TIMINGS).reshape(-1).tolist(),
                           strict=True))
        metadata = run_metadata(info.png_base(), steps=args.steps, eta=args.eta, seed=args.seed, batch=args.batch,
                                scheduler=args.scheduler)
        return BackendResult(
            images=[encode_png(np.ascontiguousarray(image), metadata) for image in images],
            denoise_s=float(timings["denoise_s"]),
            decode_s=float(timings["decode_s"]),
            total_s=float(timings["total_s"]),
            weights_origin=info.weights_label(),
            model=info.parameters.get("preset", ""),
        )
