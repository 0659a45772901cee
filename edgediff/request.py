"""One generation request, validated once where it enters the program.

``GenerationRequest.validated`` checks untrusted values (a CLI's flags, a gRPC ``GenerateRequest``, the input tensors
of Triton's pipeline model) and returns a frozen request that the rest of the program trusts: ``LDMPipeline``, the
gateway's backends and the bench runner do not check it again. The ranges live here, so the load test's request mix
and the CLI's help texts use the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edgediff.errors import InvalidArgumentError

MAX_STEPS = 1000
"""Largest number of DDIM steps."""
MAX_BATCH = 64
"""Largest batch a pipeline call accepts (a server may accept fewer: its ``--max-batch``)."""
SEED_MAX = 2**63 - 1
"""Largest seed (torch's generator takes a signed 64-bit seed)."""
ETA_MIN = 0.0
ETA_MAX = 1.0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationRequest:
    """A checked generation request: build it with ``validated``, then pass its values on without checking again.

    Attributes:
        seed: Seeds the initial noise (and the DDIM noise when ``eta > 0``), 0..``SEED_MAX``.
        steps: DDIM steps, 1..``MAX_STEPS``.
        eta: DDIM eta, 0 (deterministic DDIM) .. 1 (DDPM-like).
        batch: Images per call, 1..the entry point's ``max_batch``.
    """

    seed: int
    steps: int
    eta: float
    batch: int

    @classmethod
    def validated(
        cls,
        *,
        seed: Any,
        steps: Any,
        eta: Any,
        batch: Any,
        max_batch: int = MAX_BATCH,
        names: Mapping[str, str] | None = None,
    ) -> GenerationRequest:
        """Check untrusted values before any work and return the request.

        Args:
            seed: The seed received.
            steps: The DDIM steps received.
            eta: The DDIM eta received (an int or a float).
            batch: The images per call received.
            max_batch: The largest batch this entry point accepts (1..``MAX_BATCH``).
            names: How the entry point calls each field in messages (e.g. ``{"batch": "batch_size"}`` for gRPC,
                ``{"steps": "--steps"}``); a field not listed is called by its own name.

        Raises:
            InvalidArgumentError: A value is out of range; the message names the field, the value and the range.
        """
        label = {"seed": "seed", "steps": "steps", "eta": "eta", "batch": "batch", **(names or {})}
        if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
            raise InvalidArgumentError(f"{label['steps']} must be an integer in 1..{MAX_STEPS}, got {steps!r}")
        if not isinstance(eta, int | float) or isinstance(eta, bool) or not math.isfinite(eta) \
                or not ETA_MIN <= eta <= ETA_MAX:
            raise InvalidArgumentError(f"{label['eta']} must be a number in {ETA_MIN:g}..{ETA_MAX:g}, got {eta!r}")
        if not _is_int(batch) or not 1 <= batch <= max_batch:
            raise InvalidArgumentError(f"{label['batch']} must be an integer in 1..{max_batch}, got {batch!r}")
        if not _is_int(seed) or not 0 <= seed <= SEED_MAX:
            raise InvalidArgumentError(f"{label['seed']} must be an integer in 0..2^63-1, got {seed!r}")
        return cls(seed=seed, steps=steps, eta=float(eta), batch=batch)
