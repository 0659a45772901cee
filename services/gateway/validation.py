"""``GenerateRequest`` -> ``GenerateArgs``: defaults applied, every field checked before any work.

The gateway is where a gRPC request enters: it is checked here once, into the core's ``GenerationRequest`` (whose
ranges the whole program shares), and the backends trust what they are given. Each message names the request field,
the value received and the allowed range. Unknown variants are INVALID_ARGUMENT; known ones the backend cannot run raise
``VariantUnavailableError`` (FAILED_PRECONDITION) with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgediff.errors import InvalidArgumentError, VariantUnavailableError
from edgediff.request import MAX_BATCH, GenerationRequest
from edgediff.schedulers import DDIM, check_scheduler
from services.gateway.backends.base import Backend, GenerateArgs

DEFAULT_STEPS = 20
"""Steps used when a request sends 0 (the study's setting)."""
DEFAULT_BATCH = 1
FORMAT_PNG = "png"
FORMATS = (FORMAT_PNG,)
FIELD_NAMES = {"batch": "batch_size (0 means 1)"}
"""The ``GenerateRequest`` fields' names in messages, where they differ from ``GenerationRequest``'s."""


def wire_float(value: float) -> float:
    """The decimal a client meant by a float32 field: ``0.3f`` arrives as 0.30000001192...; this returns 0.3.

    The shortest decimal that round-trips in float32 is what the client typed, so ``eta=0.3`` over gRPC runs the
    same float64 eta as ``edgediff generate --eta 0.3`` (same images, same PNG metadata).
    """
    return float(str(np.float32(value)))


def _short(value: Any, limit: int = 64) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


NAMES_IN_MESSAGES = 8
"""Names an error message lists before it refers to ``ListVariants`` (the registry keeps growing)."""


def _names(names: Sequence[str]) -> str:
    if len(names) <= NAMES_IN_MESSAGES:
        return ", ".join(names)
    return f"{', '.join(names[:NAMES_IN_MESSAGES])}, ... ({len(names)} in all: ListVariants lists them)"


def validate_generate(request: Any, backend: Backend, *, max_batch: int) -> GenerateArgs:
    """Check a ``GenerateRequest`` and apply the defaults (steps 0 -> 20, batch 0 -> 1, variant "" -> the server's).

    Args:
        request: An ``edgediff.v1.GenerateRequest``.
        backend: Answers which variants exist and which can run.
        max_batch: The server's largest ``batch_size``.

    Raises:
        InvalidArgumentError: a field is out of range, the format is not png, or the variant is unknown.
        VariantUnavailableError: the variant exists but this server cannot run it (the reason is in the message).
        BackendUnavailableError: the backend cannot be asked which variants run (Triton down).
    """
    default_scheduler, default_steps = getattr(backend, "default_sampler", (DDIM, DEFAULT_STEPS))
    checked = GenerationRequest.validated(
        seed=int(request.seed),
        steps=int(request.steps) or default_steps,
        eta=wire_float(request.eta),
        batch=int(request.batch_size) or DEFAULT_BATCH,
        max_batch=max_batch,
        names=FIELD_NAMES,
    )
    scheduler = check_scheduler(getattr(request, "scheduler", "").strip() or default_scheduler, eta=checked.eta,
                                field="scheduler")
    fmt = request.format.strip().lower() or FORMAT_PNG
    if fmt not in FORMATS:
        raise InvalidArgumentError(
            f"format must be one of {', '.join(FORMATS)} (empty means png), got {_short(request.format)}"
        )
    variant = request.variant.strip() or backend.default_variant()
    if variant:  # "" stays "": a fleet router lets each upstream use its own default
        known = backend.known_variants()
        if variant not in known:
            raise InvalidArgumentError(f"variant must be one of {_names(known)} (empty means the server's default), "
                                       f"got {_short(request.variant)}")
        status = backend.variant_status(variant)
        if not status.available:
            raise VariantUnavailableError(f"variant {variant} is unavailable on this server: {status.reason}")
    return GenerateArgs(seed=checked.seed, steps=checked.steps, eta=checked.eta, variant=variant, batch=checked.batch,
                        format=fmt, scheduler=scheduler)


def check_max_batch(max_batch: int) -> None:
    """The server's ``--max-batch`` must be in 1..``MAX_BATCH``."""
    if not 1 <= max_batch <= MAX_BATCH:
        raise InvalidArgumentError(f"--max-batch must be in 1..{MAX_BATCH}, got {max_batch}")
