"""The samplers a pipeline can use: diffusers' DDIM, DPM-Solver++ (multistep) and UniPC, over one model config.

Every preset ships a ``DDIMScheduler`` config (betas, training steps); the other samplers are built from the same
config with ``from_config``, so they integrate the same noise schedule, only with fewer network evaluations for the
same quality. The math stays in diffusers; this module only names the choices and checks them:

- ``ddim``: ``DDIMScheduler``, the study's sampler (``eta`` in 0..1).
- ``dpmpp``: ``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"``, ``solver_order=2`` (the
  setting the DPM-Solver++ paper recommends for unconditional sampling at 10-20 steps), ``lower_order_final``.
- ``unipc``: ``UniPCMultistepScheduler`` (``bh2``, ``solver_order=2``, ``lower_order_final``).

Both multistep solvers step through Karras et al.'s noise levels (``use_karras_sigmas``: denser near the end of the
trajectory, where the few-step solvers lose most). On the trained digits model (64 images, gate limit 199.6 against
torch-fp32 DDIM-20's 181.45; 2026-12-03, ``benchmarks/sampler_settings.py``) it made 5 steps enough: torch-fp32 with
UniPC at 5 / 6 steps 192.21 / 185.00 without, 181.25 / 173.54 with; ``openvino-int8`` 213.90 / 207.02 (both FAILED)
without, 189.46 / 178.78 with. 4 steps fail for ``openvino-int8`` with every setting tried; solver order 3, UniPC's
``bh1`` and "trailing" timesteps did not help (``docs/quality.md``).

The multistep solvers are deterministic ODE samplers: ``eta`` must be 0 for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from edgediff.errors import InvalidArgumentError

DDIM = "ddim"
DPMPP = "dpmpp"
UNIPC = "unipc"
SCHEDULERS = (DDIM, DPMPP, UNIPC)
"""Scheduler names, in the order CLIs list them."""
DEFAULT_SCHEDULER = DDIM

_SETTINGS: dict[str, dict[str, Any]] = {
    DDIM: {},
    DPMPP: {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True, "use_karras_sigmas": True},
    UNIPC: {"solver_type": "bh2", "solver_order": 2, "lower_order_final": True, "use_karras_sigmas": True},
}
"""Keyword arguments each sampler adds to the preset's config (part of what a tune profile records)."""


def check_scheduler(name: str | None, *, eta: float = 0.0, field: str = "--scheduler") -> str:
    """The scheduler called ``name`` (None or "" -> ``ddim``), checked against ``eta``.

    Args:
        name: ``ddim``, ``dpmpp`` or ``unipc`` (case-insensitive, surrounding spaces ignored).
        eta: The request's DDIM eta; only ``ddim`` accepts a non-zero one.
        field: How the caller names the option in error messages (``--scheduler``, ``scheduler``).

    Raises:
        InvalidArgumentError: unknown name, or ``eta > 0`` with a multistep solver.
    """
    key = (name or DEFAULT_SCHEDULER).strip().lower() or DEFAULT_SCHEDULER
    if key not in SCHEDULERS:
        raise InvalidArgumentError(f"{field} must be one of {', '.join(SCHEDULERS)} (empty means {DEFAULT_SCHEDULER}), "
                                   f"got {name!r}")
    if key != DDIM and eta:
        raise InvalidArgumentError(f"eta must be 0 with {field} {key} (a deterministic multistep solver); got {eta!r}; "
                                   f"use {field} ddim for eta > 0")
    return key


def scheduler_settings(name: str) -> dict[str, Any]:
    """The keyword arguments ``name`` adds to the model's scheduler config."""
    return dict(_SETTINGS[check_scheduler(name)])


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    """A fresh diffusers scheduler ``name`` over the preset's ``DDIMScheduler`` config (one per generation)."""
    key = check_scheduler(name)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with _diffusers_without_scipy() as diffusers:
        return getattr(diffusers, _CLASS_NAMES[key]).from_config({**config, **_SETTINGS[key]})


_CLASS_NAMES = {DDIM: "DDIMScheduler", DPMPP: "DPMSolverMultistepScheduler", UNIPC: "UniPCMultistepScheduler"}


@contextlib.contextmanager
def _diffusers_without_scipy() -> Iterator[Any]:
    """``diffusers``, with scheduler modules imported meanwhile as if scipy were not installed.

    diffusers' multistep scheduler modules import ``scipy.stats`` (54 MB resident, measured in celebahq-256's
    processes) only for the optional beta sigmas, which no sampler here uses; ``from_config`` imports every
    scheduler module that its class lists as compatible. Inside the block diffusers' scipy flag reads False; it is
    restored after, so what needs scipy later (the quality metrics) still has it.
    """
    import diffusers
    from diffusers.utils import import_utils

    scipy_flag = import_utils._scipy_available
    import_utils._scipy_available = False
    try:
        yield diffusers
    finally:
        import_utils._scipy_available = scipy_flag


def step_kwargs(name: str, *, eta: float, generator: Any) -> dict[str, Any]:
    """The extra keyword arguments of ``scheduler.step`` for ``name`` (DDIM takes eta and the generator)."""
    if check_scheduler(name, eta=eta) == DDIM:
        return {"eta": eta, "generator": generator}
    return {}


ROW_SEPARATOR = "@"


def split_row(row: str) -> tuple[str, str | None, int | None]:
    """A bench row ``VARIANT[@SCHEDULER[:STEPS]]`` -> ``(variant, scheduler or None, steps or None)``.

    ``openvino-fp32-dc3@dpmpp:10`` runs that variant with DPM-Solver++ at 10 steps in a bench whose other rows (and
    whose baseline) use the bench's ``--scheduler`` and ``--steps``: speed at equal quality, in one run.

    Raises:
        InvalidArgumentError: an unknown scheduler or steps that are not a positive integer.
    """
    variant, sep, sampler = row.partition(ROW_SEPARATOR)
    if not sep:
        return row, None, None
    name, colon, steps_text = sampler.partition(":")
    scheduler = check_scheduler(name, field=f"--variants {row}: scheduler")
    if not colon:
        return variant, scheduler, None
    if not steps_text.isdigit() or int(steps_text) < 1:
        raise InvalidArgumentError(f"--variants {row}: steps after ':' must be a positive integer, got {steps_text!r}")
    return variant, scheduler, int(steps_text)


def row_name(variant: str, scheduler: str | None = None, steps: int | None = None) -> str:
    """Inverse of ``split_row``: ``variant``, ``variant@scheduler`` or ``variant@scheduler:steps``."""
    if scheduler is None:
        return variant
    return f"{variant}{ROW_SEPARATOR}{scheduler}" + (f":{steps}" if steps is not None else "")
