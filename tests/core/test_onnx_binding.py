"""ONNX Runtime through I/O binding (``BoundSession``): the same numbers as ``session.run``, no numpy in between.

ORT's CPU provider binds host memory exactly as the CUDA provider binds device memory, so the binding logic (input
casts, output allocation from the graph's shapes, the fallback for outputs of open shape, several outputs) is tested
here on the CPU; the ``gpu`` tests check that CUDA tensors stay on the GPU.
"""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from edgediff.errors import EdgediffError  # noqa: E402
from edgediff.variants.onnx_runtime import BoundSession, ort_session, session_fn  # noqa: E402


def small_graph(path, *, open_feature: bool = False):
    """noise = 2 * sample + timestep (broadcast), feature = ReduceMean(sample) over H, W: two outputs, batch axis."""
    sample = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 3, 4, 4])
    timestep = helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch"])
    noise = helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", 3, 4, 4])
    feature = helper.make_tensor_value_info("feature", TensorProto.FLOAT,
                                            ["batch", "channels"] if open_feature else ["batch", 3])
    nodes = [
        helper.make_node("Constant", [], ["two"], value=helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])),
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("shape", TensorProto.INT64, [4],
                                                                             [-1, 1, 1, 1])),
        helper.make_node("Cast", ["timestep"], ["t_float"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["t_float", "shape"], ["t4"]),
        helper.make_node("Mul", ["sample", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "t4"], ["noise"]),
        helper.make_node("ReduceMean", ["sample"], ["feature"], axes=[2, 3], keepdims=0),
    ]
    graph = helper.make_graph(nodes, "small", [sample, timestep], [noise, feature])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def inputs(batch: int):
    sample = torch.randn((batch, 3, 4, 4), generator=torch.Generator().manual_seed(batch))
    return sample, torch.arange(batch, dtype=torch.int64) * 100


@pytest.mark.parametrize("batch", [1, 3])
def test_binding_gives_what_session_run_gives(tmp_path, batch):
    session = ort_session(small_graph(tmp_path / "m.onnx"), threads=1, cuda=False)
    bound = BoundSession(session, ["sample", "timestep"], device="cpu")
    sample, timestep = inputs(batch)
    noise, feature = bound(sample, timestep)
    ref_noise, ref_feature = session.run(None, {"sample": sample.numpy(), "timestep": timestep.numpy()})
    assert noise.dtype == feature.dtype == torch.float32 and noise.device.type == "cpu"
    np.testing.assert_array_equal(noise.numpy(), ref_noise)
    np.testing.assert_array_equal(feature.numpy(), ref_feature)
    np.testing.assert_allclose(noise.numpy(), (2 * sample + timestep.float().reshape(-1, 1, 1, 1)).numpy())


def test_inputs_are_cast_to_the_graphs_types(tmp_path):
    session = ort_session(small_graph(tmp_path / "m.onnx"), threads=1, cuda=False)
    bound = BoundSession(session, ["sample", "timestep"], device="cpu")
    sample, timestep = inputs(2)
    noise, _ = bound(sample.double(), timestep.to(torch.int32))
    np.testing.assert_allclose(noise.numpy(), (2 * sample + timestep.float().reshape(-1, 1, 1, 1)).numpy())


def test_an_output_of_open_shape_is_allocated_by_ort(tmp_path):
    session = ort_session(small_graph(tmp_path / "m.onnx", open_feature=True), threads=1, cuda=False)
    bound = BoundSession(session, ["sample", "timestep"], device="cpu")
    assert bound.output_shape(["batch", "channels"], 2) is None
    assert bound.output_shape(["batch", 3, 4, 4], 2) == (2, 3, 4, 4)
    sample, timestep = inputs(2)
    _, feature = bound(sample, timestep)
    np.testing.assert_allclose(feature.numpy(), sample.mean(dim=(2, 3)).numpy(), rtol=1e-6)


def test_wrong_inputs_are_refused(tmp_path):
    session = ort_session(small_graph(tmp_path / "m.onnx"), threads=1, cuda=False)
    with pytest.raises(EdgediffError, match=r"no input \['latents'\]"):
        BoundSession(session, ["latents"], device="cpu")
    with pytest.raises(ValueError, match="device must be cuda or cpu"):
        BoundSession(session, ["sample", "timestep"], device="xpu")
    with pytest.raises(TypeError, match="takes 2 inputs"):
        BoundSession(session, ["sample", "timestep"], device="cpu")(inputs(1)[0])


def test_the_tiny_unet_through_binding_matches_the_numpy_path(tiny_components):
    from edgediff.availability import is_onnxruntime_available

    if not is_onnxruntime_available():
        pytest.skip("needs onnx, onnxsim and onnxruntime")
    from edgediff.artifacts.build import IO_NAMES, build_artifact
    from edgediff.artifacts.onnx_export import FILENAME

    folder, _ = build_artifact(tiny_components, "unet", "onnx-fp32")
    session = ort_session(folder / FILENAME, threads=1, cuda=False)
    sample = torch.randn((2, *tiny_components.preset.latent_shape), generator=torch.Generator().manual_seed(4))
    timestep = torch.tensor([900, 20], dtype=torch.int64)
    bound = BoundSession(session, IO_NAMES["unet"][0], device="cpu")(sample, timestep)
    plain = session_fn(session, IO_NAMES["unet"][0])(sample, timestep)
    torch.testing.assert_close(bound, plain, rtol=1e-6, atol=1e-6)


def _cuda_provider_or_skip():
    from edgediff.availability import is_cuda_available

    if not is_cuda_available():
        pytest.skip("needs a CUDA device")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")


@pytest.mark.gpu
def test_cuda_tensors_stay_on_the_gpu(tmp_path):
    _cuda_provider_or_skip()
    path = small_graph(tmp_path / "m.onnx")
    bound = BoundSession(ort_session(path, threads=1, cuda=True), ["sample", "timestep"], device="cuda")
    sample, timestep = inputs(3)
    noise, feature = bound(sample.cuda(), timestep.cuda())
    assert noise.device.type == feature.device.type == "cuda"
    reference = ort_session(path, threads=1, cuda=False).run(None, {"sample": sample.numpy(),
                                                                    "timestep": timestep.numpy()})
    np.testing.assert_allclose(noise.cpu().numpy(), reference[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(feature.cpu().numpy(), reference[1], rtol=1e-5, atol=1e-5)
    on_cpu, _ = bound(sample, timestep)  # CPU in, CPU out: one copy each way, as the eager variants
    assert on_cpu.device.type == "cpu"


@pytest.mark.gpu
def test_the_onnx_variants_bind_device_tensors_on_cuda(tiny_components):
    _cuda_provider_or_skip()
    from edgediff.variants import build_variant

    built = build_variant("onnx-fp16", tiny_components)
    assert built.info["device"] == "cuda" and built.info["io_binding"] is True
    unet = built.unet.sequence()
    sample = torch.randn((2, *tiny_components.preset.latent_shape), device="cuda")
    assert unet(sample, torch.tensor([900, 20], device="cuda")).device.type == "cuda"
