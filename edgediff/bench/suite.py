"""Run a whole bench: every requested variant one after another (baseline first), then assemble the report.

The baseline (``torch-fp32``) always runs, requested or not: fidelity and speedup are relative to it on the same
seeds. Variants that cannot run here are listed with the reason; a variant that crashes is listed as failed with
the error; neither is dropped. The idle baseline of the energy monitor is measured once, before any model is loaded.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.bench import report as report_mod
from edgediff.bench.environment import fingerprint
from edgediff.bench.remote import RemoteTarget
from edgediff.bench.runner import (
    STATUS_OK,
    STATUS_UNAVAILABLE,
    RunSpec,
    TelemetryOptions,
    VariantRun,
    measure_isolated,
    measure_variant,
)
from edgediff.errors import InvalidArgumentError, UnknownVariantError
from edgediff.models import get_preset
from edgediff.processes import Interrupted
from edgediff.request import GenerationRequest
from edgediff.schedulers import check_scheduler, split_row
from edgediff.variants import BASELINE, get_variant, load_model

logger = logging.getLogger(__name__)

THROUGH_LOCAL = "local"
THROUGH_GATEWAY = "gateway"
SAMPLES_DIR = "samples"

QualityFn = Callable[[str, np.ndarray, dict[str, Any]], dict[str, Any] | None]
"""Per-variant quality hook: ``(variant, images uint8 [N, H, W, 3], context) -> JSON-serialisable dict or None``.

