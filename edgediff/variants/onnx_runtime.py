"""ONNX Runtime variants: ONNX export -> onnxsim -> ORT with all graph optimisations (fp32 on CPU, fp16 on CUDA).

On the CPU a session is called with numpy arrays (``session_fn``). On CUDA it runs through ORT's I/O binding over
torch tensors on the GPU (``BoundSession``): inputs are bound by their device pointers and outputs written into torch
tensors allocated on the GPU, so ORT makes no host copy of its own; a caller that keeps its tensors on the GPU gets
GPU tensors back, and one that passes CPU tensors pays exactly one copy each way, as the eager PyTorch variants do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgediff.artifacts.build import IO_NAMES, build_artifact
from edgediff.artifacts.onnx_export import FILENAME
from edgediff.availability import is_cuda_available, is_onnxruntime_available, onnxruntime_providers, require
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, PartFn, Variant
from edgediff.variants.deepcache import unet_runner


def ort_session(path: Path, *, threads: int, cuda: bool, device_id: int = 0) -> Any:
    """An ``InferenceSession`` with ``ORT_ENABLE_ALL`` and ``threads`` intra-op threads (on GPU ``device_id``)."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if cuda:
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
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


_ORT_TO_TORCH = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
    "tensor(int64)": torch.int64,
    "tensor(int32)": torch.int32,
}
_TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                   torch.int64: np.int64, torch.int32: np.int32}


def _torch_dtype(ort_type: str, name: str) -> torch.dtype:
    if ort_type not in _ORT_TO_TORCH:
        raise EdgediffError(f"ONNX tensor {name!r} has type {ort_type}, which edgediff does not bind")
    return _ORT_TO_TORCH[ort_type]


class BoundSession:
    """An ORT session called like a module through I/O binding over torch tensors on ``device``.

    Each input is moved to ``device`` (a no-op when it is there already), cast to the type the graph declares and
    bound by its data pointer; each output is a torch tensor allocated on ``device`` (its shape is the graph's, with
    the symbolic first axis set to the batch) that ORT writes into. An output whose shape the graph leaves open beyond
    the batch is allocated by ORT instead and copied out. Outputs come back as fp32 on the first input's device.
    A fresh binding per call keeps concurrent calls apart (``run_with_iobinding`` is thread-safe, a binding is not).

    Args:
        session: An ``onnxruntime.InferenceSession`` whose providers can reach ``device``.
        input_names: The graph's inputs, in call order.
        device: ``cuda`` (the CUDA execution provider) or ``cpu`` (the CPU provider binds host memory the same way).
        device_id: The GPU's index (``cuda`` only).
    """

    def __init__(self, session: Any, input_names: list[str], *, device: str = "cuda", device_id: int = 0) -> None:
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda or cpu, got {device!r}")
        self.session = session
        self.input_names = list(input_names)
        declared = {i.name: i for i in session.get_inputs()}
        missing = [name for name in self.input_names if name not in declared]
        if missing:
            raise EdgediffError(f"ONNX graph has no input {missing}; it declares {sorted(declared)}")
        self._input_dtypes = {name: _torch_dtype(declared[name].type, name) for name in self.input_names}
        self._outputs = [(o.name, _torch_dtype(o.type, o.name), list(o.shape)) for o in session.get_outputs()]
        self.device_type = device
        self.device_id = device_id if device == "cuda" else 0
        self.device = torch.device(device, device_id) if device == "cuda" else torch.device("cpu")

    def output_shape(self, declared: list[Any], batch: int) -> tuple[int, ...] | None:
        """``declared`` with a symbolic first axis set to ``batch``; None when another axis is symbolic."""
        shape = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(declared)]
        if not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
            return None
        return tuple(shape)

    def __call__(self, *args: torch.Tensor) -> Any:
        """Run once; one output gives a tensor, several a tuple (the DeepCache ``unet-full`` part)."""
        if len(args) != len(self.input_names):
            raise TypeError(f"ONNX session takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                            f"got {len(args)}")
        home = args[0].device
        batch = int(args[0].shape[0]) if args[0].dim() else 1
        binding = self.session.io_binding()
        inputs = []  # alive until the run has read them
        for name, arg in zip(self.input_names, args, strict=True):
            tensor = arg.to(self.device, self._input_dtypes[name]).contiguous()
            binding.bind_input(name, self.device_type, self.device_id, _TORCH_TO_NUMPY[tensor.dtype],
                               tuple(tensor.shape), tensor.data_ptr())
            inputs.append(tensor)
        outputs: list[torch.Tensor | None] = []
        for name, dtype, declared in self._outputs:
            shape = self.output_shape(declared, batch)
            if shape is None:
                binding.bind_output(name, self.device_type, self.device_id)
                outputs.append(None)
                continue
            out = torch.empty(shape, dtype=dtype, device=self.device)
            binding.bind_output(name, self.device_type, self.device_id, _TORCH_TO_NUMPY[dtype], shape, out.data_ptr())
            outputs.append(out)
        if self.device.type == "cuda":  # ORT reads on its own stream: the copies above must have landed
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # the CUDA provider synchronizes before returning
        if any(o is None for o in outputs):
            allocated = binding.get_outputs()
            outputs = [torch.from_numpy(allocated[i].numpy()) if o is None else o for i, o in enumerate(outputs)]
        results = tuple(o.to(home, torch.float32) for o in outputs if o is not None)
        return results[0] if len(results) == 1 else results


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

    def load_part(
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cpu"
    ) -> PartFn:
        """An ORT session over ``model.onnx``: through I/O binding on CUDA (``BoundSession``), numpy on the CPU."""
        input_names = IO_NAMES[part][0]
        if device == "cpu":
            return session_fn(ort_session(Path(artifact), threads=options.resolved_threads(), cuda=False),
                              input_names)
        index = torch.device(device).index
        device_id = torch.cuda.current_device() if index is None else index
        session = ort_session(Path(artifact), threads=options.resolved_threads(), cuda=True, device_id=device_id)
        return BoundSession(session, input_names, device="cuda", device_id=device_id)

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        info: dict[str, Any] = {"device": "cuda" if self._cuda() else "cpu", "precision": self.precision,
                                "threads": options.resolved_threads(), "artifacts": {},
                                "deepcache_interval": options.deepcache_interval}

        def part_fn(part: str) -> PartFn:
            folder, report = build_artifact(model, part, f"onnx-{self.precision}")
            info["artifacts"][part] = {"path": str(folder / FILENAME), **report}
            device = f"cuda:{torch.cuda.current_device()}" if self._cuda() else "cpu"
            if device != "cpu":  # device tensors through I/O binding: no numpy round trip inside ORT
                info["io_binding"] = True
            return self.load_part(part, folder / FILENAME, options, preset=model.preset, device=device)

        return BuiltVariant(self.name, unet_runner(part_fn, options.deepcache_interval), part_fn("vqdec"), info)
