"""Measure one variant: build, warm-up runs (not counted), timed runs, per-stage timings, memory and an energy window.

Peak memory. ``VmHWM`` (the process's resident high-water mark) only ever grows, so by default each variant runs in
a fresh subprocess (``measure_isolated``, the ``worker`` module): its number then belongs to that variant alone.
Inside that process the mark is read twice: after loading, building and the warm-ups (``setup_peak_rss_bytes``:
exports and JIT compilation included), and, after resetting it through ``/proc/self/clear_refs`` where the kernel
allows, over the timed runs only (``process_peak_rss_bytes``: the memory generation needs, model weights included).
On CUDA, ``torch.cuda.max_memory_allocated`` is reset the same way; on a Jetson the device-wide RAM that tegrastats
reports (CPU and GPU share it) is the peak that matters. ``memory_method`` in every result says which held.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgediff.errors import (
    BackendMissingError,
    EdgediffError,
    InvalidArgumentError,
    VariantUnavailableError,
    WeightsError,
)
from edgediff.io import atomic_write_bytes, atomic_write_json
from edgediff.processes import PARENT_GONE_SIGNAL, ChildProcess
from edgediff.schedulers import split_row
from edgediff.telemetry import EnergyMonitor
from edgediff.telemetry.base import ReaderError
from edgediff.telemetry.memory import MemoryReader
from edgediff.variants import BuildOptions, build_variant, load_model

logger = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_UNAVAILABLE = "unavailable"
CLEAR_REFS_RESET_PEAK = "5"
"""Writing this to ``/proc/<pid>/clear_refs`` resets ``VmHWM`` to the current RSS (Linux >= 4.0)."""
USER_ERRORS = (WeightsError, InvalidArgumentError)
"""Errors that would fail every variant the same way: the bench stops with the message instead of going on."""
RUN_FILE = "run.json"
ARRAYS_FILE = "arrays.npz"
WORKER_GRACE_S = 5.0
"""Seconds a bench worker gets to exit after its stop signal (it holds nothing worth saving) before SIGKILL."""


@dataclass(frozen=True)
class TelemetryOptions:
    """What the energy monitor of a bench uses (JSON-serialisable: it travels to the worker subprocesses).

    Attributes:
        enabled: Measure energy at all (memory is always measured).
        idle_s: Seconds of idle baseline before any model is loaded (0: none, so no net energy).
        interval_s: Sampler period, seconds.
        estimated_cpu_tdp_w: Turn on the ESTIMATED CPU power reader with this TDP (labelled ``estimated``).
        fixture_power_w: Add a constant fixture power reader (tests only; labelled ``fixture``).
    """

    enabled: bool = True
    idle_s: float = 5.0
    interval_s: float = 0.1
    estimated_cpu_tdp_w: float | None = None
    fixture_power_w: float | None = None

    def monitor(self) -> Any:
        """A new, unstarted ``EnergyMonitor`` over every sensor discovery finds (plus the opt-in readers)."""
        return EnergyMonitor.from_discovery(
            interval_s=self.interval_s,
            estimated_cpu_tdp_w=self.estimated_cpu_tdp_w,
            fixture_power_w=self.fixture_power_w,
        )


@dataclass(frozen=True)
class RunSpec:
    """Everything needed to measure one variant, JSON-serialisable for the worker subprocess.

    Attributes:
        variant: Registry name.
        model: Preset name.
        weights: Weights folder or None (``$EDGEDIFF_WEIGHTS``, bundled, or synthetic).
        weights_seed: Seed of synthetic weights.
        steps, eta, batch: Generation arguments of every run.
        warmup: Warm-up runs (not counted).
        runs: Timed runs; run ``i`` uses seed ``seed + i`` (the same seeds for every variant: fidelity).
        seed: First seed.
        threads: Intra-op threads (None: default).
        deepcache: DeepCache interval (1 = off).
        scheduler: The sampler (``ddim``, ``dpmpp``, ``unipc``); ``variant`` may be a bench row
            ``VARIANT@SCHEDULER:STEPS`` whose sampler and steps ``BenchConfig.spec`` put here.
        telemetry: Energy monitor options.
        idle_power_w: Idle baseline per domain measured by the parent, watts (net energy).
        sample_path: Where to write the first timed image as PNG, or None.
    """

    variant: str
    model: str
    weights: str | None = None
    weights_seed: int = 0
    steps: int = 20
    eta: float = 0.0
    batch: int = 1
    warmup: int = 2
    runs: int = 10
    seed: int = 0
    threads: int | None = None
    deepcache: int = 1
    scheduler: str = "ddim"
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)
    idle_power_w: dict[str, float] = field(default_factory=dict)
    sample_path: str | None = None

    def seeds(self) -> list[int]:
        """The seed of each timed run."""
        return [self.seed + i for i in range(self.runs)]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["telemetry"] = TelemetryOptions(**data.get("telemetry", {}))
        return cls(**data)


@dataclass
class VariantRun:
    """The raw outcome of measuring one variant (the report computes statistics from it).

    Attributes:
        variant: Registry name.
        status: ``ok``, ``failed`` or ``unavailable``.
        error: Why it failed or is unavailable.
        error_type: The exception's class name.
        weights: ``WeightsOrigin.to_dict()`` plus ``label`` and ``synthetic``.
        build_s: Seconds to build the variant (exports come from the cache when present).
        warmup_s: Total seconds of each warm-up run.
        info: ``BuiltVariant.info`` (device, precision, threads, artifacts).
        runs: Per timed run: ``seed``, ``denoise_s``, ``decode_s``, ``total_s``.
        window: ``Measurement.to_dict()`` of the energy window around the timed runs, or None.
        telemetry: ``power_readers`` (names) and ``unavailable`` (``"reader: reason"``) of the monitor used.
        memory: Peak memory numbers and how they were measured.
        images: uint8 ``[runs * batch, H, W, 3]`` of the timed runs, in seed order.
        latents: Final latents ``[runs * batch, C, h, w]``, or None (through the gateway).
        isolated: Measured in its own subprocess.
    """

    variant: str
    status: str
    error: str | None = None
    error_type: str | None = None
    weights: dict[str, Any] | None = None
    build_s: float | None = None
    warmup_s: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, float]] = field(default_factory=list)
    window: dict[str, Any] | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    images: np.ndarray | None = None
    latents: np.ndarray | None = None
    isolated: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        """Everything but the arrays."""
        out = {k: v for k, v in asdict(self).items() if k not in ("images", "latents")}
        return json.loads(json.dumps(out, default=str))

    def save(self, folder: Path) -> None:
        """Write ``run.json`` and ``arrays.npz`` into ``folder`` (the worker's answer to its parent)."""
        arrays: dict[str, np.ndarray] = {}
        if self.images is not None:
            arrays["images"] = self.images
        if self.latents is not None:
            arrays["latents"] = self.latents
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(folder / ARRAYS_FILE, buf.getvalue())
        atomic_write_json(folder / RUN_FILE, self.to_json_dict())

    @classmethod
    def load(cls, folder: Path) -> VariantRun:
        """Read what ``save`` wrote."""
        data = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        run = cls(**data)
        arrays_path = folder / ARRAYS_FILE
        if arrays_path.is_file():
            with np.load(arrays_path) as arrays:
                run.images = arrays.get("images")
                run.latents = arrays.get("latents")
        return run


# --- memory -----------------------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write(CLEAR_REFS_RESET_PEAK)
    except OSError:
        return False
    return True


def process_memory() -> dict[str, int]:
    """This process's memory now, by kind (``process-rss``, ``process-peak-rss``, CUDA kinds when in use)."""
    try:
        return {m.kind: m.used_bytes for m in MemoryReader().read_memory()}
    except ReaderError as exc:
        logger.warning("process memory unavailable: %s", exc)
        return {}


def _cuda_in_use() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


def memory_method(*, isolated: bool, reset: bool) -> str:
    """One sentence saying how ``process_peak_rss_bytes`` was measured (written into the report)."""
    scope = ("a fresh subprocess per variant (model load + build + runs of this variant only)" if isolated
             else "the bench process shared by all variants (memory an earlier variant freed to the allocator "
                  "may still be resident)")
    if reset:
        mark = "VmHWM reset through /proc/self/clear_refs after the warm-ups, so the peak covers the timed runs"
    else:
        mark = "VmHWM could not be reset (clear_refs not writable): the peak is the process's lifetime mark"
    return f"process peak RSS (VmHWM) of {scope}; {mark}"


# --- one variant, in this process -------------------------------------------------------------------------------
def _weights_dict(components: Any) -> dict[str, Any]:
    return {**components.weights.to_dict(), "label": components.weights.label(),
            "synthetic": components.weights.synthetic}


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays, axis=0)