``context`` holds ``preset``, ``steps``, ``eta``, ``batch``, ``seeds`` (one per run, in image order), ``weights``
(the weights origin dict), ``baseline`` (its name) and ``baseline_images`` (the baseline's images on the same
seeds, or None), so a quality gate can compare a variant with the baseline. What it returns is stored, as is,
in the variant's ``quality`` field of the report (and summarised in report.md).
"""


@dataclass
class BenchConfig:
    """The arguments of one bench.

    Attributes:
        model: Preset name.
        weights: Weights folder (None: ``$EDGEDIFF_WEIGHTS``, bundled, or synthetic).
        weights_seed: Seed of synthetic weights.
        variants: Requested variant names (``parse_variant_list``).
        steps, eta, batch, seed: Generation arguments; timed run ``i`` uses seed ``seed + i``.
        warmup: Warm-up runs per variant (not counted).
        runs: Timed runs per variant.
        threads: Intra-op threads (None: default).
        deepcache: DeepCache interval (1 = off); variants without DeepCache are listed as unavailable.
        scheduler: The sampler of every row that names none (``VARIANT@SCHEDULER:STEPS`` rows bring their own
            sampler and steps, so one bench compares speed at equal quality against the baseline's DDIM-20).
        isolate: Measure each variant in a fresh subprocess (per-variant peak memory).
        through: ``local`` or ``gateway``.
        gateway: ``host:port`` of the gateway when ``through == "gateway"``.
        token: Bearer token for the gateway.
        tls_ca: CA file for a TLS gateway.
        telemetry: Energy monitor options.
        label: The device's name in ``compare`` tables (None: from the hardware).
        out: Output folder (samples are written there while measuring).
        command: The command line, recorded in the report.
    """

    model: str
    variants: list[str]
    weights: str | None = None
    weights_seed: int = 0
    steps: int = 20
    eta: float = 0.0
    batch: int = 1
    seed: int = 0
    warmup: int = 2
    runs: int = 10
    threads: int | None = None
    deepcache: int = 1
    scheduler: str = "ddim"
    isolate: bool = True
    through: str = THROUGH_LOCAL
    gateway: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)
    label: str | None = None
    out: Path = Path("reports")
    command: str = "edgediff bench"

    def to_report_config(self) -> dict[str, Any]:
        """The ``config`` block of the report."""
        return {"model": self.model, "steps": self.steps, "eta": self.eta, "batch": self.batch,
                "warmup": self.warmup, "runs": self.runs, "seed": self.seed, "threads": self.threads,
                "deepcache": self.deepcache, "variants_requested": list(self.variants), "through": self.through,
                "gateway": self.gateway, "isolate": self.isolate and self.through == THROUGH_LOCAL,
                "weights_seed": self.weights_seed, "scheduler": self.scheduler}

    def spec(self, variant: str, idle_power_w: dict[str, float]) -> RunSpec:
        """The ``RunSpec`` of one variant (a row ``VARIANT@SCHEDULER:STEPS`` brings its own sampler and steps)."""
        _, scheduler, steps = split_row(variant)
        return RunSpec(variant=variant, model=self.model, weights=self.weights, weights_seed=self.weights_seed,
                       steps=steps or self.steps, scheduler=scheduler or self.scheduler, eta=self.eta,
                       batch=self.batch, warmup=self.warmup, runs=self.runs,
                       seed=self.seed, threads=self.threads, deepcache=self.deepcache, telemetry=self.telemetry,
                       idle_power_w=dict(idle_power_w),
                       sample_path=str(self.out / SAMPLES_DIR / f"{variant}.png"))


def validate_config(config: BenchConfig) -> None:
    """Check every argument before any work; messages name the flag.

    Raises:
        InvalidArgumentError: an argument is out of range.
    """
    GenerationRequest.validated(seed=config.seed, steps=config.steps, eta=config.eta, batch=config.batch)

    check_scheduler(config.scheduler, eta=config.eta)
    for row in config.variants:
        _, scheduler, steps = split_row(row)
        check_scheduler(scheduler or config.scheduler, eta=config.eta, field=f"--variants {row}: scheduler")
        GenerationRequest.validated(seed=config.seed, steps=steps or config.steps, eta=config.eta, batch=config.batch,
                                    names={"steps": f"--variants {row}: steps"})
    get_preset(config.model)
    if config.warmup < 0:
        raise InvalidArgumentError(f"--warmup must be >= 0, got {config.warmup}")
    if config.runs < 1:
        raise InvalidArgumentError(f"--runs must be >= 1, got {config.runs}")
    if config.deepcache < 1:
        raise InvalidArgumentError(f"--deepcache must be >= 1, got {config.deepcache}")
    if config.threads is not None and config.threads < 1:
        raise InvalidArgumentError(f"--threads must be >= 1, got {config.threads}")
    if not config.variants:
        raise InvalidArgumentError("--variants: give at least one variant (or 'all')")
    if config.through not in (THROUGH_LOCAL, THROUGH_GATEWAY):
        raise InvalidArgumentError(f"--through must be 'local' or 'gateway ADDR', got {config.through!r}")
    if config.through == THROUGH_GATEWAY and not config.gateway:
        raise InvalidArgumentError("--through gateway needs the gateway's address: --through gateway HOST:PORT")
    if config.telemetry.idle_s < 0:
        raise InvalidArgumentError(f"--idle-s must be >= 0 seconds, got {config.telemetry.idle_s}")


def plan(config: BenchConfig, *, reference: str) -> list[tuple[str, bool]]:
    """``(name, requested)`` in run order: the baseline first, then the requested variants in the given order."""
    order = [(reference, reference in config.variants)]
    order += [(name, True) for name in config.variants if name != reference]
    return order


def _local_unavailable(name: str, deepcache: int) -> str | None:

    variant = get_variant(split_row(name)[0])
    avail = variant.availability()
    if not avail.ok:
        return avail.reason
    if deepcache != 1 and not variant.supports_deepcache:
        return f"does not support DeepCache (--deepcache {deepcache})"
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_bench(
    config: BenchConfig,
    *,
    quality_fn: QualityFn | None = None,
    progress: Callable[[str], None] | None = _stderr,
    remote: RemoteTarget | None = None,
) -> tuple[dict[str, Any], dict[str, VariantRun]]:
    """Measure every planned variant and return ``(report, runs)`` (runs keep the images for plots and hooks).

    Args:
        config: The bench's arguments.
        quality_fn: Optional per-variant quality hook (see ``QualityFn``); its result goes to ``quality``.
        progress: Called with one-line progress messages (None: silent).
        remote: The endpoint to measure through when ``config.through`` is ``gateway`` (required then).

    Raises:
        InvalidArgumentError, WeightsError: bad arguments or weights (checked before or at the first variant).
        EdgediffError: the gateway cannot be reached.
    """
    say = progress or (lambda _m: None)
    validate_config(config)
    preset = get_preset(config.model)
    order = plan(config, reference=BASELINE)

    served: dict[str, tuple[bool, str]] = {}
    if config.through == THROUGH_GATEWAY:
        if remote is None:
            raise InvalidArgumentError("--through gateway: no gateway target was given to the bench")
        served = remote.variants(config.model)
    else:
        remote = None

    monitor = None
    telemetry: dict[str, Any] = {"enabled": config.telemetry.enabled, "power_readers": [], "unavailable": [],
                                 "idle_power_w": {}, "idle_s": None,
                                 "estimated_cpu_tdp_w": config.telemetry.estimated_cpu_tdp_w,
                                 "fixture_power_w": config.telemetry.fixture_power_w}
    runs: dict[str, VariantRun] = {}
    entries: list[dict[str, Any]] = []
    environment: dict[str, Any] | None = None
    interrupted: Interrupted | None = None
    current: str | None = None
    try:
        if config.telemetry.enabled:
            monitor = config.telemetry.monitor().start()
            telemetry["power_readers"] = [r.name for r in monitor.readers if r.provides_power]
            telemetry["unavailable"] = [str(u) for u in monitor.unavailable]
            if monitor.has_power_sensor and config.telemetry.idle_s > 0:
                say(f"measuring the idle baseline for {config.telemetry.idle_s:g} s (no model loaded)")
                telemetry["idle_power_w"] = monitor.measure_idle(config.telemetry.idle_s)
                telemetry["idle_s"] = monitor.idle_duration_s
            if config.isolate and config.through == THROUGH_LOCAL:
                monitor.close()  # each worker runs its own monitor with this idle baseline
                monitor = None
        environment = fingerprint(config.label)

        components = None
        for index, (name, requested) in enumerate(order, start=1):
            if config.through == THROUGH_GATEWAY:
                ok, why = served.get(name, (False, "the gateway does not list this variant"))
                reason = None if ok else why
            else:
                reason = _local_unavailable(name, config.deepcache)
            if reason is not None:
                say(f"[{index}/{len(order)}] {name}: unavailable: {reason}")
                runs[name] = VariantRun(variant=name, status=STATUS_UNAVAILABLE, error=reason)
                continue
            say(f"[{index}/{len(order)}] {name}" + (" (baseline for fidelity and speedup, not requested)"
                                                    if not requested else ""))
            spec = config.spec(name, telemetry["idle_power_w"])
            current = name
            if remote is not None:
                run = remote.measure(spec, monitor)
            elif config.isolate:
                run = measure_isolated(spec)
            else:
                if components is None:  # one model for every variant of this process: with its modules
                    components = load_model(config.model, config.weights, seed=config.weights_seed)
                run = measure_variant(spec, components=components, monitor=monitor, progress=lambda m: say(f"  {m}"))
                gc.collect()
            runs[name] = run
            current = None
            if run.status == STATUS_OK:
                total = sorted(r["total_s"] for r in run.runs)
                say(f"  {name}: total median {total[len(total) // 2]:.3f} s over {len(total)} run(s)")
            else:
                say(f"  {name}: {run.status}: {run.error}")
    except Interrupted as exc:  # nothing measured is lost: what finished is reported, marked incomplete
        interrupted = exc
        say(f"{exc.reason}: reporting the {sum(r.status == STATUS_OK for r in runs.values())} variant(s) "
            "measured so far, marked incomplete")
    finally:
        if monitor is not None:
            monitor.close()
    if environment is None:
        environment = fingerprint(config.label)
    not_measured = [name for name, _ in order if name not in runs]
    if interrupted is not None:
        order = [(name, requested) for name, requested in order if name in runs]

    baseline_run = runs.get(BASELINE)
    weights = next((r.weights for r in runs.values() if r.weights is not None), None)
    for name, requested in order:
        run = runs[name]
        quality = None
        if quality_fn is not None and run.status == STATUS_OK and run.images is not None:
            spec = config.spec(name, {})
            context = {"preset": config.model, "steps": spec.steps, "scheduler": spec.scheduler, "eta": config.eta,
                       "batch": config.batch,
                       "seeds": [r["seed"] for r in run.runs], "weights": weights, "baseline": BASELINE,
                       "baseline_images": baseline_run.images if baseline_run is not None else None}
            quality = quality_fn(name, run.images, context)
        sample = f"{SAMPLES_DIR}/{name}.png" if run.status == STATUS_OK else None
        base = split_row(name)[0]
        variant = get_variant(base) if config.through == THROUGH_LOCAL else _maybe_variant(base)
        entries.append(report_mod.variant_entry(
            run, variant=variant, requested=requested, role="baseline" if name == BASELINE else "variant",
            batch=config.batch, baseline_run=baseline_run, reference=BASELINE, sample=sample, quality=quality))
    report_mod.add_ratios(entries, BASELINE)
    model = {"name": preset.name, "latent_shape": list(preset.latent_shape), "image_size": preset.image_size,
             "description": preset.description}
    report = report_mod.build_report(config=config.to_report_config(), model=model, weights=weights,
                                     environment=environment, telemetry=telemetry, entries=entries,
                                     reference=BASELINE, command=config.command)
    if config.through == THROUGH_GATEWAY:
        report["warnings"].append(f"measured through the gateway {config.gateway}: energy is what this machine's "
                                  "sensors saw, memory is not measured here")
    if interrupted is not None:
        mark_incomplete(report, interrupted, during=current, not_measured=not_measured)
    return report, runs


def mark_incomplete(report: dict[str, Any], interrupted: Interrupted, *, during: str | None,
                    not_measured: list[str]) -> None:
    """Mark a bench report as cut short: ``incomplete`` says why, what was being measured and what was not.

    ``edgediff compare`` refuses such a report unless ``--allow-incomplete`` is given; ``exit_code`` is what the
    bench exits with (128 + the signal).
    """
    reason = interrupted.reason + (f" while measuring {during}" if during else "")
    report["incomplete"] = {"reason": reason, "signal": interrupted.signal_name, "exit_code": interrupted.exit_code,
                            "not_measured": list(not_measured)}
    report["warnings"].insert(0, f"INCOMPLETE: {reason}; not measured: {', '.join(not_measured) or 'none'}")


def _maybe_variant(name: str) -> Any:

    try:
        return get_variant(name)
    except UnknownVariantError:
        return None

