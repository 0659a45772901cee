"""Helper of benchmarks/gpu_check.sh: the environment, one variant end to end, and the summary of a GPU check.

    python benchmarks/gpu_check.py env                       # JSON: GPU, driver, packages, what is missing
    python benchmarks/gpu_check.py variants A,B --out F.jsonl  # each on the tiny preset vs torch-fp32; a JSON line each
    python benchmarks/gpu_check.py summary STEPS.tsv --out summary.json

Needs nothing from the network: it reports what the machine has. Exit codes of ``variants``: 0 when none failed
(unavailable ones are skipped with the reason in their JSON line), 1 otherwise, 3 when none could run here.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

SKIPPED = 3
PACKAGES = ("torch", "diffusers", "numpy", "onnx", "onnxsim", "onnxruntime", "onnxruntime-gpu", "tensorrt",
            "nvidia-ml-py", "tritonclient", "nvidia-pytriton", "openvino", "matplotlib", "pytest", "pytest-timeout")
REQUIRED = ("torch", "diffusers", "safetensors", "numpy", "PIL", "psutil", "rich")
"""Modules edgediff cannot import without (pyproject's dependencies)."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    wanted = ("avx512_bf16", "avx512f", "avx512_vnni", "avx_vnni", "avx2", "fma", "amx_bf16")
    return sorted({flag for flag in re.findall(r"\b\w+\b", text) if flag in wanted})


def environment() -> dict:
    """What this machine has for the GPU checks (cheap; imports torch, onnxruntime and pynvml when present)."""
    env: dict = {"python": platform.python_version(), "executable": sys.executable, "machine": platform.machine(),
                 "cpu_flags": _cpu_flags(), "cpu_count": os.cpu_count(),
                 "packages": {name: _version(name) for name in PACKAGES},
                 "missing_required": [m for m in REQUIRED if importlib.util.find_spec(m) is None]}
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        if env["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            env["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                          "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    except Exception as exc:  # report, never fail: this is the first thing a broken image shows
        env["torch_error"] = repr(exc)
    if importlib.util.find_spec("onnxruntime"):
        try:
            import onnxruntime

            env["onnxruntime_providers"] = onnxruntime.get_available_providers()
        except Exception as exc:
            env["onnxruntime_error"] = repr(exc)
    if importlib.util.find_spec("pynvml"):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            env["nvml"] = {"driver": pynvml.nvmlSystemGetDriverVersion(), "name": pynvml.nvmlDeviceGetName(handle)}
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                env["nvml"]["energy_counter"] = True
            except pynvml.NVMLError as exc:
                env["nvml"]["energy_counter"] = f"unsupported: {exc}"
            pynvml.nvmlShutdown()
        except Exception as exc:
            env["nvml_error"] = repr(exc)
    env["tritonserver"] = _tritonserver()
    return env


def _tritonserver() -> str | None:
    found = shutil.which("tritonserver")
    if found:
        return found
    spec = importlib.util.find_spec("pytriton")
    if spec and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "tritonserver" / "bin" / "tritonserver"
        if binary.is_file():
            return str(binary)
    return None


def run_variant(name: str, components: object, baseline: object, *, steps: int, batch: int,
                seed: int) -> tuple[int, dict]:
    """Build ``name``, generate twice (the first warms up), compare the latents with ``baseline`` (torch-fp32)."""
    import torch

    from edgediff.variants import build_variant, get_variant

    row: dict = {"variant": name, "model": components.preset.name, "steps": steps, "batch": batch, "seed": seed}
    variant = get_variant(name)
    avail = variant.availability()
    if not avail.ok:
        return SKIPPED, {**row, "status": "unavailable", "reason": avail.reason}
    t0 = time.perf_counter()
    built = build_variant(name, components)
    row["build_s"] = time.perf_counter() - t0
    row["info"] = {k: v for k, v in built.info.items() if k != "artifacts"}
    pipe = built.pipeline(components)
    t0 = time.perf_counter()
    pipe(seed=seed, steps=steps, batch=batch)
    row["first_call_s"] = time.perf_counter() - t0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    result = pipe(seed=seed, steps=steps, batch=batch)
    row["timings"] = result.timings.to_dict()
    err = float((result.latents - baseline.latents).norm() / baseline.latents.norm())
    row.update(rel_latent_error=err, tolerance=variant.tolerance, baseline_device=str(baseline.latents.device))
    ok = err <= max(variant.tolerance, 1e-6) and result.images.shape == baseline.images.shape
    if name == "trt-fp16":  # a batch above the plan's optimisation profile runs in chunks
        big = pipe(seed=seed, steps=2, batch=9)
        row["batch9_images"] = list(big.images.shape)
        ok = ok and big.images.shape[0] == 9
    if torch.cuda.is_available():
        row["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    row["status"] = "ok" if ok else "failed"
    if not ok:
        row["reason"] = f"relative latent error {err:.3e} > tolerance {variant.tolerance:.0e}"
    return (0 if ok else 1), row


def summarize(steps_tsv: Path, out: Path, env_json: Path | None) -> int:
    """Turn the script's ``step<TAB>status<TAB>seconds<TAB>note`` lines into ``summary.json``; print a table."""
    steps = []
    for line in steps_tsv.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            steps.append({"step": parts[0], "status": parts[1], "seconds": float(parts[2] or 0),
                          "note": parts[3] if len(parts) > 3 else ""})
    summary = {"created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": steps}
    if env_json is not None and env_json.is_file():
        summary["environment"] = json.loads(env_json.read_text(encoding="utf-8"))
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)
    width = max((len(s["step"]) for s in steps), default=4)
    for s in steps:
        print(f"{s['step']:<{width}}  {s['status']:<8} {s['seconds']:7.1f} s  {s['note']}")
    return 1 if any(s["status"] in ("failed", "timeout") for s in steps) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", help="print the environment as JSON")
    env.add_argument("--out", type=Path, default=None)
    one = sub.add_parser("variants", help="variants end to end, in turn; appends one JSON line each to --out")
    one.add_argument("names", help="comma-separated variant names")
    one.add_argument("--model", default="tiny")
    one.add_argument("--steps", type=int, default=6)
    one.add_argument("--batch", type=int, default=2)
    one.add_argument("--seed", type=int, default=7)
    one.add_argument("--out", type=Path, required=True)
    sub.add_parser("tritonserver", help="print the tritonserver binary; exit 1 when there is none")
    summ = sub.add_parser("summary", help="write summary.json from the script's step lines")
    summ.add_argument("steps", type=Path)
    summ.add_argument("--env", type=Path, default=None)
    summ.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "env":
        text = json.dumps(environment(), indent=2)
        if args.out:
            args.out.write_text(text + "\n", encoding="utf-8")
        print(text)
        return 0
    if args.command == "summary":
        return summarize(args.steps, args.out, args.env)
    if args.command == "tritonserver":
        binary = _tritonserver()
        print(binary or "no tritonserver: none on PATH and no nvidia-pytriton bundle")
        return 0 if binary else 1
    return run_variants(args.names.split(","), model=args.model, steps=args.steps, batch=args.batch,
                        seed=args.seed, out=args.out)


def run_variants(names: list[str], *, model: str, steps: int, batch: int, seed: int, out: Path) -> int:
    """``run_variant`` for each name, in this process (torch-fp32 is the reference, computed once)."""
    from edgediff.models import get_preset, load_components
    from edgediff.variants import BASELINE, build_variant

    components = load_components(get_preset(model), warn=False)
    baseline = build_variant(BASELINE, components).pipeline(components)(seed=seed, steps=steps, batch=batch)
    codes, notes = [], []
    for name in names:
        try:
            code, row = run_variant(name, components, baseline, steps=steps, batch=batch, seed=seed)
        except Exception as exc:
            code, row = 1, {"variant": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=8)}
        with open(out, "a", encoding="utf-8") as fh:  # one whole line per variant, as soon as it is done
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row, indent=2), flush=True)
        codes.append(code)
        notes.append(f"{name}: {_note(row)}")
    note = os.environ.get("GPU_CHECK_NOTE")
    if note:  # the script's one-line result of this step
        Path(note).write_text("; ".join(notes), encoding="utf-8")
    if 1 in codes:
        return 1
    return SKIPPED if all(c == SKIPPED for c in codes) else 0


def _note(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')} ({row.get('reason', '')})"
    timings = row.get("timings", {})
    per_step = timings.get("denoise_s", 0.0) / max(1, row.get("steps", 1))
    return (f"ok, latent error {row['rel_latent_error']:.1e} <= {row['tolerance']:.0e}, "
            f"{per_step * 1e3:.1f} ms/step on {row.get('info', {}).get('device', '?')}")


if __name__ == "__main__":
    sys.exit(main())
