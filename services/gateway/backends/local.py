"""The ``local`` backend: the pipeline in-process with the core registry (the phone service: CPU, plain PyTorch).

Variants are built lazily on first use and cached; only the chosen variant's runtime is imported, so a phone with
torch alone serves ``torch-fp32`` while ``onnx-*``/``openvino-*`` report why they are unavailable.

When no default variant is given and memory is short (``--max-memory``, else the machine's total RAM, below
``LOWMEM_BELOW_BYTES``), the default is this machine's tune profile for that memory budget (``edgediff tune
--max-memory``), else ``PHONE_VARIANT`` with UniPC 5: plain PyTorch with compact weights streamed layer by layer.
Its model is then loaded as a ``ModelSpec`` (the fp32 modules are never built; a variant that needs them loads them
on first use), and ListVariants says why it is the default.

What a client can make the backend hold is bounded: it builds only the variants the operator allowed
(``--allow-variants``; by default only the default variant: a client walking the registry would otherwise build one
pipeline after another until the phone runs out of memory), and keeps at most ``max_pipelines`` built pipelines,
dropping the least recently used one.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

from edgediff.bench.tune import budget_profile_defaults
from edgediff.errors import InvalidArgumentError, VariantUnavailableError
from edgediff.models import get_preset
from edgediff.models.spec import ModelSpec
from edgediff.models.weights import SYNTHETIC_WARNING
from edgediff.pipeline import LDMPipeline
from edgediff.schedulers import UNIPC
from edgediff.variants import (
    BASELINE,
    BuildOptions,
    build_variant,
    get_variant,
    load_model,
    require_available,
    variant_names,
)
from services.gateway.backends.base import (
    Backend,
    BackendResult,
    GenerateArgs,
    VariantStatus,
    public_weights_label,
)

logger = logging.getLogger(__name__)

PHONE_VARIANT = "torch-int8-lowmem"
"""The default when memory is short: passes the digits quality gate, under 0.5 GB peak for a celebahq-256 image."""
PHONE_SAMPLER = (UNIPC, 5)
"""``PHONE_VARIANT``'s scheduler and steps when no budget profile chose: UniPC at 5 steps (Karras sigmas) passes the
digits gate with it (benchmarks/RESULTS.md)."""
ALL_VARIANTS = "all"
"""``--allow-variants all``: every installed variant may be built on request."""
DEFAULT_MAX_PIPELINES = 2
"""Built pipelines kept in memory by default (the default variant and one more)."""
LOWMEM_BELOW_BYTES = 3 * 1024**3
"""Memory budget below which ``PHONE_VARIANT`` is the default: torch-fp32 needs about 2.2 GB for a celebahq-256
image (benchmarks/RESULTS.md), and a budget under 3 GiB leaves it no margin."""


def memory_budget(max_memory: int | None = None) -> tuple[int, str]:
    """``(bytes, where from)``: ``max_memory`` when given (``--max-memory``), else the machine's total RAM."""
    if max_memory is not None:
        return int(max_memory), "--max-memory"
    import psutil

    return int(psutil.virtual_memory().total), "total RAM"


def low_memory_defaults(model: str, max_memory: int | None = None) -> dict[str, Any] | None:
    """The defaults of a service whose memory is short: ``{"variant", "scheduler", "steps", "why"}``, or None.

    With ``--max-memory`` (or total RAM below ``LOWMEM_BELOW_BYTES``): the tune profile of the largest memory budget
    that fits (``edgediff tune --max-memory``) when this machine has one; else, below ``LOWMEM_BELOW_BYTES``,
    ``PHONE_VARIANT`` with ``PHONE_SAMPLER``. None when memory is not short and no budget was given.

    Args:
        model: The served preset (profiles are per model).
        max_memory: The service's memory budget in bytes, or None to use the machine's total RAM.
    """
    budget, source = memory_budget(max_memory)
    if max_memory is None and budget >= LOWMEM_BELOW_BYTES:
        return None
    profile = budget_profile_defaults(model, budget, warn=logger.warning)
    if profile is not None:
        return {**profile, "why": (f"default for {source} {budget / 1024**2:.0f} MiB: this machine's tune profile "
                                   f"for {profile['max_memory_mb']} MiB")}
    if budget < LOWMEM_BELOW_BYTES:
        return {"variant": PHONE_VARIANT, "scheduler": PHONE_SAMPLER[0], "steps": PHONE_SAMPLER[1],
                "why": (f"default because memory is short: {source} {budget / 1024**3:.2f} GiB < "
                        f"{LOWMEM_BELOW_BYTES / 1024**3:.0f} GiB")}
    return None


