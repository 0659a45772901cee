"""Probes for optional backends, done once and cheaply (no heavy import unless needed to answer).

Each ``is_X_available()`` answers from ``importlib.util.find_spec`` where that suffices; ``require(name)`` imports
a backend lazily with an install hint when it is missing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

from edgediff.errors import BackendMissingError
from edgediff.usage_reporting import decline_unasked_usage_reporting

_INSTALL_HINTS = {
    "onnx": "pip install 'edgediff[onnx]'",
    "onnxruntime": "pip install 'edgediff[onnx]' (or onnxruntime-gpu on CUDA machines)",
    "onnxsim": "pip install 'edgediff[onnx]'",
    "openvino": "pip install 'edgediff[openvino]'",
    "nncf": "pip install 'edgediff[openvino]'",
    "tensorrt": "pip install 'edgediff[gpu]' (needs a CUDA machine)",
    "tritonclient": "pip install 'edgediff[triton]'",
    "grpc": "pip install 'edgediff[serve]'",
    "prometheus_client": "pip install 'edgediff[telemetry]'",
    "pynvml": "pip install nvidia-ml-py",
    "matplotlib": "pip install 'edgediff[bench]'",
    "locust": "pip install 'edgediff[loadtest]'",
    "docker": "pip install 'edgediff[deploy]'",
    "sklearn": "pip install 'edgediff[quality]'",
}
_REPORTING_USAGE = frozenset({"openvino", "nncf"})
"""Backends whose tools report usage to their vendor unless the user opted out (``edgediff.usage_reporting``)."""


@functools.cache
def is_module_available(name: str) -> bool:
    """Return True when ``name`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require(name: str) -> ModuleType:
    """Import an optional backend, or raise ``BackendMissingError`` with the install hint.

    OpenVINO's tools are imported with their unasked usage reporting declined (``edgediff.usage_reporting``).

    Args:
        name: The module to import, e.g. ``"onnxruntime"``.
    """
    if name.split(".")[0] in _REPORTING_USAGE:
        decline_unasked_usage_reporting()
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(name.split(".")[0], f"pip install {name}")
        raise BackendMissingError(f"{name} is not installed ({exc}); install it with: {hint}") from exc


def is_onnxruntime_available() -> bool:
    """ONNX Runtime (CPU or GPU build) plus onnx and onnxsim for the export."""
    return all(is_module_available(m) for m in ("onnxruntime", "onnx", "onnxsim"))


def is_openvino_available() -> bool:
    """OpenVINO runtime."""
    return is_module_available("openvino")


def is_tensorrt_available() -> bool:
    """TensorRT Python API."""
    return is_module_available("tensorrt")


@functools.cache
def is_cuda_available() -> bool:
    """A CUDA device that torch can use."""
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def onnxruntime_providers() -> tuple[str, ...]:
    """Execution providers of the installed ONNX Runtime, or () when it is missing."""
    if not is_module_available("onnxruntime"):
        return ()
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


@functools.cache
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 BF16, AMX, or Arm BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16", " bf16"))
