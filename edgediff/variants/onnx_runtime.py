"""ONNX Runtime variants: ONNX export -> onnxsim -> ORT with all graph optimisations (fp32 on CPU, fp16 on CUDA)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts.build import IO_NAMES, build_artifact
from edgediff.artifacts.onnx_export import FILENAME
from edgediff.availability import is_cuda_available, is_onnxruntime_available, onnxruntime_providers, require
from edgediff.models.weights import LDMComponents
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, Variant
from edgediff.variants.deepcache import unet_runner


def ort_session(path: Path, *, threads: int, cuda: bool) -> Any:
    """An ``InferenceSession`` with ``ORT_ENABLE_ALL`` and ``threads`` intra-op threads."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def session_fn(session: Any, input_names: list[str]) -> Callable[..., torch.Tensor]:
    """Call an ORT session like a module: CPU tensors in, CPU fp32 tensor out.

    A session with several outputs (the DeepCache ``unet-full`` part) gives a tuple of them.
    """

    def run(*args: torch.Tensor) -> Any:
        feeds = {name: np.ascontiguousarray(a.cpu().numpy()) for name, a in zip(input_names, args, strict=True)}
        outputs = [torch.from_numpy(o).float() for o in session.run(None, feeds)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    return run


class OnnxVariant(Variant):
    """ONNX Runtime over the onnxsim-simplified export.

    Args:
        precision: ``fp32`` (CPU or CUDA) or ``fp16`` (CUDA execution provider only).
    """

    backend = "onnx"
    supports_deepcache = True

    def __init__(self, precision: str) -> None:
        self.precision = precision
        self.name = f"onnx-{precision}"
        self.device = "cuda" if precision == "fp16" else "auto"
        self.description = f"ONNX export + onnxsim + ONNX Runtime (ORT_ENABLE_ALL), {precision}"
        self.tolerance = 1e-4 if precision == "fp32" else 5e-2

    def _cuda(self) -> bool:
        return is_cuda_available() and "CUDAExecutionProvider" in onnxruntime_providers()

    def availability(self) -> Availability:  # noqa: D102
        if not is_onnxruntime_available():
            return Availability.no("needs onnx, onnxsim and onnxruntime: pip install 'edgediff[onnx]'")
        if self.precision == "fp16" and not self._cuda():
            return Availability.no("needs onnxruntime-gpu with the CUDA execution provider and a CUDA device")
        return Availability.yes()

    def build(self, components: LDMComponents, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        info: dict[str, Any] = {"device": "cuda" if self._cuda() else "cpu", "precision": self.precision,
                                "threads": options.resolved_threads(), "artifacts": {},
                                "deepcache_interval": options.deepcache_interval}

        def part_fn(part: str) -> Callable[..., torch.Tensor]:
            folder, report = build_artifact(components, part, f"onnx-{self.precision}")
            session = ort_session(folder / FILENAME, threads=options.resolved_threads(), cuda=self._cuda())
            info["artifacts"][part] = {"path": str(folder / FILENAME), **report}
            return session_fn(session, IO_NAMES[part][0])

        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)
