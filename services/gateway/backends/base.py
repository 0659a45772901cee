"""The interface every gateway backend implements, and what a generation returns.

A backend knows which variants it can run and runs one validated request at a time per call; the gateway around it
does validation, admission (concurrency + queue), deadlines, auth and metrics. Errors a backend raises map to gRPC
status codes in the servicer: ``BackendUnavailableError`` -> UNAVAILABLE, ``VariantUnavailableError`` ->
FAILED_PRECONDITION, ``GenerationCancelled`` -> DEADLINE_EXCEEDED or CANCELLED.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgediff.errors import EdgediffError


class BackendUnavailableError(EdgediffError):
    """The backend cannot be reached right now (Triton down); the request may succeed later.

    Args:
        message: What happened.
        started: Whether the work may have started on the backend (sent to it). Requests whose work had not
            started are held by the gateway until the backend is back; started ones fail with UNAVAILABLE.
    """

    def __init__(self, message: str, *, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


@dataclass(frozen=True)
class VariantStatus:
    """One variant as a backend sees it.

    Attributes:
        name: Registry name (``torch-fp32``).
        available: Whether this backend can run it now.
        reason: Why not, when unavailable.
        backend: The variant's backend family (``torch``, ``onnx``...).
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``.
        upstreams: Fleet router only: the upstream gateways that run it now.
    """

    name: str
    available: bool
    reason: str = ""
    backend: str = ""
    precision: str = ""
    upstreams: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateArgs:
    """A validated generation request (defaults already applied).

    Attributes:
        seed: Seed of the initial noise, 0..2^63-1.
        steps: DDIM steps, 1..1000.
        eta: DDIM eta, 0..1 (the float32 wire value turned back into the decimal the client sent).
        variant: A registry variant this backend can run.
        batch: Images per request, 1..the server's max batch.
        format: Image encoding; only ``png``.
        scheduler: The sampler (``ddim``, ``dpmpp``, ``unipc``: ``edgediff.schedulers``).
    """

    seed: int
    steps: int
    eta: float
    variant: str
    batch: int
    format: str = "png"
    scheduler: str = "ddim"


@dataclass
class BackendResult:
    """What a backend produced for one request.

    Attributes:
        images: One PNG (with edgediff metadata text chunks) per image.
        denoise_s: The DDIM loop, seconds.
        decode_s: The VQ decoder, seconds.
        total_s: The backend's own total (noise to uint8 images), seconds.
        weights_origin: The weights' public label (``public_weights_label``): kind, name, preset and sha256
            prefix, never a local path (``synthetic weights for tiny (seed 0, sha256 1a2b3c4d5e6f)``).
        model: The model preset name.
        upstream: Fleet router only: the upstream gateway that generated it.
        variant: The variant that ran, when the request left it to the backend (a fleet upstream's default).
    """

    images: list[bytes]
    denoise_s: float
    decode_s: float
    total_s: float
    weights_origin: str
    model: str
    upstream: str = ""
    variant: str = ""


def public_weights_label(preset: str, kind: str, sha256: str, *, name: str = "", seed: int | None = None) -> str:
    """The weights as a client may see them: preset, kind, name and sha256 prefix, never a local path.

    Args:
        preset: The model preset (``tiny``).
        kind: ``synthetic``, ``directory`` or ``bundled`` (anything else becomes ``unknown``).
        sha256: The weights' hash (only its first 12 hex digits are sent).
        name: The weights' name (the folder's last component), if known.
        seed: The seed of synthetic weights.

    Returns:
        e.g. ``synthetic weights for tiny (seed 0, sha256 1a2b3c4d5e6f)`` or
        ``directory weights 'ldm-celebahq' for celebahq-256 (sha256 1a2b3c4d5e6f)``: it starts with the kind.
    """
    kind = kind if kind in ("synthetic", "directory", "bundled") else "unknown"
    details = [f"seed {seed}"] if seed is not None else []
    if sha256:
        details.append(f"sha256 {sha256[:12]}")
    named = f" {name!r}" if name else ""
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{kind} weights{named} for {preset or 'an unknown preset'}{suffix}"


HealthListener = Callable[[bool], None]


class Backend(abc.ABC):
    """Runs validated requests for the gateway.

    Attributes:
        name: ``local`` or ``triton`` (shown in ``ListVariants``).
    """

    name: str
    default_sampler: tuple[str, int] = ("ddim", 20)
    """``(scheduler, steps)`` for requests that leave them empty (a tune profile sets them: ``edgediff serve``)."""

    def __init__(self) -> None:
        self._listeners: list[HealthListener] = []
        self._listeners_lock = threading.Lock()

    def start(self) -> None:  # noqa: B027 - optional hook
        """Load models, connect, start watchers (called once before serving)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop watchers and release resources."""

    def register_metrics(self, registry: Any) -> None:  # noqa: B027 - optional hook
        """Register the backend's own metrics in the gateway's ``prometheus_client`` registry."""

    @abc.abstractmethod
    def model_name(self) -> str:
        """The model preset served (``celebahq-256``, ``tiny``)."""

    @abc.abstractmethod
    def known_variants(self) -> list[str]:
        """Every variant name this backend knows (the registry's names); others are INVALID_ARGUMENT."""

    @abc.abstractmethod
    def variant_status(self, name: str) -> VariantStatus:
        """Status of one known variant.

        Raises:
            BackendUnavailableError: the backend cannot be asked right now.
        """

    def variants(self) -> list[VariantStatus]:
        """Status of every known variant (never raises: unreachable backends report unavailable rows)."""
        rows = []
        for name in self.known_variants():
            try:
                rows.append(self.variant_status(name))
            except BackendUnavailableError as exc:
                rows.append(VariantStatus(name=name, available=False, reason=str(exc)))
        return rows

    @abc.abstractmethod
    def default_variant(self) -> str:
        """The variant used when a request leaves ``variant`` empty.

        Raises:
            BackendUnavailableError: it cannot be determined right now.
            VariantUnavailableError: no variant can run.
        """

    @abc.abstractmethod
    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        """Run one request.

        Args:
            args: The validated request.
            should_stop: Polled while working; True means the client is gone or its deadline passed.
            timeout_s: Seconds left before the client's deadline, or None.

        Raises:
            GenerationCancelled: ``should_stop`` became true (work was cancelled where possible).
            BackendUnavailableError: the backend went away.
            VariantUnavailableError: the variant cannot run.
        """

    @abc.abstractmethod
    def healthy(self) -> bool:
        """Whether the backend can serve now."""

    def capacity(self) -> int | None:
        """Generations this backend runs at once with gain: the gateway's default ``--max-concurrency``.

        Called at every admission: return a cached value, never block. None while the backend cannot tell (the
        gateway then admits one at a time). The default, 1, suits a backend that gives one generation every core
        (the local one: a second generation would only take cores from the first).
        """
        return 1

    def unavailable_reason(self) -> str:
        """Why the backend is not serving (empty when it is, or when it cannot say)."""
        return ""

    def internal_addresses(self) -> list[str]:
        """Addresses behind the gateway (Triton's, the upstreams'): messages to clients never show them."""
        return []

    def add_health_listener(self, listener: HealthListener) -> None:
        """Call ``listener(healthy)`` whenever the backend's health changes (from the backend's threads)."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def _notify_health(self, healthy: bool) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(healthy)
