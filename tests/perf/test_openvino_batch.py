"""OpenVINO parts compiled with static shapes for one item: a batch runs item by item, independent of its batch."""

from __future__ import annotations

import numpy as np
import torch

from edgediff.artifacts.build import UNET_FULL, build_artifact
from edgediff.artifacts.openvino_ir import FILENAME
from edgediff.variants.openvino_runtime import STATIC_BATCH, compile_ir, ir_fn, static_batch_shapes
from tests.perf.conftest import skip_unless_available


def _unet_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(batch, 3, 16, 16, generator=generator), torch.tensor([900, 500, 20][:batch])


def test_static_shapes_only_when_the_batch_axis_alone_is_dynamic(tiny_components):
    skip_unless_available("openvino-fp32")
    import openvino as ov

    folder, _ = build_artifact(tiny_components, "unet", "openvino")
    model = ov.Core().read_model(str(folder / FILENAME))
    shapes = static_batch_shapes(model, STATIC_BATCH)
    assert shapes is not None and sorted(map(list, shapes.values())) == [[1], [1, 3, 16, 16]]
    model.reshape({model.inputs[0]: [-1, 3, -1, -1], model.inputs[1]: [-1]})  # any image size: left dynamic
    assert static_batch_shapes(model, STATIC_BATCH) is None
    compiled = compile_ir(folder / FILENAME, precision="fp32", threads=1, batch=STATIC_BATCH)
    assert not any(port.get_partial_shape().is_dynamic for port in compiled.inputs)


def test_a_batch_equals_its_items_run_alone(tiny_components):
    skip_unless_available("openvino-fp32")
    folder, _ = build_artifact(tiny_components, "unet", "openvino")
    fn = ir_fn(folder / FILENAME, precision="fp32", threads=1)
    sample, timestep = _unet_inputs(3)
    batched = fn(sample, timestep)
    assert batched.shape == sample.shape
    for i in range(3):
        assert torch.equal(batched[i:i + 1], fn(sample[i:i + 1], timestep[i:i + 1]))


def test_several_outputs_are_concatenated_per_output(tiny_components):
    skip_unless_available("openvino-fp32")
    folder, _ = build_artifact(tiny_components, UNET_FULL, "openvino")
    fn = ir_fn(folder / FILENAME, precision="fp32", threads=1)
    sample, timestep = _unet_inputs(2)
    noise, feature = fn(sample, timestep)
    assert noise.shape == sample.shape and feature.shape[0] == 2
    alone_noise, alone_feature = fn(sample[1:], timestep[1:])
    np.testing.assert_array_equal(noise[1:].numpy(), alone_noise.numpy())
    np.testing.assert_array_equal(feature[1:].numpy(), alone_feature.numpy())