def measure_variant(
    spec: RunSpec,
    *,
    components: Any | None = None,
    monitor: Any | None = None,
    isolated: bool = False,
    progress: Callable[[str], None] | None = None,
) -> VariantRun:
    """Build ``spec.variant``, run the warm-ups, then the timed runs inside one energy window.

    Args:
        spec: What to run.
        components: A loaded ``ModelSpec`` to reuse (in-process benches); None loads what the variant needs
            (``Variant.load_model``: the modules, or only a ``ModelSpec`` for variants that run from artifacts).
        monitor: A started ``EnergyMonitor`` to use; None builds one from ``spec.telemetry`` (when enabled) and
            closes it at the end.
        isolated: This process exists for this variant alone (written into the memory method).
        progress: Called with one-line progress messages.

    Raises:
        WeightsError, InvalidArgumentError: errors that would fail every variant (the bench stops on them).
        Other exceptions of the backend are caught and returned as a ``failed`` run.
    """
    import torch


    say = progress or (lambda _msg: None)
    name = split_row(spec.variant)[0]  # a bench row VARIANT@SCHEDULER:STEPS builds VARIANT
    own_monitor = monitor is None and spec.telemetry.enabled
    if own_monitor:
        monitor = spec.telemetry.monitor().start()
        if spec.idle_power_w:
            monitor.set_idle_power(spec.idle_power_w)
    run = VariantRun(variant=spec.variant, status=STATUS_FAILED, isolated=isolated)
    if monitor is not None:
        run.telemetry = {"power_readers": [r.name for r in monitor.readers if r.provides_power],
                         "unavailable": [str(u) for u in monitor.unavailable]}
    else:
        run.telemetry = {"power_readers": [], "unavailable": ["telemetry disabled (--no-energy)"]}
    built = pipeline = None
    try:
        if components is None:  # what this variant needs: the torch modules, or only a ModelSpec (low memory)
            components = load_model(spec.model, spec.weights, seed=spec.weights_seed, variant=name)
        run.weights = _weights_dict(components)
        t0 = time.perf_counter()
        built = build_variant(name, components, BuildOptions(threads=spec.threads, deepcache_interval=spec.deepcache))
        run.build_s = time.perf_counter() - t0
        run.info = {**json.loads(json.dumps(built.info, default=str)), "scheduler": spec.scheduler,
                    "steps": spec.steps}
        pipeline = built.pipeline(components)
        say(f"{spec.variant}: built in {run.build_s:.1f} s; {spec.warmup} warm-up run(s)")
        for _ in range(spec.warmup):
            result = pipeline(seed=spec.seed, steps=spec.steps, eta=spec.eta, batch=spec.batch,
                              scheduler=spec.scheduler)
            run.warmup_s.append(result.timings.total_s)
        setup = process_memory()
        gc.collect()
        reset = reset_peak_rss()
        cuda = _cuda_in_use()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        say(f"{spec.variant}: {spec.runs} timed run(s)")
        results = []
        if monitor is not None:
            monitor.begin_window(spec.variant)
        try:
            for seed in spec.seeds():
                results.append(pipeline(seed=seed, steps=spec.steps, eta=spec.eta, batch=spec.batch,
                                        scheduler=spec.scheduler))
        finally:
            measurement = monitor.end_window(spec.variant) if monitor is not None else None
        after = process_memory()
        run.window = measurement.to_dict() if measurement is not None else None
        run.runs = [{"seed": seed, "denoise_s": r.timings.denoise_s, "decode_s": r.timings.decode_s,
                     "total_s": r.timings.total_s} for seed, r in zip(spec.seeds(), results, strict=True)]
        run.images = _stack([r.images for r in results])
        run.latents = _stack([r.latents.detach().cpu().float().numpy() for r in results])
        run.memory = {
            "process_peak_rss_bytes": after.get("process-peak-rss"),
            "setup_peak_rss_bytes": setup.get("process-peak-rss"),
            "process_rss_bytes": after.get("process-rss"),
            "peak_reset": reset,
            "cuda_max_allocated_bytes": after.get("cuda-max-allocated") if cuda else None,
            "window_peak_bytes": dict(measurement.peak_memory) if measurement is not None else {},
            "method": memory_method(isolated=isolated, reset=reset),
        }
        if spec.sample_path:
            atomic_write_bytes(spec.sample_path, results[0].png_bytes(0))
        run.status = STATUS_OK
    except USER_ERRORS:
        raise
    except (VariantUnavailableError, BackendMissingError) as exc:  # cannot run here, and says why
        run.status, run.error, run.error_type = STATUS_UNAVAILABLE, str(exc), type(exc).__name__
    except EdgediffError as exc:  # an export or engine build that failed, with a message meant for the user
        run.status, run.error, run.error_type = STATUS_FAILED, str(exc), type(exc).__name__
    except Exception as exc:  # a backend crashing must not lose the other variants' numbers
        logger.exception("%s failed", spec.variant)
        run.status, run.error, run.error_type = STATUS_FAILED, f"{type(exc).__name__}: {exc}", type(exc).__name__
    finally:
        del built, pipeline
        gc.collect()
        if _cuda_in_use():
            torch.cuda.empty_cache()
        if own_monitor and monitor is not None:
            monitor.close()
    return run


