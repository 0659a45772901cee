"""``edgediff tune``: find this machine's fastest variant + sampler that passes the quality gate, and remember it.

Three stages, all with the bench's own machinery (so every number has a report behind it):

1. **Samplers on the reference** (``digits``, cheap): torch-fp32 with each ``(scheduler, steps)`` of the ladder,
   gated against torch-fp32 DDIM at the reference steps (20). The multistep solvers that pass at the fewest steps
   are kept.
2. **Quality of each candidate** (``digits``): every variant available here (the registry and its availability
   probes decide; nothing assumes a CPU) with DDIM at the reference steps and with the kept samplers. A row that
   fails the gate is never chosen.
3. **Speed** on the target model (``celebahq-256`` by default): torch-fp32 DDIM-20 (the baseline) and, per
   candidate, its fastest passing row (fewest network evaluations), in ONE ``edgediff bench`` run; ratios come from
   that run.

The result is the machine's **profile** (JSON, written atomically under the cache directory): the chosen variant,
scheduler, steps and threads, the measured speed, peak memory and quality, and the machine's CPU model and flags,
with a speed-vs-memory plot of every gate-passing row (``speed_memory.png``, the chosen one marked).

``--max-memory MB`` tunes for a memory budget (a phone, a 4 GB Jetson): the low-memory variants become candidates
too, and the choice is the fastest gate-passing row whose process peak RSS (build, warm-up and timed runs) fits the
budget. Such a profile is saved beside the plain one, as ``<model>.max<MB>mb.json``; the local gateway given a
``--max-memory`` uses the largest budget profile that fits its own (``budget_profile_defaults``). ``serve``,
``up``, ``export`` and ``make demo`` use it as their default; a profile written on another machine (other CPU model,
flags or architecture) is refused with the reason, until ``edgediff tune`` (or ``--revalidate``) runs here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgediff.artifacts.cache import cache_root
from edgediff.availability import is_cuda_available
from edgediff.bench.environment import cpu_model, library_versions
from edgediff.bench.plots import plot_speed_memory
from edgediff.bench.report_writers import write_outputs
from edgediff.bench.runner import TelemetryOptions
from edgediff.bench.suite import BenchConfig, run_bench
from edgediff.errors import BackendMissingError, EdgediffError, InvalidArgumentError, UnknownVariantError
from edgediff.io import atomic_write_json
from edgediff.quality.bench_hook import make_quality_hook
from edgediff.schedulers import DDIM, DPMPP, UNIPC, row_name, scheduler_settings, split_row
from edgediff.variants import BASELINE, all_variants, get_variant

logger = logging.getLogger(__name__)

PROFILE_SCHEMA = 1
PROFILE_DIR = "profiles"
QUALITY_MODEL = "digits"
"""The preset the quality gate can judge (``edgediff.quality``)."""
REFERENCE_STEPS = 20
"""The gate's reference: torch-fp32 with DDIM at this many steps (the study's setting)."""
SAMPLER_LADDER: tuple[tuple[str, int], ...] = ((DPMPP, 10), (UNIPC, 10), (DPMPP, 8), (UNIPC, 8), (DPMPP, 6),
                                               (UNIPC, 6), (DPMPP, 5), (UNIPC, 5))
"""Samplers tried on the reference (stage 1), cheapest last; a scheduler stops at its first failing step count."""
KEEP_SAMPLERS = 4
"""Passing samplers of stage 1 tried on every candidate (stage 2): the fewest steps first."""
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_int8", "avx512f", "avx512_vnni", "avx_vnni", "avx2", "fma", "asimd",
             "bf16", "i8mm", "sve")
"""CPU features that change which kernels run (and so which variant is fastest); recorded and compared."""
SKIPPED_KINDS = ("-lowmem",)
"""Variants made for memory, not speed (slower by design): tuning candidates only under a memory budget."""
SPEED_MEMORY_PNG = "speed_memory.png"
MB = 1024**2
"""A profile's memory figures are MiB (the bench's ``peak_bytes`` / 2**20)."""


class ProfileError(EdgediffError):
    """A tune profile is missing, unreadable, or was written on another machine."""


# --- the machine -----------------------------------------------------------------------------------------------
def machine_fingerprint(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """What a profile is only valid for: CPU model, the flags in ``CPU_FLAGS`` it has, architecture, CUDA devices."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    words = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words.update(value.split())
    cuda: list[str] = []
    try:

        if is_cuda_available():
            import torch

            cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:  # a broken CUDA install must not stop tuning on the CPU
        logger.warning("CUDA devices could not be listed: %s", exc)
    return {"cpu_model": cpu_model(cpuinfo), "cpu_flags": sorted(f for f in CPU_FLAGS if f in words),
            "architecture": platform.machine(), "logical_cpus": os.cpu_count(), "cuda_devices": cuda}


