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
from edgediff.request import MAX_BATCH, MAX_STEPS, GenerationRequest
from edgediff.schedulers import DDIM, check_scheduler
from services.gateway.backends.base import Backend, GenerateArgs

DEFAULT_STEPS = 20
"""Steps used when a request sends 0 (the study's setting)."""
DEFAULT_MAX_STEPS = 250
"""Default ``--max-steps``: a request's cost grows with its steps; the study uses 20, DDIM's quality stops improving
long before 250, and 1000 steps of celebahq-256 would hold a phone's only slot for half an hour."""
MAX_FIELD_CHARS = 64
"""Longest text field (variant, scheduler, format) worth reading: every valid value is far shorter."""
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


def _text_field(request: Any, name: str) -> str:
    """``request.name`` stripped; INVALID_ARGUMENT (with the value shortened) when longer than any valid value."""
    value = getattr(request, name, "").strip()
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidArgumentError(f"{name} must be at most {MAX_FIELD_CHARS} characters, got {len(value)}: "
                                   f"{_short(value)}")
    return value


def validate_generate(request: Any, backend: Backend, *, max_batch: int, max_steps: int = MAX_STEPS
                      ) -> GenerateArgs:
    """Check a ``GenerateRequest`` and apply the defaults (steps 0 -> 20, batch 0 -> 1, variant "" -> the server's).

    Args:
        request: An ``edgediff.v1.GenerateRequest``.
        backend: Answers which variants exist and which can run.
        max_batch: The server's largest ``batch_size``.
        max_steps: The server's largest ``steps`` (``--max-steps``).

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
    if checked.steps > max_steps:
        raise InvalidArgumentError(f"steps must be in 1..{max_steps} on this server (0 means {default_steps}), "
                                   f"got {checked.steps}")
    scheduler = check_scheduler(_text_field(request, "scheduler") or default_scheduler, eta=checked.eta,
                                field="scheduler")
    fmt = _text_field(request, "format").lower() or FORMAT_PNG
    if fmt not in FORMATS:
        raise InvalidArgumentError(
            f"format must be one of {', '.join(FORMATS)} (empty means png), got {_short(request.format)}"
        )
    variant = _text_field(request, "variant") or backend.default_variant()
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


def check_max_steps(max_steps: int) -> None:
    """The server's ``--max-steps`` must be in 1..``MAX_STEPS``."""
    if not 1 <= max_steps <= MAX_STEPS:
        raise InvalidArgumentError(f"--max-steps must be in 1..{MAX_STEPS}, got {max_steps}")
