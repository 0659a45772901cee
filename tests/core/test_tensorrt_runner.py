"""TensorRTRunner at its boundary: batches chunked by the plan's optimisation profile, refused shapes named.

A stand-in engine and execution context play TensorRT's part on the CPU: the context answers ``set_input_shape``
with False outside the profile (as TensorRT does, without raising) and computes its output by reading and writing
the raw addresses the runner binds, so the chunking, the binding and the error paths are exercised for real. The
real engine runs in the ``gpu`` test at the end (a CUDA machine with tensorrt).
"""

import ctypes

import numpy as np
import pytest
import torch

from edgediff.artifacts.tensorrt_plan import PROFILE_MAX_BATCH, profile_ranges
from edgediff.errors import EdgediffError
from edgediff.variants.tensorrt_engine import TensorRTRunner, TensorRTShapeError

LATENT = (3, 8, 8)
DTYPES = {"FLOAT": torch.float32, "INT64": torch.int64}
NUMPY = {"FLOAT": ctypes.c_float, "INT64": ctypes.c_int64}


class StandInEngine:
    """The engine calls TensorRTRunner makes: profile shapes and tensor data types."""

    def __init__(self, max_batch: int = PROFILE_MAX_BATCH, latent: tuple[int, ...] = LATENT) -> None:
        self.profile = profile_ranges({"sample": (1, *latent), "timestep": (1,)}, max_batch)
        self.dtypes = {"sample": "FLOAT", "timestep": "INT64", "noise": "FLOAT"}

    def get_tensor_profile_shape(self, name, profile_index):
        assert profile_index == 0
        return [list(shape) for shape in self.profile[name]]

    def get_tensor_dtype(self, name):
        return self.dtypes[name]


class StandInContext:
    """An execution context: noise = 2 * sample + timestep, computed through the bound addresses."""

    def __init__(self, engine: StandInEngine, *, refuse: bool = False, fail: bool = False) -> None:
        self.engine = engine
        self.refuse, self.fail = refuse, fail
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executed: list[tuple[int, ...]] = []

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.profile[name]
        fits = len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True))
        if self.refuse or not fits:
            return False  # TensorRT logs an error and answers False; it does not raise
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def get_tensor_shape(self, name):
        assert name == "noise"
        return self.shapes.get("sample", (-1, *LATENT))

    def _array(self, name, shape):
        count = int(np.prod(shape))
        buffer = (NUMPY[self.engine.dtypes[name]] * count).from_address(self.addresses[name])
        return np.ctypeslib.as_array(buffer).reshape(shape)

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 0  # no CUDA stream on the CPU stand-in
        if self.fail:
            return False
        shape = self.shapes["sample"]
        sample = self._array("sample", shape)
        timestep = self._array("timestep", (shape[0],))
        self._array("noise", shape)[...] = 2 * sample + timestep.reshape(-1, 1, 1, 1)
        self.executed.append(shape)
        return True


def runner_for(context: StandInContext) -> TensorRTRunner:
    return TensorRTRunner(context.engine, context, ["sample", "timestep"], ["noise"], DTYPES, device="cpu",
                          label="unet/model.plan")


def inputs(batch: int, latent: tuple[int, ...] = LATENT) -> tuple[torch.Tensor, torch.Tensor]:
    sample = torch.randn((batch, *latent), generator=torch.Generator().manual_seed(batch))
    return sample, torch.arange(batch, dtype=torch.int64) * 50


def expected(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    return 2 * sample + timestep.float().reshape(-1, 1, 1, 1)


def test_the_runner_reads_the_profile_back_from_the_engine():
    runner = runner_for(StandInContext(StandInEngine(max_batch=4)))
    assert (runner.min_batch, runner.max_batch) == (1, 4)
    assert runner.profile["sample"] == ((1, *LATENT), (1, *LATENT), (4, *LATENT))
    assert runner.profile["timestep"] == ((1,), (1,), (4,))


@pytest.mark.parametrize(("batch", "chunks"), [(1, [1]), (4, [4]), (10, [4, 4, 2]), (16, [4, 4, 4, 4])])
def test_a_batch_above_the_profile_runs_in_chunks(batch, chunks):
    context = StandInContext(StandInEngine(max_batch=4))
    sample, timestep = inputs(batch)
    out = runner_for(context)(sample, timestep)
    assert [shape[0] for shape in context.executed] == chunks
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, expected(sample, timestep), rtol=0, atol=0)


