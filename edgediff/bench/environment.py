"""The environment fingerprint of a report: the machine, its accelerators, the software, the code's commit.

Every probe is cheap and never fails the benchmark: what cannot be read is recorded as ``None`` with a reason.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgediff.constants import ENV_THREADS
from edgediff.processes import run_child

LIBRARIES = ("edgediff", "torch", "diffusers", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino",
             "tensorrt", "nvidia-ml-py", "tritonclient", "grpcio")
"""Distributions whose versions go into a report (those not installed are left out)."""
_PROBE_TIMEOUT_S = 5.0


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (x86 ``model name``; Arm ``Hardware``/``Model``)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model name", "hardware", "model", "cpu model", "processor"):
        value = fields.get(key)
        if value and not value.isdigit():
            return value
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> dict[str, int | None]:
    import psutil

    return {"physical": psutil.cpu_count(logical=False), "logical": psutil.cpu_count(logical=True)}


def _memory_total_bytes() -> int | None:
    import psutil

    try:
        return int(psutil.virtual_memory().total)
    except (OSError, RuntimeError):
        return None


def gpu_info() -> dict[str, Any]:
    """NVIDIA GPUs and driver through NVML (nvidia-ml-py), plus what torch sees; a reason when there are none."""
    out: dict[str, Any] = {"devices": [], "driver": None, "cuda_runtime": None, "reason": None}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["cuda_runtime"] = getattr(torch.version, "cuda", None)
    try:
        import pynvml
    except ImportError:
        out["reason"] = "nvidia-ml-py is not installed"
        return out
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses per cause; the message is what matters
        out["reason"] = f"NVML unavailable: {exc}"
        return out
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out["devices"].append({"index": index, "name": name.decode() if isinstance(name, bytes) else name,
                                   "memory_total_bytes": int(memory.total)})
    except Exception as exc:
        out["reason"] = f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(Exception):  # shutting down a half-failed library must not fail the report
            pynvml.nvmlShutdown()
    if not out["devices"] and out["reason"] is None:
        out["reason"] = "NVML found no GPU"
    return out


def _run(command: list[str]) -> str | None:

    try:  # an owned child (edgediff.processes): stopped on timeout and with this process
        done = run_child(command, timeout_s=_PROBE_TIMEOUT_S, capture=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def jetson_info(root: str | Path = "/") -> dict[str, Any] | None:
    """Jetson model, L4T release and power mode (``nvpmodel -q``); ``None`` on anything that is not a Jetson."""
    root = Path(root)
    release = root / "etc" / "nv_tegra_release"
    model_path = root / "proc" / "device-tree" / "model"
    nvpmodel = shutil.which("nvpmodel")
    if not release.is_file() and nvpmodel is None:
        return None
    info: dict[str, Any] = {"model": None, "l4t_release": None, "power_mode": None, "reason": None}
    with contextlib.suppress(OSError):
        info["model"] = model_path.read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    with contextlib.suppress(OSError, IndexError):
        info["l4t_release"] = release.read_text(encoding="utf-8", errors="replace").splitlines()[0].strip()
    if nvpmodel is None:
        info["reason"] = "nvpmodel not found on PATH"
    else:
        text = _run([nvpmodel, "-q"])
        if text is None:
            info["reason"] = "'nvpmodel -q' failed (it may need root)"
        else:
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            mode = next((ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("nv power mode")), None)
            info["power_mode"] = mode or " / ".join(lines)
    return info


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of ``names`` (distributions that are not installed are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(folder: str | Path | None = None) -> dict[str, Any]:
    """The commit of the checkout ``folder`` (default: the one holding this package) and whether it is dirty."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[2]
    git = shutil.which("git")
    if git is None:
        return {"commit": None, "dirty": None, "reason": "git not found on PATH"}
    commit = _run([git, "-C", str(folder), "rev-parse", "HEAD"])
    if commit is None:
        return {"commit": None, "dirty": None, "reason": f"{folder} is not a git checkout"}
    status = _run([git, "-C", str(folder), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "reason": None}


def default_label(env: dict[str, Any]) -> str:
    """A device label for ``compare``: the Jetson model, else the first GPU, else the CPU model."""
    jetson = env.get("jetson") or {}
    if jetson.get("model"):
        return str(jetson["model"])
    devices = (env.get("gpu") or {}).get("devices") or []
    if devices:
        return str(devices[0]["name"])
    return str(env["cpu"]["model"])


def fingerprint(label: str | None = None) -> dict[str, Any]:
    """The whole environment fingerprint of a report.

    Args:
        label: The device's name in ``edgediff compare`` tables; default from the hardware (``default_label``).
    """
    cores = _cores()
    env: dict[str, Any] = {
        "cpu": {"model": cpu_model(), "architecture": platform.machine(), "physical_cores": cores["physical"],
                "logical_cores": cores["logical"]},
        "memory_total_bytes": _memory_total_bytes(),
        "gpu": gpu_info(),
        "jetson": jetson_info(),
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "python": platform.python_version(),
        "libraries": library_versions(),
        "git": git_commit(),
        "threads_env": os.environ.get(ENV_THREADS),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    env["label"] = label or default_label(env)
    return env
