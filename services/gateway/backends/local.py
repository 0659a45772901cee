"""The ``local`` backend: the pipeline in-process with the core registry (the phone service: CPU, plain PyTorch).

Variants are built lazily on first use and cached; only the chosen variant's runtime is imported, so a phone with
torch alone serves ``torch-fp32`` while ``onnx-*``/``openvino-*`` report why they are unavailable.

When no default variant is given and memory is short (``--max-memory``, else the machine's total RAM, below
``LOWMEM_BELOW_BYTES``), the default is ``PHONE_VARIANT``: plain PyTorch with compact weights streamed layer by layer.
Its model is then loaded as a ``ModelSpec`` (the fp32 modules are never built; a variant that needs them loads them
on first use), and ListVariants says why it is the default.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import PurePath

from edgediff.models import get_preset, load_components
from edgediff.models.spec import ModelSpec
from edgediff.pipeline import LDMPipeline
from edgediff.variants import BASELINE, BuildOptions, build_variant, get_variant, require_available, variant_names
from edgediff.variants.base import Variant
from services.gateway.backends.base import (
    Backend,
    BackendResult,
    GenerateArgs,
    VariantStatus,
    public_weights_label,
)

logger = logging.getLogger(__name__)

PHONE_VARIANT = "torch-int8-lowmem"
"""The default when memory is short: passes the digits quality gate, about 0.6 GB peak for a celebahq-256 image."""
LOWMEM_BELOW_BYTES = 3 * 1024**3
"""Memory budget below which ``PHONE_VARIANT`` is the default: torch-fp32 needs about 2.2 GB for a celebahq-256
image (benchmarks/RESULTS.md), and a budget under 3 GiB leaves it no margin."""


def memory_budget(max_memory: int | None = None) -> tuple[int, str]:
    """``(bytes, where from)``: ``max_memory`` when given (``--max-memory``), else the machine's total RAM."""
    if max_memory is not None:
        return int(max_memory), "--max-memory"
    import psutil

    return int(psutil.virtual_memory().total), "total RAM"


def choose_default_variant(max_memory: int | None = None) -> tuple[str, str]:
    """``(variant, why)``: ``PHONE_VARIANT`` when the memory budget is below ``LOWMEM_BELOW_BYTES``, else the baseline.

    Args:
        max_memory: The service's memory budget in bytes, or None to use the machine's total RAM.
    """
    budget, source = memory_budget(max_memory)
    if budget < LOWMEM_BELOW_BYTES:
        return PHONE_VARIANT, (f"default because memory is short: {source} {budget / 1024**3:.2f} GiB < "
                               f"{LOWMEM_BELOW_BYTES / 1024**3:.0f} GiB")
    return BASELINE, ""


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
    ) -> None:
        super().__init__()
        self._preset = get_preset(model)
        self._weights = weights
        self._weights_seed = weights_seed
        if default_variant:
            self._default, self._default_reason = default_variant, ""
        else:
            self._default, self._default_reason = choose_default_variant(max_memory)
            if self._default_reason:
                logger.warning("default variant %s: %s", self._default, self._default_reason)
        self._options = BuildOptions(threads=threads)
        self._preload = preload
        self._components: ModelSpec | None = None
        self._pipelines: dict[str, LDMPipeline] = {}
        self._build_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Check the default variant, load the weights, and build and warm up the default variant when preloading."""
        require_available(self._default)
        variant = get_variant(self._default)
        if type(variant).load_model is not Variant.load_model:  # low memory: from its artifacts, no fp32 modules
            self._components = variant.load_model(self._preset, self._weights, seed=self._weights_seed)
        else:
            self._components = load_components(self._preset, self._weights, seed=self._weights_seed, warn=True)
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
        return VariantStatus(name=name, available=avail.ok, reason=reason, backend=variant.backend,
                             precision=variant.precision)

    def default_variant(self) -> str:  # noqa: D102
        return self._default

    def healthy(self) -> bool:  # noqa: D102
        return self._components is not None

    def _pipeline(self, name: str) -> LDMPipeline:
        """The cached pipeline of ``name``, built once even when several requests ask at the same time."""
        with self._lock:
            if name in self._pipelines:
                return self._pipelines[name]
            build_lock = self._build_locks.setdefault(name, threading.Lock())
        with build_lock:
            with self._lock:
                if name in self._pipelines:
                    return self._pipelines[name]
            logger.info("building variant %s for %s", name, self._preset.name)
            pipeline = build_variant(name, self.components, self._options).pipeline(self.components)
            with self._lock:
                self._pipelines[name] = pipeline
            return pipeline

    def generate(self, args: GenerateArgs, should_stop: Callable[[], bool], timeout_s: float | None = None
                 ) -> BackendResult:
        """Run the pipeline; ``should_stop`` is polled before every DDIM step and before decoding."""
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