def mismatch(profile: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """What differs between the machine a profile was tuned on and ``here`` (empty: the same kind of machine)."""
    theirs = profile.get("machine") or {}
    return [f"{key}: profile {theirs.get(key)!r}, this machine {here.get(key)!r}"
            for key in ("cpu_model", "cpu_flags", "architecture", "logical_cpus", "cuda_devices")
            if theirs.get(key) != here.get(key)]


# --- the profile file -------------------------------------------------------------------------------------------
def profile_path(model: str, root: Path | None = None, max_memory_mb: int | None = None) -> Path:
    """``<cache>/profiles/<model>.json``; ``<model>.max<MB>mb.json`` for a memory budget of ``max_memory_mb`` MiB.

    The cache is ``$EDGEDIFF_CACHE_DIR`` or ``~/.cache/edgediff``.
    """
    name = model if max_memory_mb is None else f"{model}.max{int(max_memory_mb)}mb"
    return (root or cache_root()) / PROFILE_DIR / f"{name}.json"


def budget_profiles(model: str, root: Path | None = None) -> dict[int, Path]:
    """``{budget MiB: path}`` of the memory-budget profiles saved for ``model``."""
    found = {}
    for path in ((root or cache_root()) / PROFILE_DIR).glob(f"{model}.max*mb.json"):
        digits = path.name[len(model) + 4:-len("mb.json")]
        if digits.isdigit():
            found[int(digits)] = path
    return found


def write_profile(profile: dict[str, Any], path: Path) -> Path:
    """Write ``profile`` atomically."""
    return atomic_write_json(path, profile)


def read_profile(path: Path) -> dict[str, Any]:
    """Read a profile file (no machine check).

    Raises:
        ProfileError: missing, not JSON, or not a profile.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ProfileError(f"no tune profile at {path}: run 'edgediff tune'") from exc
    except (OSError, ValueError) as exc:
        raise ProfileError(f"tune profile {path} is unreadable ({exc}): run 'edgediff tune' again") from exc
    if not isinstance(data, dict) or data.get("schema") != PROFILE_SCHEMA or not isinstance(data.get("choice"), dict):
        raise ProfileError(f"{path} is not an edgediff tune profile (schema {PROFILE_SCHEMA}): run 'edgediff tune'")
    return data


def load_profile(model: str, *, root: Path | None = None, here: dict[str, Any] | None = None,
                 max_memory_mb: int | None = None) -> dict[str, Any]:
    """This machine's profile for ``model`` (its ``max_memory_mb`` budget profile when given).

    Raises:
        ProfileError: none, unreadable, or written on another machine (the message says what differs and that
            ``edgediff tune --revalidate`` re-checks its choice here).
    """
    path = profile_path(model, root, max_memory_mb)
    profile = read_profile(path)
    diff = mismatch(profile, here or machine_fingerprint())
    if diff:
        raise ProfileError(f"tune profile {path} was written on another machine ({'; '.join(diff)}); refused: run "
                           "'edgediff tune' (or 'edgediff tune --revalidate' to re-check its choice here)")
    for what, mismatch_of in (("sampler", sampler_mismatch), ("variant", variant_mismatch)):
        stale = mismatch_of(profile)
        if stale:
            raise ProfileError(f"tune profile {path} was gated with other {what} settings ({stale}); refused: run "
                               "'edgediff tune --revalidate' to re-check its choice with today's (or 'edgediff tune')")
    return profile


def sampler_mismatch(profile: dict[str, Any]) -> str | None:
    """How the sampler a profile was gated with differs from what its scheduler means now, or None (the same).

    A profile written before its choice recorded ``scheduler_settings`` counts as different unless it chose DDIM.
    """
    choice = profile["choice"]
    scheduler = choice.get("scheduler") or DDIM
    theirs = choice.get("scheduler_settings", {} if scheduler == DDIM else None)
    ours = scheduler_settings(scheduler)
    if theirs == ours:
        return None
    return f"{scheduler}: profile {theirs if theirs is not None else 'not recorded'}, now {ours}"


def variant_mismatch(profile: dict[str, Any]) -> str | None:
    """How the settings a profile's variant was gated with (``Variant.gate_settings``) differ from today's, or None.

    A profile written before its choice recorded ``variant_settings`` was gated with none (what every variant
    computed then).
    """
    choice = profile["choice"]
    ours = gate_settings(choice.get("variant", ""))
    theirs = choice.get("variant_settings", {})
    if theirs == ours:
        return None
    return f"{choice['variant']}: profile {theirs or 'none'}, now {ours or 'none'}"


def gate_settings(variant: str) -> dict[str, Any]:
    """``Variant.gate_settings`` of ``variant``; none for a name this registry lacks.

    A command that uses such a profile's choice then fails on the unknown variant, with the list of known ones.
    """
    try:
        return get_variant(variant).gate_settings()
    except UnknownVariantError:
        return {}


def profile_defaults(model: str, *, root: Path | None = None, warn: Callable[[str], None] | None = None,
                     max_memory_mb: int | None = None) -> dict[str, Any] | None:
    """``{"variant", "scheduler", "steps", "threads"}`` from this machine's profile, or None (no valid profile).

    A refused profile (another machine, unreadable) gives None and one line through ``warn``; a missing one gives
    None silently. Commands use this for their defaults when the user names no variant.

    Args:
        model: The preset.
        root: Cache root (None: the default cache).
        warn: Where a refused profile's one line goes.
        max_memory_mb: The budget profile of exactly this many MiB instead of the plain one.
    """
    path = profile_path(model, root, max_memory_mb)
    if not path.exists():
        return None
    try:
        profile = load_profile(model, root=root, max_memory_mb=max_memory_mb)
    except ProfileError as exc:
        if warn is not None:
            warn(f"WARNING: {exc}; using the built-in defaults")
        return None
    choice = profile["choice"]
    return {k: choice.get(k) for k in ("variant", "scheduler", "steps", "threads")}


def budget_profile_defaults(model: str, max_memory_bytes: int, *, root: Path | None = None,
                            warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The defaults of the memory-budget profile with the largest budget that fits ``max_memory_bytes``, or None.

    Adds ``"max_memory_mb"`` (that profile's budget) to ``profile_defaults``' keys.
    """
    fitting = [mb for mb in budget_profiles(model, root) if mb * MB <= max_memory_bytes]
    for mb in sorted(fitting, reverse=True):
        found = profile_defaults(model, root=root, warn=warn, max_memory_mb=mb)
        if found is not None:
            return {**found, "max_memory_mb": mb}
    return None


def measured_peaks(model: str, *, root: Path | None = None) -> dict[str, float]:
    """``{variant: peak MiB}`` measured on this machine by its tune profiles of ``model`` (plain and budget ones).

    A variant's figure is its smallest measured row's (profiles from another machine, and rows without a peak, are
    left out). ``edgediff variants`` shows it.
    """
    peaks: dict[str, float] = {}
    paths = [profile_path(model, root), *budget_profiles(model, root).values()]
    here = machine_fingerprint()
    for path in paths:
        try:
            profile = read_profile(path)
        except ProfileError:
            continue
        if mismatch(profile, here):
            continue
        rows = [*(profile.get("candidates") or []),
                {"row": BASELINE, "peak_mb": (profile.get("speed") or {}).get("baseline_peak_mb")}]
        for row in rows:
            variant, peak = split_row(row.get("row", ""))[0], row.get("peak_mb")
            if peak is not None:
                peaks[variant] = min(peak, peaks.get(variant, peak))
    return peaks


# --- tuning -----------------------------------------------------------------------------------------------------
@dataclass
class TuneConfig:
    """The arguments of ``edgediff tune``.

    Attributes:
        model: The model whose speed decides (``celebahq-256``).
        weights, weights_seed: Its weights (None: ``$EDGEDIFF_WEIGHTS``, bundled, or synthetic).
        variants: Candidate variants (None: every available variant but the baseline and the low-memory ones).
        samplers: The sampler ladder of stage 1.
        runs, warmup: Timed and warm-up runs per row of the speed stage.
        threads: Intra-op threads (None: the default).
        out: Folder for the stage reports.
        profile_root: Cache root holding ``profiles/`` (None: the default cache).
        revalidate: Re-check the existing profile's choice here instead of trying every candidate.
        max_memory_mb: Memory budget in MiB: low-memory variants become candidates, the choice must fit it, and the
            profile is the budget's own (``profile_path``); None: no budget, the plain profile.
    """

    model: str = "celebahq-256"
    weights: str | None = None
    weights_seed: int = 0
    variants: list[str] | None = None
    samplers: tuple[tuple[str, int], ...] = SAMPLER_LADDER
    runs: int = 2
    warmup: int = 1
    threads: int | None = None
    out: Path = Path("reports/tune")
    profile_root: Path | None = None
    revalidate: bool = False
    max_memory_mb: int | None = None
    command: str = "edgediff tune"
    notes: list[str] = field(default_factory=list)


def candidate_variants(names: Sequence[str] | None = None, *,
                       low_memory: bool = False) -> tuple[list[str], dict[str, str]]:
    """``(candidates, {name: why not})``: the variants to try here, from the registry and its availability probes.

    Args:
        names: Restrict to these (each must exist); None means every registered variant.
        low_memory: Keep the low-memory variants too (tuning for a memory budget).
    """
    pool = [get_variant(n) for n in names] if names else all_variants()
    keep, skipped = [], {}
    for variant in pool:
        if variant.name == BASELINE:
            continue
        if names is None and not low_memory and any(kind in variant.name for kind in SKIPPED_KINDS):
            skipped[variant.name] = "made for low memory, not speed"
            continue
        avail = variant.availability()
        if not avail.ok:
            skipped[variant.name] = avail.reason
            continue
        keep.append(variant.name)
    return keep, skipped


def _bench(config: TuneConfig, *, model: str, rows: list[str], out: Path, runs: int, warmup: int,
           say: Callable[[str], None]) -> dict[str, Any]:

    quality = model == QUALITY_MODEL
    bench = BenchConfig(model=model, variants=rows, weights=None if quality else config.weights,
                        weights_seed=config.weights_seed, steps=REFERENCE_STEPS, warmup=warmup, runs=runs,
                        threads=config.threads, isolate=not quality, telemetry=TelemetryOptions(enabled=False),
                        out=out, command=f"{config.command} ({'quality' if quality else 'speed'} stage)")
    report, _ = run_bench(bench, quality_fn=make_quality_hook(bench), progress=say)
    write_outputs(report, out, plots=False)
    return report


def _passed(entry: dict[str, Any]) -> bool:
    gate = (entry.get("quality") or {}).get("gate") or {}
    return entry.get("status") == "ok" and gate.get("passed") is True


def _digits_fd(entry: dict[str, Any]) -> float:
    """A gated row's digits-FD (lower is better; rows without one sort last among equals)."""
    value = ((entry.get("quality") or {}).get("scores") or {}).get("digits_fd")
    return float(value) if value is not None else float("inf")


def peak_mb(entry: dict[str, Any]) -> float | None:
    """A speed row's process peak RSS in MiB: the larger of build + warm-up and the timed runs (None: unmeasured)."""
    memory = entry.get("memory") or {}
    peaks = [v for v in (memory.get("peak_bytes"), memory.get("setup_peak_rss_bytes")) if v is not None]
    return round(max(peaks) / MB, 1) if peaks else None


def fastest_within(measured: list[dict[str, Any]], max_memory_mb: float | None) -> dict[str, Any]:
    """The fastest (total p50) of ``measured`` speed rows whose ``peak_mb`` fits ``max_memory_mb`` (None: any).

    Raises:
        ProfileError: no row fits the budget (the message names the smallest one).
    """
    fits = [e for e in measured if max_memory_mb is None or ((peak := peak_mb(e)) is not None
                                                               and peak <= max_memory_mb)]
    if not fits:
        known = [(peak_mb(e), e["name"]) for e in measured if peak_mb(e) is not None]
        smallest = f"; the smallest was {min(known)[1]} at {min(known)[0]:.0f} MiB" if known else ""
        raise ProfileError(f"no gate-passing row fits in --max-memory {max_memory_mb:.0f} MiB{smallest}")
    return min(fits, key=lambda e: e["latency"]["total"]["p50_s"])


def _evaluations(row: str) -> int:
    """Network evaluations of a row, for ordering (fewer steps first; DeepCache counts as cheaper)."""
    _, _, steps = split_row(row)
    return steps or REFERENCE_STEPS


def tune(config: TuneConfig, *, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three stages, write the profile and return it.

    Raises:
        InvalidArgumentError: bad arguments.
        ProfileError: ``--revalidate`` without a profile, or no candidate passed the gate.
    """
    if config.runs < 1 or config.warmup < 0:
        raise InvalidArgumentError(f"--runs must be >= 1 and --warmup >= 0, got {config.runs} and {config.warmup}")
    if config.max_memory_mb is not None and config.max_memory_mb <= 0:
        raise InvalidArgumentError(f"--max-memory must be a positive number of MiB, got {config.max_memory_mb}")
    here = machine_fingerprint()
    path = profile_path(config.model, config.profile_root, config.max_memory_mb)
    samplers = list(config.samplers)
    if config.revalidate:
        old = read_profile(path)
        choice = old["choice"]
        candidates = [choice["variant"]]
        samplers = [] if choice["scheduler"] == DDIM else [(choice["scheduler"], int(choice["steps"]))]
        say(f"re-validating {row_name(choice['variant'], choice['scheduler'], choice['steps'])} from {path} here")
        skipped: dict[str, str] = {}
    else:
        candidates, skipped = candidate_variants(config.variants, low_memory=config.max_memory_mb is not None)
    for name, why in skipped.items():
        say(f"not a candidate here: {name}: {why}")
    if not candidates:
        raise ProfileError("no candidate variant is available here (see 'edgediff variants')")

    kept: list[tuple[str, int]] = []
    if samplers and not config.revalidate:
        say(f"stage 1/3: samplers on {QUALITY_MODEL} (torch-fp32), gated against DDIM-{REFERENCE_STEPS}")
        rows = [row_name(BASELINE, s, n) for s, n in samplers]
        report = _bench(config, model=QUALITY_MODEL, rows=rows, out=config.out / "samplers", runs=1, warmup=0,
                        say=say)
        entries = {e["name"]: e for e in report["variants"]}
        failed: set[str] = set()
        for (scheduler, steps), row in zip(samplers, rows, strict=True):
            if scheduler in failed:
                continue
            if _passed(entries.get(row, {})):
                kept.append((scheduler, steps))
            else:
                failed.add(scheduler)  # fewer steps of a scheduler that failed will not pass either
        kept.sort(key=lambda s: s[1])
        kept = kept[:KEEP_SAMPLERS]
        say(f"  samplers that pass on the reference: {', '.join(f'{s} {n}' for s, n in kept) or 'none'}")

    say(f"stage 2/3: quality of {len(candidates)} candidate(s) on {QUALITY_MODEL}")
    if config.revalidate:
        quality_rows = [row_name(v, s, n) for v in candidates for s, n in (samplers or [(DDIM, REFERENCE_STEPS)])]
    else:
        quality_rows = ([row_name(v, DDIM, REFERENCE_STEPS) for v in candidates]
                        + [row_name(v, s, n) for v in candidates for s, n in kept])
    qreport = _bench(config, model=QUALITY_MODEL, rows=quality_rows, out=config.out / "quality", runs=1, warmup=0,
                     say=say)
    quality = {e["name"]: e for e in qreport["variants"] if e["role"] != "baseline"}
    passing = [row for row in quality_rows if _passed(quality.get(row, {}))]
    for row in quality_rows:
        say(f"  {row}: {'PASSED' if row in passing else (quality.get(row, {}).get('quality') or {}).get('summary')}")
    best_rows: dict[str, str] = {}
    for row in sorted(passing, key=lambda r: (_evaluations(r), _digits_fd(quality[r]))):
        best_rows.setdefault(split_row(row)[0], row)  # per variant: fewest evaluations, then the better quality
    if not best_rows:
        raise ProfileError("no candidate passed the quality gate here; nothing to choose (see "
                           f"{config.out / 'quality' / 'report.md'})")

    say(f"stage 3/3: speed on {config.model}: {BASELINE} DDIM-{REFERENCE_STEPS} vs {', '.join(best_rows.values())}")
    sreport = _bench(config, model=config.model, rows=[BASELINE, *best_rows.values()], out=config.out / "speed",
                     runs=config.runs, warmup=config.warmup, say=say)
    measured = [e for e in sreport["variants"] if e["role"] != "baseline" and e["status"] == "ok"]
    if not measured:
        raise ProfileError(f"no passing candidate could be measured on {config.model} (see "
                           f"{config.out / 'speed' / 'report.md'})")
    measured.sort(key=lambda e: e["latency"]["total"]["p50_s"])
    best = fastest_within(measured, config.max_memory_mb)
    variant, scheduler, steps = split_row(best["name"])
    baseline = next(e for e in sreport["variants"] if e["role"] == "baseline")
    try:
        plot: Path | None = plot_speed_memory(
            [_candidate(e, config.max_memory_mb) for e in [baseline, *measured]], best["name"],
            config.out / SPEED_MEMORY_PNG, max_memory_mb=config.max_memory_mb,
            title=f"{config.model}, gate-passing rows ({(sreport.get('weights') or {}).get('label')})")
    except BackendMissingError as exc:  # a phone tuning itself may lack matplotlib: the profile matters, not the plot
        say(f"  no speed-vs-memory plot: {exc}")
        plot = None
    qentry = quality[best["name"]]
    threads = (best.get("info") or {}).get("threads") or config.threads
    profile = {
        "schema": PROFILE_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "model": config.model,
        "machine": here,
        "software": library_versions(),
        "choice": {"variant": variant, "scheduler": scheduler or DDIM, "steps": steps or REFERENCE_STEPS,
                   "threads": threads, "scheduler_settings": scheduler_settings(scheduler or DDIM),
                   "variant_settings": gate_settings(variant)},
        "speed": {"total_p50_s": best["latency"]["total"]["p50_s"],
                  "baseline": f"{BASELINE} {DDIM} {REFERENCE_STEPS}",
                  "baseline_total_p50_s": (baseline.get("latency") or {}).get("total", {}).get("p50_s"),
                  "baseline_peak_mb": peak_mb(baseline),
                  "speedup": best.get("speedup_vs_baseline"), "runs": config.runs, "peak_mb": peak_mb(best),
                  "weights": (sreport.get("weights") or {}).get("label")},
        "quality": {"model": QUALITY_MODEL, "scores": qentry["quality"].get("scores"),
                    "baseline_scores": qentry["quality"].get("baseline_scores"),
                    "gate": qentry["quality"]["gate"]},
        "max_memory_mb": config.max_memory_mb,
        "candidates": [_candidate(e, config.max_memory_mb) for e in measured],
        "not_candidates": skipped,
        "reports": {**{stage: str(config.out / stage / "report.json") for stage in ("samplers", "quality", "speed")},
                    "speed_memory_png": str(plot) if plot else None},
    }
    write_profile(profile, path)
    say(f"profile: {path}: {best['name']} ({best.get('speedup_vs_baseline') or 0:.2f}x over {BASELINE} "
        f"DDIM-{REFERENCE_STEPS}, peak {peak_mb(best)} MiB, {qentry['quality']['gate']['status']} on "
        f"{QUALITY_MODEL}); speed vs memory: {plot}")
    return profile


def _candidate(entry: dict[str, Any], max_memory_mb: float | None) -> dict[str, Any]:
    """A measured speed row as the profile lists it."""
    peak = peak_mb(entry)
    return {"row": entry["name"], "total_p50_s": entry["latency"]["total"]["p50_s"],
            "speedup": entry.get("speedup_vs_baseline"), "peak_mb": peak,
            "fits": None if max_memory_mb is None or peak is None else peak <= max_memory_mb}
