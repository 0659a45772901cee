"""The TensorRT fp16 variant (the study's fastest): an engine built from the simplified ONNX, run on CUDA tensors.

A plan accepts only the shapes of its optimisation profile (``edgediff.artifacts.tensorrt_plan``: batch 1..4), while
the pipeline accepts batches up to ``edgediff.pipeline.MAX_BATCH``. ``TensorRTRunner`` reads the profile back from the
engine and runs a larger batch in chunks of at most the profile's largest batch, as the Triton pipeline model does for
its part models; a shape the profile cannot take at all is refused with the shape and the profile's range (TensorRT
itself answers ``False`` from ``set_input_shape`` rather than raising).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edgediff.artifacts.build import IO_NAMES, build_artifact
from edgediff.artifacts.tensorrt_plan import FILENAME
from edgediff.availability import is_cuda_available, is_onnxruntime_available, is_tensorrt_available, require
from edgediff.errors import EdgediffError
from edgediff.models.presets import ModelPreset
from edgediff.models.spec import ModelSpec
from edgediff.variants.base import Availability, BuildOptions, BuiltVariant, PartFn, StatelessUNet, Variant

Shape = tuple[int, ...]


class TensorRTShapeError(EdgediffError):
    """An input shape the engine's optimisation profile does not cover (the message names both)."""


def trt_torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    """TensorRT ``DataType`` -> torch dtype, for the types an edgediff plan's tensors can have."""
    dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32}
    for name, dtype in (("INT64", torch.int64), ("BF16", torch.bfloat16)):  # TensorRT 10 names
        if hasattr(trt.DataType, name):
            dtypes[getattr(trt.DataType, name)] = dtype
    return dtypes


