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
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, StatelessUNet, Variant


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
    """Call an ORT session like a module: CPU tensors in, CPU fp32 tensor out."""

    def run(*args: torch.Tensor) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(a.cpu().numpy()) for name, a in zip(input_names, args, strict=True)}
        return torch.from_numpy(session.run(None, feeds)[0]).float()

    return run


class OnnxVariant(Variant):
    """ONNX Runtime over the onnxsim-simplified export.

    Args:
        precision: ``fp32`` (CPU or CUDA) or ``fp16`` (CUDA execution provider only).
    """

    backend = "onnx"

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
        runners: dict[str, Callable[..., torch.Tensor]] = {}
        info: dict[str, Any] = {"device": "cuda" if self._cuda() else "cpu", "precision": self.precision,
                                "threads": options.resolved_threads(), "artifacts": {}}
        for part in ("unet", "vqdec"):
            folder, report = build_artifact(components, part, f"onnx-{self.precision}")
            session = ort_session(folder / FILENAME, threads=options.resolved_threads(), cuda=self._cuda())
            runners[part] = session_fn(session, IO_NAMES[part][0])
            info["artifacts"][part] = {"path": str(folder / FILENAME), **report}
        return BuiltVariant(self.name, StatelessUNet(runners["unet"]), runners["vqdec"], info)
