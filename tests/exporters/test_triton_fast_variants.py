"""The fast CPU variants through Triton: DeepCache as two UNet part models, int8 OpenVINO parts.

Configs are checked without building anything; then one real tritonserver (module-scoped, explicit model control)
serves ``openvino-bf16-dc3``, ``openvino-int8`` and ``openvino-bf16-int8dec-dc3`` (bf16 UNet parts, int8 decoder).
Tolerance of the image comparison with in-process generation: at most 1 uint8 level per pixel (the parts run the
same compiled OpenVINO models on the same fp32 tensors, so the images are expected to be bit-identical; the level
only absorbs a different CPU kernel choice).
"""

import re
import urllib.request

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from edgediff.artifacts.build import UNET_FULL, UNET_SHALLOW
from edgediff.constants import LDM_OUTPUT_IMAGE, UNET_FEATURE, UNET_INPUT_SAMPLE, UNET_OUTPUT
from edgediff.variants import get_variant
from exporters.repository import export_repository, model_names, unet_full_model_name, unet_shallow_model_name
from exporters.targets import TARGETS
from tests.exporters.helpers import assert_same_images, grpc_client, in_process, ldm_inputs, serve_tiny

DEEPCACHE = "openvino-bf16-dc3"
INT8 = "openvino-int8"
MIXED = "openvino-bf16-int8dec-dc3"
SERVED = [DEEPCACHE, INT8, MIXED]


def parse(path):
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def test_cpu_target_serves_the_fast_variants():
    placements = TARGETS["cpu"].placements
    for name in (DEEPCACHE, INT8, "openvino-int8-dc3"):
        assert name in placements
    assert placements[DEEPCACHE].deepcache_interval == 3 and placements[DEEPCACHE].unet_parts == (UNET_FULL,
                                                                                                   UNET_SHALLOW)
    assert placements[INT8].deepcache_interval == 1 and placements[INT8].artifact_format == "openvino-int8"
    assert placements[INT8].formats == ("openvino-int8",)
    mixed = placements[MIXED]
    assert (mixed.format_of(UNET_FULL), mixed.format_of(UNET_SHALLOW), mixed.format_of("vqdec")) == (
        "openvino", "openvino", "openvino-int8")
    assert mixed.formats == ("openvino", "openvino-int8") and mixed.deepcache_interval == 3


def test_manifest_records_each_parts_format(tmp_path):
    manifest = export_repository(model="tiny", target="cpu", variants=[MIXED, INT8], repo=tmp_path / "r",
                                 configs_only=True)
    formats = {v: {part: e["format"] for part, e in manifest["variants"][v]["parts"].items()} for v in (MIXED, INT8)}
    assert formats == {MIXED: {UNET_FULL: "openvino", UNET_SHALLOW: "openvino", "vqdec": "openvino-int8"},
                       INT8: {"unet": "openvino-int8", "vqdec": "openvino-int8"}}