class TensorRTRunner:
    """A deserialized engine called like a module: tensors in, fp32 tensors out on the first input's device.

    Batches larger than the optimisation profile's largest batch run in chunks (concatenated back); every
    ``set_input_shape``, ``set_tensor_address`` and ``execute_async_v3`` answer is checked. One execution context
    runs one call at a time (a lock), so concurrent generations may share the runner.

    Args:
        engine: A ``tensorrt.ICudaEngine`` (or anything with ``get_tensor_profile_shape``, ``get_tensor_dtype``).
        context: Its ``IExecutionContext`` (``set_input_shape``, ``set_tensor_address``, ``get_tensor_shape``,
            ``execute_async_v3``).
        input_names: The engine's inputs, in call order.
        output_names: Its outputs; one gives a tensor back, several a tuple.
        dtypes: Engine data type -> torch dtype (``trt_torch_dtypes``).
        device: Where the engine's tensors live (``cuda``; the tests' stand-in engine runs on ``cpu``).
        label: Names the plan in errors (its path).
        profile_index: The optimisation profile the context uses.
    """

    def __init__(
        self,
        engine: Any,
        context: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        dtypes: Mapping[Any, torch.dtype],
        *,
        device: str = "cuda",
        label: str = FILENAME,
        profile_index: int = 0,
    ) -> None:
        self.engine = engine
        self.context = context
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.device = torch.device(device)
        self.label = label
        self._dtypes = {name: dtypes[engine.get_tensor_dtype(name)] for name in [*self.input_names,
                                                                                *self.output_names]}
        self.profile: dict[str, tuple[Shape, Shape, Shape]] = {}
        for name in self.input_names:
            low, opt, high = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name,
                                                                                                   profile_index))
            self.profile[name] = (low, opt, high)
        self.min_batch = max(low[0] for low, _, _ in self.profile.values())
        self.max_batch = min(high[0] for _, _, high in self.profile.values())
        if self.min_batch > self.max_batch or self.max_batch < 1:
            raise TensorRTShapeError(f"TensorRT plan {label}: its optimisation profile allows no common batch "
                                     f"({self._ranges()})")
        self._lock = threading.Lock()

    @classmethod
    def from_plan(cls, plan: Path, input_names: Sequence[str], output_names: Sequence[str]) -> TensorRTRunner:
        """Deserialize ``plan`` on the current CUDA device and wrap it.

        Raises:
            BackendMissingError: tensorrt is not installed.
            EdgediffError: the plan could not be deserialized (another GPU or TensorRT version built it).
        """
        trt = require("tensorrt")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if engine is None:
            raise EdgediffError(f"TensorRT could not deserialize {plan}: a plan runs only on the GPU model and "
                                f"TensorRT version that built it; delete it to rebuild (TensorRT {trt.__version__})")
        context = engine.create_execution_context()
        return cls(engine, context, input_names, output_names, trt_torch_dtypes(trt), device="cuda", label=str(plan))

    def _ranges(self) -> str:
        return "; ".join(f"{name}: min {low}, max {high}" for name, (low, _, high) in self.profile.items())

    def _check_shape(self, name: str, shape: Shape) -> None:
        low, _, high = self.profile[name]
        fits = len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True))
        if not fits:
            raise TensorRTShapeError(f"TensorRT plan {self.label}: input {name!r} of shape {shape} is outside its "
                                     f"optimisation profile (min {low}, max {high}); the plan was built for another "
                                     "model shape: delete it to rebuild")

    def __call__(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run on a batch of any size (chunked by the profile); outputs are fp32 on ``args[0]``'s device.

        Raises:
            TensorRTShapeError: an input's shape is outside the profile (other than a batch above its largest),
                the inputs disagree on the batch, or TensorRT refused a shape.
            EdgediffError: TensorRT refused a tensor address or the execution failed.
        """
        if len(args) != len(self.input_names):
            raise TypeError(f"TensorRT plan {self.label} takes {len(self.input_names)} inputs "
                            f"({', '.join(self.input_names)}), got {len(args)}")
        batches = {int(a.shape[0]) if a.dim() else -1 for a in args}
        if len(batches) != 1:
            raise TensorRTShapeError(f"TensorRT plan {self.label}: inputs {self.input_names} have different batch "
                                     f"sizes {[tuple(a.shape) for a in args]}")
        batch = batches.pop()
        if batch < self.min_batch:
            raise TensorRTShapeError(f"TensorRT plan {self.label}: batch {batch} is below its optimisation profile "
                                     f"({self._ranges()})")
        home = args[0].device
        chunks = [self._run([a[i:i + self.max_batch] for a in args]) for i in range(0, batch, self.max_batch)]
        outputs = tuple(torch.cat(parts) if len(parts) > 1 else parts[0] for parts in zip(*chunks, strict=True))
        outputs = tuple(o.to(home, torch.float32) for o in outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def _run(self, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with self._lock:
            inputs = []  # kept alive until the engine has read them
            for name, arg in zip(self.input_names, args, strict=True):
                tensor = arg.to(self.device, self._dtypes[name]).contiguous()
                shape = tuple(tensor.shape)
                self._check_shape(name, shape)
                if not self.context.set_input_shape(name, shape):
                    low, _, high = self.profile[name]
                    raise TensorRTShapeError(f"TensorRT plan {self.label} refused input {name!r} of shape {shape} "
                                             f"(optimisation profile min {low}, max {high})")
                self._set_address(name, tensor)
                inputs.append(tensor)
            outputs = []
            for name in self.output_names:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise TensorRTShapeError(f"TensorRT plan {self.label}: output {name!r} has no shape ({shape}) "
                                             f"for inputs {[tuple(t.shape) for t in inputs]}")
                out = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                self._set_address(name, out)
                outputs.append(out)
            cuda = self.device.type == "cuda"
            stream = torch.cuda.current_stream(self.device) if cuda else None
            if not self.context.execute_async_v3(stream.cuda_stream if stream is not None else 0):
                raise EdgediffError(f"TensorRT execution of {self.label} failed (inputs "
                                    f"{[tuple(t.shape) for t in inputs]}); TensorRT's log above says why")
            if stream is not None:
                stream.synchronize()
            return outputs

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EdgediffError(f"TensorRT plan {self.label} refused the address of tensor {name!r} "
                                f"({tuple(tensor.shape)} {tensor.dtype} on {tensor.device})")


class TensorRTVariant(Variant):
    """TensorRT engine with fp16 kernels allowed (inputs and outputs fp32)."""

    name = "trt-fp16"
    backend = "trt"
    precision = "fp16"
    device = "cuda"
    description = "TensorRT engine (fp16) built from the simplified ONNX (CUDA only)"
    tolerance = 5e-2

    def availability(self) -> Availability:  # noqa: D102
        if not is_cuda_available():
            return Availability.no("needs a CUDA device")
        if not is_tensorrt_available():
            return Availability.no("needs the tensorrt Python package: pip install 'edgediff[gpu]'")
        if not is_onnxruntime_available():
            return Availability.no("the engine is built from the ONNX export: pip install 'edgediff[onnx]'")
        return Availability.yes()

    def load_part(
        self, part: str, artifact: Path, options: BuildOptions, *, preset: ModelPreset, device: str = "cuda"
    ) -> PartFn:
        """The deserialized plan (``TensorRTRunner``) on the current CUDA device."""
        if not device.startswith("cuda"):
            raise EdgediffError(f"variant {self.name} runs on a CUDA device only, not on {device}")
        inputs, outputs = IO_NAMES[part]
        return TensorRTRunner.from_plan(Path(artifact), inputs, outputs[:1])

    def build(self, model: ModelSpec, options: BuildOptions) -> BuiltVariant:  # noqa: D102
        runners: dict[str, Any] = {}  # TensorRTRunner
        info: dict[str, Any] = {"device": "cuda", "precision": "fp16", "artifacts": {}}
        for part in ("unet", "vqdec"):
            folder, report = build_artifact(model, part, "tensorrt-fp16")
            runners[part] = self.load_part(part, folder / FILENAME, options, preset=model.preset)
            info["artifacts"][part] = {"path": str(folder / FILENAME), **report,
                                       "profile_batch": [runners[part].min_batch, runners[part].max_batch]}
        return BuiltVariant(self.name, StatelessUNet(runners["unet"]), runners["vqdec"], info)  # type: ignore[arg-type]