def choose_default_variant(max_memory: int | None = None, model: str = "celebahq-256") -> tuple[str, str]:
    """``(variant, why)``: the variant of ``low_memory_defaults`` when memory is short, else the baseline.

    Args:
        max_memory: The service's memory budget in bytes, or None to use the machine's total RAM.
        model: The served preset.
    """
    found = low_memory_defaults(model, max_memory)
    return (found["variant"], found["why"]) if found is not None else (BASELINE, "")


class LocalBackend(Backend):
    """Generates in this process.

    Args:
        model: Preset name (``celebahq-256``, ``tiny``).
        weights: Diffusers-format weights folder; None means ``$EDGEDIFF_WEIGHTS``, bundled, or synthetic.
        weights_seed: Seed of synthetic weights.
        default_variant: Variant for requests that leave it empty (checked available at ``start``).
        threads: Intra-op threads (None: ``$EDGEDIFF_THREADS`` or physical cores).
        preload: Build the default variant at ``start`` and run one 1-step warm-up, so the first request
            does not pay for either.
        max_memory: Memory budget in bytes (``--max-memory``); with no ``default_variant`` it (or the total RAM)
            chooses the default (``choose_default_variant``).
        allowed_variants: Variants requests may name (so get built); None: the default variant only;
            ``["all"]``: every installed one. The default variant is always allowed.
        max_pipelines: Built pipelines kept in memory; the least recently used one is dropped beyond it.
    """

    name = "local"

    def __init__(
        self,
        model: str = "celebahq-256",
        *,
        weights: str | None = None,
        weights_seed: int = 0,
        default_variant: str | None = None,
        threads: int | None = None,
        preload: bool = True,
        max_memory: int | None = None,
        allowed_variants: Sequence[str] | None = None,
        max_pipelines: int = DEFAULT_MAX_PIPELINES,
    ) -> None:
        super().__init__()
        self._preset = get_preset(model)
        self._weights = weights
        self._weights_seed = weights_seed
        if default_variant:
            self._default, self._default_reason = default_variant, ""
        else:
            self._default, self._default_reason = choose_default_variant(max_memory, model)
            if self._default_reason:
                logger.warning("default variant %s: %s", self._default, self._default_reason)
        self._options = BuildOptions(threads=threads)
        self._preload = preload
        self._allowed = _allowed_variants(allowed_variants, self._default)
        if max_pipelines < 1:
            raise InvalidArgumentError(f"--max-pipelines must be >= 1, got {max_pipelines}")
        self._max_pipelines = max_pipelines
        self._components: ModelSpec | None = None
        self._pipelines: OrderedDict[str, LDMPipeline] = OrderedDict()
        self._build_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Check the default variant, load the weights, and build and warm up the default variant when preloading."""
        require_available(self._default)
        # as the default variant needs it: the modules, or a spec alone for a low-memory one (no fp32 modules)
        self._components = load_model(self._preset.name, self._weights, seed=self._weights_seed,
                                      variant=self._default)
        if self._components.weights.synthetic:
            logger.warning(SYNTHETIC_WARNING.format(preset=self._preset.name))
        if self._preload:
            self._pipeline(self._default)(seed=0, steps=1, batch=1)  # warm-up: first-call allocations, lazy init

    @property
    def components(self) -> ModelSpec:
        """The loaded model (after ``start``): the modules, or a ``ModelSpec`` when the default is a low-memory one."""
        if self._components is None:
            raise RuntimeError("LocalBackend.start() was not called")
        return self._components

    def weights_label(self) -> str:
        """The weights as clients see them (``public_weights_label``: no local path)."""
        origin = self.components.weights
        name = PurePath(origin.path).name if origin.path else ""
        return public_weights_label(self._preset.name, origin.kind, origin.sha256, name=name, seed=origin.seed)

    def model_name(self) -> str:  # noqa: D102
        return self._preset.name

    def known_variants(self) -> list[str]:  # noqa: D102
        return variant_names()

    def variant_status(self, name: str) -> VariantStatus:  # noqa: D102
        variant = get_variant(name)
        avail = variant.availability()
        reason = avail.reason if not avail.ok else (self._default_reason if name == self._default else "")
        allowed = self._allowed is None or name in self._allowed
        if avail.ok and not allowed:
            reason = f"not served here: this server builds only {', '.join(sorted(self._allowed or ()))} " \
                     "(the operator's --allow-variants)"
        return VariantStatus(name=name, available=avail.ok and allowed, reason=reason, backend=variant.backend,
                             precision=variant.precision)

    def cached_variants(self) -> list[str]:
        """The variants whose pipelines are built and kept, least recently used first."""
        with self._lock:
            return list(self._pipelines)

    def default_variant(self) -> str:  # noqa: D102
        return self._default

    def healthy(self) -> bool:  # noqa: D102
        return self._components is not None

    def _pipeline(self, name: str) -> LDMPipeline:
        """The cached pipeline of ``name``, built once even when several requests ask at the same time."""
        with self._lock:
            if name in self._pipelines:
                self._pipelines.move_to_end(name)
                return self._pipelines[name]
            build_lock = self._build_locks.setdefault(name, threading.Lock())
        with build_lock:
            with self._lock:
                if name in self._pipelines:
                    self._pipelines.move_to_end(name)
                    return self._pipelines[name]
            logger.info("building variant %s for %s", name, self._preset.name)
            pipeline = build_variant(name, self.components, self._options).pipeline(self.components)
            with self._lock:
                self._pipelines[name] = pipeline
                while len(self._pipelines) > self._max_pipelines:  # a request still running one keeps its own
                    dropped, _ = self._pipelines.popitem(last=False)
                    logger.info("dropped the pipeline of %s (least recently used; --max-pipelines %d)", dropped,
                                self._max_pipelines)
            return pipeline

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        """Run the pipeline; ``should_stop`` is polled before every DDIM step and before decoding."""
        if self._allowed is not None and args.variant not in self._allowed:
            raise VariantUnavailableError(self.variant_status(args.variant).reason)
        pipeline = self._pipeline(args.variant)
        result = pipeline(seed=args.seed, steps=args.steps, eta=args.eta, batch=args.batch, should_stop=should_stop,
                          scheduler=args.scheduler)
        t = result.timings
        return BackendResult(
            images=[result.png_bytes(i) for i in range(args.batch)],
            denoise_s=t.denoise_s,
            decode_s=t.decode_s,
            total_s=t.total_s,
            weights_origin=self.weights_label(),
            model=self._preset.name,
        )


def _allowed_variants(names: Sequence[str] | None, default: str) -> frozenset[str] | None:
    """The set of variants requests may name (None: all), the default always among them.

    Raises:
        InvalidArgumentError: a name is not a known variant.
    """
    if names is not None and ALL_VARIANTS in names:
        return None
    known = set(variant_names())
    unknown = [n for n in names or () if n not in known]
    if unknown:
        raise InvalidArgumentError(f"--allow-variants: unknown variant {unknown[0]!r}; known: "
                                   f"{', '.join(sorted(known))} or {ALL_VARIANTS}")
    return frozenset([*(names or ()), default])
