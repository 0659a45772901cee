"""A real tritonserver over an exported tiny CPU repository: images equal in-process generation, BLS, model control.

One server for the module (explicit model control, every model loaded at start). Tolerance of the image comparison:
at most 1 uint8 level per pixel (measured: the images are bit-identical, because every part runs the same core
variant code on the same fp32 tensors; the level of slack only absorbs a different CPU kernel choice).
"""

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgediff.constants import LDM_OUTPUT_IMAGE, LDM_OUTPUT_TIMINGS, LDM_TIMINGS_FIELDS, SERVE_MAX_BATCH
from exporters.repository import model_names
from tests.exporters.helpers import assert_same_images, grpc_client, in_process, ldm_inputs, serve_tiny

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

VARIANTS = ["torch-fp32", "onnx-fp32", "openvino-fp32"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_tiny(tmp_path_factory.mktemp("triton") / "model_repository", VARIANTS)


@pytest.fixture(scope="module")
def client(server):
    yield from grpc_client(server)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_through_triton_equals_in_process(client, tiny_components, variant):
    result = client.infer(model_names(variant)["ldm"], ldm_inputs(seed=11, steps=4, batch=2))
    expected = in_process(tiny_components, variant, seed=11, steps=4, batch=2)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)
    timings = result.as_numpy(LDM_OUTPUT_TIMINGS)
    assert timings.dtype == np.float64 and timings.shape == (len(LDM_TIMINGS_FIELDS),)
    denoise_s, decode_s, total_s = timings
    assert 0 < denoise_s <= total_s and 0 < decode_s <= total_s


def test_eta_and_the_largest_served_batch(client, tiny_components):
    batch = SERVE_MAX_BATCH  # what the gateway accepts, and the ldm model too
    result = client.infer(model_names("onnx-fp32")["ldm"], ldm_inputs(seed=3, steps=3, eta=0.5, batch=batch))
    expected = in_process(tiny_components, "onnx-fp32", seed=3, steps=3, eta=0.5, batch=batch)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)


def test_metrics_show_the_part_models_were_called_through_bls(client, server):
    client.infer(model_names("onnx-fp32")["ldm"], ldm_inputs(seed=1, steps=3))
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()

    def successes(model: str) -> float:
        match = re.search(rf'^nv_inference_request_success\{{model="{model}",version="1"\}} (\S+)$', text, re.M)
        assert match, f"no nv_inference_request_success for {model}"
        return float(match.group(1))

    names = model_names("onnx-fp32")
    assert successes(names["unet"]) >= 3  # one UNet request per DDIM step
    assert successes(names["vqdec"]) >= 1
    assert successes(names["ldm"]) >= 1


def test_bad_arguments_are_invalid_argument_errors(client):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        client.infer(model_names("onnx-fp32")["ldm"], ldm_inputs(seed=1, steps=0))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "steps must be an integer in 1..1000, got 0" in info.value.message()
    with pytest.raises(InferenceServerException, match=rf"batch must be an integer in 1\.\.{SERVE_MAX_BATCH}\b"):
        client.infer(model_names("onnx-fp32")["ldm"], ldm_inputs(seed=1, steps=2, batch=SERVE_MAX_BATCH + 1))


def test_an_inner_model_error_is_returned_not_swallowed(client):
    from tritonclient.utils import InferenceServerException

    names = model_names("openvino-fp32")
    client.unload_model(names["unet"])
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(names["ldm"], ldm_inputs(seed=1, steps=2))
        assert names["unet"] in info.value.message()
        assert "not ready" in info.value.message()
    finally:
        client.load_model(names["unet"])
    assert client.is_model_ready(names["unet"])


def test_explicit_model_control_unload_gives_not_found_and_load_restores(client, tiny_components):
    from tritonclient.utils import InferenceServerException

    names = model_names("torch-fp32")
    for name in names.values():
        client.unload_model(name)
    assert not client.is_model_ready(names["ldm"])
    with pytest.raises(InferenceServerException) as info:
        client.infer(names["ldm"], ldm_inputs(seed=2, steps=2))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with ThreadPoolExecutor(3) as pool:  # three Python stubs start side by side
        list(pool.map(client.load_model, names.values()))
    result = client.infer(names["ldm"], ldm_inputs(seed=2, steps=2))
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), in_process(tiny_components, "torch-fp32", seed=2,
                                                                      steps=2).images)
