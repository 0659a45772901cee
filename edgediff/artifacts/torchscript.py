"""TorchScript artifacts: ``torch.jit.trace`` + ``freeze`` of the UNet / decoder wrappers (``model.pt``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

FILENAME = "model.pt"


def trace_module(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """Trace and freeze ``module`` on ``inputs`` (its dtype and device are the artifact's)."""
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module.eval(), inputs, check_trace=False)
        return torch.jit.freeze(traced)


def export_torchscript(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], folder: Path) -> dict[str, Any]:
    """Write ``folder/model.pt``; returns the report (file size)."""
    scripted = trace_module(module, inputs)
    path = folder / FILENAME
    scripted.save(str(path))
    return {"file": FILENAME, "size_bytes": path.stat().st_size}