def test_inputs_are_cast_to_the_engines_types():
    context = StandInContext(StandInEngine())
    sample, timestep = inputs(3)
    out = runner_for(context)(sample.double(), timestep.to(torch.int32))  # float64 / int32 in; FLOAT / INT64 bound
    torch.testing.assert_close(out, expected(sample, timestep), rtol=0, atol=0)


def test_a_shape_outside_the_profile_is_named_with_the_profiles_range():
    context = StandInContext(StandInEngine(latent=LATENT))
    with pytest.raises(TensorRTShapeError) as info:
        runner_for(context)(*inputs(2, latent=(3, 16, 16)))
    message = str(info.value)
    assert "unet/model.plan" in message and "'sample'" in message
    assert "(2, 3, 16, 16)" in message and "min (1, 3, 8, 8), max (4, 3, 8, 8)" in message
    assert context.executed == []


def test_false_from_set_input_shape_becomes_a_clear_error():
    # the runner's own check passes; TensorRT still answers False (say, a plan with stricter internal limits)
    context = StandInContext(StandInEngine(), refuse=True)
    with pytest.raises(TensorRTShapeError, match=r"refused input 'sample' of shape \(2, 3, 8, 8\) \(optimisation "
                                                 r"profile min \(1, 3, 8, 8\), max \(4, 3, 8, 8\)\)"):
        runner_for(context)(*inputs(2))
    assert context.executed == []


def test_a_failed_execution_raises():
    context = StandInContext(StandInEngine(), fail=True)
    with pytest.raises(EdgediffError, match=r"TensorRT execution of unet/model\.plan failed"):
        runner_for(context)(*inputs(1))


def test_inputs_must_agree_on_the_batch():
    sample, _ = inputs(3)
    with pytest.raises(TensorRTShapeError, match="different batch sizes"):
        runner_for(StandInContext(StandInEngine()))(sample, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="takes 2 inputs"):
        runner_for(StandInContext(StandInEngine()))(sample)


def test_a_profile_with_no_common_batch_is_refused():
    engine = StandInEngine()
    engine.profile["timestep"] = ((5,), (5,), (8,))
    with pytest.raises(TensorRTShapeError, match="no common batch"):
        runner_for(StandInContext(engine))


@pytest.mark.gpu
def test_a_real_plan_runs_a_batch_above_its_profile(tiny_components):
    from edgediff.availability import is_cuda_available, is_onnxruntime_available, is_tensorrt_available

    if not (is_cuda_available() and is_tensorrt_available() and is_onnxruntime_available()):
        pytest.skip("needs a CUDA device, the tensorrt package and the ONNX export (onnx, onnxsim, onnxruntime)")
    from edgediff.artifacts.build import IO_NAMES, build_artifact, part_module
    from edgediff.artifacts.tensorrt_plan import FILENAME

    folder, report = build_artifact(tiny_components, "unet", "tensorrt-fp16")
    assert report["max_batch"] == PROFILE_MAX_BATCH
    runner = TensorRTRunner.from_plan(folder / FILENAME, *IO_NAMES["unet"])
    batch = 2 * PROFILE_MAX_BATCH + 1
    sample = torch.randn((batch, *tiny_components.preset.latent_shape), generator=torch.Generator().manual_seed(0))
    timestep = torch.full((batch,), 500, dtype=torch.int64)
    out = runner(sample, timestep)
    with torch.inference_mode():
        reference = part_module(tiny_components, "unet")(sample, timestep)
    assert out.shape == reference.shape and out.device.type == "cpu"
    assert float((out - reference).norm() / reference.norm()) < 5e-2  # fp16 kernels
    on_gpu = runner(sample.cuda(), timestep.cuda())
    assert on_gpu.device.type == "cuda"  # a caller on the GPU gets GPU tensors back