# --- one variant, in a fresh subprocess -------------------------------------------------------------------------
def measure_isolated(spec: RunSpec, *, timeout_s: float | None = None) -> VariantRun:
    """Measure ``spec`` in a fresh Python process (``python -m edgediff.bench.worker``), so its peak memory is its own.

    The worker's stdout and stderr go to this process's stderr (progress and warnings). It is a ``ChildProcess``:
    a stop signal to the bench stops it (and removes its temporary folder), and on Linux it dies with the bench
    even when the bench is SIGKILLed (it then removes the temporary folder itself: ``worker.exit_on_signals``).

    Raises:
        EdgediffError: The worker hit an error that would fail every variant (bad weights, bad argument).
        Interrupted: a stop signal arrived; the worker was stopped and nothing of this variant is kept.
    """
    with tempfile.TemporaryDirectory(prefix="edgediff-bench-") as tmp:
        folder = Path(tmp)
        spec_path = folder / "spec.json"
        atomic_write_json(spec_path, spec.to_dict())
        command = [sys.executable, "-m", "edgediff.bench.worker", str(spec_path), str(folder)]
        with ChildProcess(command, name=f"bench worker ({spec.variant})", stdout=sys.stderr, stderr=sys.stderr,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, grace_s=WORKER_GRACE_S,
                          die_signal=PARENT_GONE_SIGNAL) as worker:
            code = worker.wait(timeout_s)
            if code is None:
                worker.stop()
                return VariantRun(spec.variant, STATUS_FAILED, error=f"timed out after {timeout_s} s", isolated=True)
        if not (folder / RUN_FILE).is_file():
            return VariantRun(spec.variant, STATUS_FAILED, isolated=True,
                              error=f"worker exited with code {code} without a result (killed? out of "
                                    "memory?); see the messages above")
        run = VariantRun.load(folder)
    if run.error_type in {cls.__name__ for cls in USER_ERRORS}:
        raise EdgediffError(run.error or "worker failed")
    return run


def worker_main(spec_path: str, out_folder: str) -> int:
    """Entry point of ``python -m edgediff.bench.worker SPEC OUT``: measure and write ``run.json`` + arrays."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folder = Path(out_folder)
    spec = RunSpec.from_dict(json.loads(Path(spec_path).read_text(encoding="utf-8")))
    try:
        run = measure_variant(spec, isolated=True, progress=lambda msg: print(f"  {msg}", file=sys.stderr))
    except USER_ERRORS as exc:
        run = VariantRun(spec.variant, STATUS_FAILED, error=str(exc), error_type=type(exc).__name__, isolated=True)
    with contextlib.suppress(BrokenPipeError):
        sys.stderr.flush()
    run.save(folder)
    return 0
