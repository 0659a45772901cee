"""ONNX artifacts: export with dynamic batch, simplify with onnxsim, optionally convert to fp16.

The export report carries the op-count table before and after onnxsim (the study's Figure 3) and the model sizes.
Models over 2 GB are written with external data (``model.onnx`` + ``model.onnx.data``).
"""

from __future__ import annotations

import collections
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from edgediff.availability import require

logger = logging.getLogger(__name__)

FILENAME = "model.onnx"
OPSET = 17
_TWO_GB = 2**31 - 1


def op_counts(model: Any) -> dict[str, int]:
    """Count nodes per op type in an ``onnx.ModelProto`` (main graph), most frequent first."""
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return dict(counts.most_common())


def _save(model: Any, path: Path) -> None:
    onnx = require("onnx")
    external = model.ByteSize() > _TWO_GB if _serialisable(model) else True
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data" if external else None)


def _serialisable(model: Any) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf refuses to size messages over 2 GB
        return False


def _file_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def export_onnx(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    folder: Path,
    *,
    fp16: bool = False,
    simplify: bool = True,
    dynamic_spatial: bool = False,
) -> dict[str, Any]:
    """Export ``module`` to ``folder/model.onnx`` (batch axis dynamic), run onnxsim, optionally convert to fp16.

    Args:
        module: A tensor-in, tensor-out wrapper (``edgediff.artifacts.modules``).
        inputs: Example inputs (batch 1).
        input_names: Graph input names, in order.
        output_names: Graph output names.
        folder: Where to write.
        fp16: Convert the simplified fp32 graph to fp16 (inputs and outputs stay fp32).
        simplify: Run onnxsim (the study's optimisation); its result is checked by onnxsim itself.
        dynamic_spatial: Make height and width (axes 2 and 3) of every 4-D input and output dynamic too, so the
            graph can be reshaped to other image sizes (the low-memory variant's tiled decoder).

    Returns:
        The export report: ``export_s``, ``simplify_s``, ``ops_before``, ``ops_after``, sizes.
    """
    onnx = require("onnx")
    raw_path = folder / "raw.onnx"
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in [*input_names, *output_names]}
    if dynamic_spatial:
        for name, tensor in zip(input_names, inputs, strict=True):
            if tensor.dim() == 4:
                dynamic_axes[name].update({2: f"{name}_height", 3: f"{name}_width"})
        for name in output_names:
            dynamic_axes[name].update({2: f"{name}_height", 3: f"{name}_width"})
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), inputs, str(raw_path), input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    report: dict[str, Any] = {"export_s": time.perf_counter() - t0, "opset": OPSET}
    model = onnx.load(str(raw_path))
    report["ops_before"] = op_counts(model)
    report["size_before_bytes"] = _file_size(raw_path)
    if simplify:
        onnxsim = require("onnxsim")
        t1 = time.perf_counter()
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim could not validate the simplified model")
        model = simplified
        report["simplify_s"] = time.perf_counter() - t1
    report["ops_after"] = op_counts(model)
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        report["ops_fp16"] = op_counts(model)
    path = folder / FILENAME
    _save(model, path)
    for leftover in folder.glob("raw.onnx*"):
        leftover.unlink()
    report["file"] = FILENAME
    report["size_bytes"] = _file_size(path)
    return report