def test_deepcache_configs_and_manifest(tmp_path):
    repo = tmp_path / "r"
    manifest = export_repository(model="tiny", target="cpu", variants=[DEEPCACHE, "openvino-int8-dc3"], repo=repo,
                                 configs_only=True)
    for variant in (DEEPCACHE, "openvino-int8-dc3"):
        names = model_names(variant)
        assert names == {UNET_FULL: unet_full_model_name(variant), UNET_SHALLOW: unet_shallow_model_name(variant),
                         "vqdec": f"vqdec_{variant.replace('-', '_')}", "ldm": f"ldm_{variant.replace('-', '_')}"}
        assert not (repo / f"unet_{variant.replace('-', '_')}").exists()
        full = parse(repo / names[UNET_FULL] / "config.pbtxt")
        shallow = parse(repo / names[UNET_SHALLOW] / "config.pbtxt")
        assert [o.name for o in full.output] == [UNET_OUTPUT, UNET_FEATURE]
        assert list(full.output[1].dims) == [32, 16, 16]  # tiny: block_out_channels[1] at the latent side
        assert [i.name for i in shallow.input][-1] == UNET_FEATURE and list(shallow.input[-1].dims) == [32, 16, 16]
        assert full.parameters["part"].string_value == UNET_FULL
        assert shallow.parameters["part"].string_value == UNET_SHALLOW
        ldm = parse(repo / names["ldm"] / "config.pbtxt")
        assert ldm.parameters["deepcache_interval"].string_value == "3"
        assert ldm.parameters["unet_full_model"].string_value == names[UNET_FULL]
        assert ldm.parameters["unet_shallow_model"].string_value == names[UNET_SHALLOW]
        assert "unet_model" not in ldm.parameters
        entry = manifest["variants"][variant]
        assert entry["models"] == names
        assert entry["deepcache"] == {"interval": 3, "full_model": names[UNET_FULL],
                                      "shallow_model": names[UNET_SHALLOW]}
        assert set(entry["parts"]) == {UNET_FULL, UNET_SHALLOW, "vqdec"}
        assert entry["parts"][UNET_FULL]["outputs"] == {UNET_OUTPUT: [-1, 3, 16, 16], UNET_FEATURE: [-1, 32, 16, 16]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = {v: get_variant(v).availability().reason for v in SERVED if not get_variant(v).availability().ok}
    if missing:
        pytest.skip(f"variants unavailable on this machine: {missing}")
    yield from serve_tiny(tmp_path_factory.mktemp("triton-fast") / "model_repository", SERVED)


@pytest.fixture(scope="module")
def client(server):
    yield from grpc_client(server)


def successes(server) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return {m: float(v) for m, v in re.findall(r'^nv_inference_request_success\{model="([^"]+)",version="1"\} (\S+)$',
                                                text, re.M)}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deepcache_through_triton_equals_in_process_and_calls_full_and_shallow(client, server, tiny_components):
    names = model_names(DEEPCACHE)
    before = successes(server)
    result = client.infer(names["ldm"], ldm_inputs(seed=5, steps=10))
    after = successes(server)
    calls = {part: after.get(names[part], 0) - before.get(names[part], 0) for part in (UNET_FULL, UNET_SHALLOW,
                                                                                        "vqdec", "ldm")}
    # 10 DDIM steps, interval 3: full UNet at steps 0, 3, 6, 9, the shallow branch at the six others
    assert calls == {UNET_FULL: 4, UNET_SHALLOW: 6, "vqdec": 1, "ldm": 1}
    expected = in_process(tiny_components, DEEPCACHE, seed=5, steps=10)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deepcache_batch_larger_than_the_part_batch(client, tiny_components):
    # batch 5 > max_batch_size 4: each full/shallow evaluation is split into two BLS calls, feature chunks included
    result = client.infer(model_names(DEEPCACHE)["ldm"], ldm_inputs(seed=8, steps=4, eta=0.5, batch=5))
    expected = in_process(tiny_components, DEEPCACHE, seed=8, steps=4, eta=0.5, batch=5)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_int8_through_triton_equals_in_process(client, tiny_components):
    result = client.infer(model_names(INT8)["ldm"], ldm_inputs(seed=3, steps=4, batch=2))
    expected = in_process(tiny_components, INT8, seed=3, steps=4, batch=2)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mixed_precision_through_triton_equals_in_process(client, tiny_components):
    result = client.infer(model_names(MIXED)["ldm"], ldm_inputs(seed=4, steps=5))
    expected = in_process(tiny_components, MIXED, seed=4, steps=5)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_inner_shallow_model_error_is_returned(client):
    from tritonclient.utils import InferenceServerException

    names = model_names(DEEPCACHE)
    client.unload_model(names[UNET_SHALLOW])
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(names["ldm"], ldm_inputs(seed=1, steps=2))  # step 0 full, step 1 shallow
        assert names[UNET_SHALLOW] in info.value.message()
    finally:
        client.load_model(names[UNET_SHALLOW])
    assert client.is_model_ready(names[UNET_SHALLOW])


def test_input_names_of_the_full_part_match_the_plain_unet():
    # the full part takes exactly what unet_<v> takes, so clients of the plain model can call it unchanged
    from exporters.configs import part_io

    plain, _ = part_io("unet", (3, 16, 16), 64)
    full, _ = part_io(UNET_FULL, (3, 16, 16), 64, (32, 16, 16))
    assert [t["name"] for t in full] == [t["name"] for t in plain] and plain[0]["name"] == UNET_INPUT_SAMPLE
    with pytest.raises(ValueError, match="feature_dims"):
        part_io(UNET_SHALLOW, (3, 16, 16), 64)
