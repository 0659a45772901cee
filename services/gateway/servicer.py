"""The ``edgediff.v1.Generator`` servicer: validate, admit, run on the backend, answer with PNGs and timings."""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from edgediff.errors import EdgediffError, InvalidArgumentError, VariantUnavailableError
from edgediff.pipeline import GenerationCancelled
from edgediff.request import MAX_STEPS
from services.gateway.admission import Admission, Admitted, BackendWaitExpiredError, QueueFullError
from services.gateway.backends.base import Backend, BackendResult, BackendUnavailableError, GenerateArgs
from services.gateway.metrics import GatewayMetrics
from services.gateway.redact import clip, for_client
from services.gateway.validation import validate_generate
from services.proto.edgediff.v1 import generator_pb2, generator_pb2_grpc

logger = logging.getLogger(__name__)

RETRY_PAUSE_S = 0.25
"""Pause before a request whose work never reached the backend queues again (counted as backend wait)."""


NO_DEADLINE_S = 1e7
"""``time_remaining()`` beyond this means the client set no deadline (gRPC reports a far-future one)."""


def remaining_s(context: grpc.ServicerContext) -> float | None:
    """Seconds before the client's deadline, or None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > NO_DEADLINE_S else max(0.0, float(remaining))


def _cancel_status(context: grpc.ServicerContext, server_deadline_s: float | None) -> tuple[grpc.StatusCode, str]:
    remaining = remaining_s(context)
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the client's deadline passed; the generation was cancelled"
    if server_deadline_s is not None and context.is_active():
        return grpc.StatusCode.DEADLINE_EXCEEDED, (f"the server's default deadline ({server_deadline_s:g} s, for "
                                                   "requests without one) passed; the generation was cancelled")
    return grpc.StatusCode.CANCELLED, "the client cancelled; the generation was stopped"


def status_of(exc: BaseException, context: grpc.ServicerContext, server_deadline_s: float | None = None
              ) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception raised while serving a request.

    Args:
        exc: What the request raised.
        context: The call's context (its deadline and whether the client is still there).
        server_deadline_s: The server's default deadline when the client set none and it has passed, else None.
    """
    if isinstance(exc, InvalidArgumentError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, VariantUnavailableError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, QueueFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, BackendUnavailableError):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, GenerationCancelled):
        return _cancel_status(context, server_deadline_s)
    if isinstance(exc, EdgediffError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"generation failed: {exc.__class__.__name__}: {exc}"


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    """Serves ``Generate`` and ``ListVariants`` over a backend.

    Args:
        backend: Runs validated requests.
        admission: Concurrency slots and the bounded queue.
        metrics: Where stage timings and image counts go.
        max_batch: The largest ``batch_size`` accepted.
        max_backend_wait_s: Seconds a request that has not started waits for the backend to serve again.
        max_steps: The largest ``steps`` accepted.
        default_deadline_s: Seconds a Generate whose client set no deadline may take (None: unbounded).
    """

    def __init__(self, backend: Backend, admission: Admission, metrics: GatewayMetrics, *, max_batch: int,
                 max_backend_wait_s: float = 0.0, max_steps: int = MAX_STEPS,
                 default_deadline_s: float | None = None) -> None:
        self.backend = backend
        self.admission = admission
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_backend_wait_s = max_backend_wait_s
        self.max_steps = max_steps
        self.default_deadline_s = default_deadline_s

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Generate ``batch_size`` PNGs; see the proto for the status codes.

        A request whose work has not started when the backend goes away (queued, or refused before it reached the
        backend) stays queued until the backend is healthy again, up to its deadline and at most
        ``max_backend_wait_s`` of downtime; only work that had started fails with UNAVAILABLE.
        """
        t_arrival = time.perf_counter()
        own_deadline = self.default_deadline_s if remaining_s(context) is None else None
        t_deadline = t_arrival + own_deadline if own_deadline is not None else None

        def should_stop() -> bool:
            remaining = remaining_s(context)
            return (not context.is_active() or (remaining is not None and remaining <= 0)
                    or (t_deadline is not None and time.perf_counter() >= t_deadline))

        result: BackendResult | None = None
        failure: tuple[grpc.StatusCode, str] | None = None
        waited = Admitted(0.0, 0.0)
        try:
            result, args, waited = self._generate(request, context, should_stop)
        except Exception as exc:  # every failure becomes a status; unexpected ones are logged with the traceback
            passed = t_deadline is not None and time.perf_counter() >= t_deadline
            failure = status_of(exc, context, own_deadline if passed else None)
            waited = getattr(exc, "admitted", waited)
            public = for_client(failure[1], self.backend.internal_addresses())
            if failure[0] == grpc.StatusCode.INTERNAL:
                logger.exception("Generate failed: %s", clip(failure[1]))
            elif failure[1] != public:
                logger.info("Generate answered %s: %s", failure[0].name, clip(failure[1]))
        if waited.backend_wait_s > 0:
            self.metrics.observe_backend_wait(waited.backend_wait_s, "OK" if failure is None else failure[0].name)
        if failure is not None:
            context.abort(failure[0], public)  # the log keeps paths and addresses, the client does not
        assert result is not None
        total_s = time.perf_counter() - t_arrival
        queue_s = waited.queue_s
        variant = result.variant or args.variant  # a fleet router's upstream chose its own default
        self.metrics.observe_generation(variant, len(result.images), {
            "queue": queue_s, "denoise": result.denoise_s, "decode": result.decode_s, "total": total_s,
        })
        timings = generator_pb2.Timings(queue_ms=queue_s * 1e3, denoise_ms=result.denoise_s * 1e3,
                                        decode_ms=result.decode_s * 1e3, total_ms=total_s * 1e3,
                                        backend_wait_ms=waited.backend_wait_s * 1e3)
        return generator_pb2.GenerateResponse(images=result.images, seed=args.seed, variant=variant,
                                              timings=timings, weights_origin=result.weights_origin,
                                              model=result.model, steps=args.steps, upstream=result.upstream)

    def _generate(self, request: Any, context: grpc.ServicerContext, should_stop: Any
                  ) -> tuple[BackendResult, GenerateArgs, Admitted]:
        """Validate, wait for a slot (and a healthy backend), run; retried while the work has not started."""
        budget_s = self.max_backend_wait_s
        hold = budget_s > 0
        args: GenerateArgs | None = None
        queue_s = backend_wait_s = 0.0
        try:
            try:
                args = validate_generate(request, self.backend, max_batch=self.max_batch, max_steps=self.max_steps)
            except BackendUnavailableError:
                if not hold:
                    raise
                # the fields are valid (they are checked first); the variant is checked once the backend is back
            retry = False
            while True:
                admitted = self.admission.admit(should_stop, ready=self.backend.healthy if hold else None,
                                                max_ready_wait_s=max(0.0, budget_s - backend_wait_s), front=retry)
                queue_s += admitted.queue_s
                backend_wait_s += admitted.backend_wait_s
                try:
                    if args is None:
                        args = validate_generate(request, self.backend, max_batch=self.max_batch,
                                                 max_steps=self.max_steps)
                    result = self.backend.generate(args, should_stop, timeout_s=remaining_s(context))
                    return result, args, Admitted(queue_s, backend_wait_s)
                except BackendUnavailableError as exc:
                    if not hold or exc.started or backend_wait_s >= budget_s or should_stop():
                        raise
                    logger.info("backend unavailable before the work started (%s); the request waits", exc)
                finally:
                    self.admission.release()
                time.sleep(RETRY_PAUSE_S)
                queue_s += RETRY_PAUSE_S
                backend_wait_s += RETRY_PAUSE_S
                retry = True
        except BackendUnavailableError as exc:
            reason = self.backend.unavailable_reason()
            if isinstance(exc, BackendWaitExpiredError):
                backend_wait_s += exc.waited_s
                if reason:
                    exc = BackendWaitExpiredError(f"{exc}; {reason}", exc.waited_s)
            exc.admitted = Admitted(queue_s, backend_wait_s)  # type: ignore[attr-defined]
            raise exc from None
        except Exception as exc:
            exc.admitted = Admitted(queue_s, backend_wait_s)  # type: ignore[attr-defined]
            raise

    def ListVariants(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Every variant the server knows, whether it can run, and why not."""
        try:
            default = self.backend.default_variant()
        except EdgediffError:
            default = ""
        rows = [
            generator_pb2.VariantInfo(name=v.name, available=v.available,
                                      reason=for_client(v.reason, self.backend.internal_addresses()),
                                      backend=v.backend,
                                      precision=v.precision, is_default=v.name == default,
                                      upstreams=list(v.upstreams))
            for v in self.backend.variants()
        ]
        return generator_pb2.ListVariantsResponse(variants=rows, model=self.backend.model_name(),
                                                  backend=self.backend.name)
