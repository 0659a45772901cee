"""The fast CPU variants through Triton: DeepCache as one stateful UNet model (a sequence per image), int8 parts.

Configs are checked without building anything; then one real tritonserver (module-scoped, explicit model control)
serves ``openvino-bf16-dc3``, ``openvino-int8`` and ``openvino-bf16-int8dec-dc3`` (bf16 UNet parts, int8 decoder).
Tolerance of the image comparison with in-process generation: at most 1 uint8 level per pixel (the parts run the
same compiled OpenVINO models on the same fp32 tensors, so the images are expected to be bit-identical; the level
only absorbs a different CPU kernel choice).
"""

import re
import urllib.request

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from edgediff.artifacts.build import UNET_SHALLOW
from edgediff.constants import (
    DEEPCACHE_METRIC_LABELS,
    DEEPCACHE_SEQUENCE_IDLE_S,
    LDM_OUTPUT_IMAGE,
    METRIC_DEEPCACHE_EVALUATIONS_TOTAL,
    METRIC_DEEPCACHE_OPEN_SEQUENCES,
    SERVE_MAX_BATCH,
    UNET_INPUT_SAMPLE,
    UNET_INPUT_TIMESTEP,
    UNET_OUTPUT,
)
from edgediff.variants import get_variant
from edgediff.variants.openvino_runtime import int8_ir_format
from exporters.repository import export_repository, model_names
from exporters.targets import DEEPCACHE_PART, TARGETS
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
    assert placements[DEEPCACHE].deepcache_interval == 3
    assert placements[DEEPCACHE].unet_part == DEEPCACHE_PART and placements[INT8].unet_part == "unet"
    assert placements[INT8].deepcache_interval == 1 and placements[INT8].artifact_format == "openvino-int8"
    int8 = int8_ir_format()  # openvino-int8, or its compressed-linear-weights form on a CPU without bf16
    assert placements[INT8].formats == (int8,)
    mixed = placements[MIXED]
    assert (mixed.format_of(DEEPCACHE_PART), mixed.format_of("vqdec")) == ("openvino", int8)
    assert mixed.formats == ("openvino", int8) and mixed.deepcache_interval == 3


def test_served_int8_parts_use_the_ir_the_variant_runs_on_this_cpu(monkeypatch):
    from edgediff.variants import openvino_runtime

    placement = TARGETS["cpu"].placements[INT8]
    for has_bf16, fmt in ((True, "openvino-int8"), (False, "openvino-int8-wc")):
        monkeypatch.setattr(openvino_runtime, "cpu_supports_bf16", lambda has=has_bf16: has)
        variant = get_variant(INT8)
        assert placement.format_of("unet") == placement.format_of("vqdec") == variant.part_format("unet") == fmt
        assert get_variant("openvino-int8-dc3").gate_settings() == variant.gate_settings()
        assert bool(variant.gate_settings()) is (not has_bf16)
        assert get_variant("openvino-fp32").gate_settings() == {}


def test_manifest_records_each_parts_format(tmp_path):
    manifest = export_repository(model="tiny", target="cpu", variants=[MIXED, INT8], repo=tmp_path / "r",
                                 configs_only=True)
    formats = {v: {part: e["format"] for part, e in manifest["variants"][v]["parts"].items()} for v in (MIXED, INT8)}
    int8 = int8_ir_format()
    assert formats == {MIXED: {"unet": "openvino", "vqdec": int8}, INT8: {"unet": int8, "vqdec": int8}}


def test_deepcache_configs_and_manifest(tmp_path):
    repo = tmp_path / "r"
    manifest = export_repository(model="tiny", target="cpu", variants=[DEEPCACHE, "openvino-int8-dc3"], repo=repo,
                                 configs_only=True)
    for variant in (DEEPCACHE, "openvino-int8-dc3"):
        v = variant.replace("-", "_")
        names = model_names(variant)
        assert names == {"unet": f"unet_{v}", "vqdec": f"vqdec_{v}", "ldm": f"ldm_{v}"}
        unet = parse(repo / names["unet"] / "config.pbtxt")
        # stateful: Triton's sequence batcher (one sequence per image), never the dynamic batcher
        assert unet.WhichOneof("scheduling_choice") == "sequence_batching"
        assert unet.sequence_batching.WhichOneof("strategy_choice") == "oldest"
        open_images = SERVE_MAX_BATCH * TARGETS["cpu"].pipeline_instances  # every image of every generation at once
        assert unet.sequence_batching.oldest.max_candidate_sequences == open_images
        assert unet.sequence_batching.max_sequence_idle_microseconds == DEEPCACHE_SEQUENCE_IDLE_S * 1_000_000
        # the feature stays inside: the same tensors as a plain UNet model
        assert [i.name for i in unet.input] == [UNET_INPUT_SAMPLE, UNET_INPUT_TIMESTEP]
        assert [o.name for o in unet.output] == [UNET_OUTPUT]
        params = {k: p.string_value for k, p in unet.parameters.items()}
        assert params["part"] == DEEPCACHE_PART and params["deepcache_interval"] == "3"
        assert (params["artifact"], params["shallow_artifact"]) == ("1/unet-full/model.xml",
                                                                    "1/unet-shallow/model.xml")
        ldm = parse(repo / names["ldm"] / "config.pbtxt")
        assert ldm.parameters["deepcache_interval"].string_value == "3"
        assert ldm.parameters["unet_model"].string_value == names["unet"]
        entry = manifest["variants"][variant]
        assert entry["models"] == names
        assert entry["deepcache"] == {"interval": 3, "model": names["unet"],
                                      "artifacts": ["1/unet-full/model.xml", "1/unet-shallow/model.xml"]}
        assert set(entry["parts"]) == {"unet", "vqdec"} and entry["parts"]["unet"]["part"] == DEEPCACHE_PART
        assert entry["parts"]["unet"]["outputs"] == {UNET_OUTPUT: [-1, 3, 16, 16]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    missing = {v: get_variant(v).availability().reason for v in SERVED if not get_variant(v).availability().ok}
    if missing:
        pytest.skip(f"variants unavailable on this machine: {missing}")
    yield from serve_tiny(tmp_path_factory.mktemp("triton-fast") / "model_repository", SERVED)


@pytest.fixture(scope="module")
def client(server):
    yield from grpc_client(server)


def metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def successes(server) -> dict[str, float]:
    return {m: float(v) for m, v in re.findall(r'^nv_inference_request_success\{model="([^"]+)",version="1"\} (\S+)$',
                                                metrics(server), re.M)}


def deepcache_state(server, model: str) -> dict[str, float]:
    """The DeepCache model's own metrics: evaluations by kind and open sequences (images holding a feature)."""
    state = {}
    for name, labels, value in re.findall(r'^(edgediff_deepcache_\w+)\{([^}]*)\} (\S+)$', metrics(server), re.M):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        assert set(pairs) == set(DEEPCACHE_METRIC_LABELS[name])  # what the Grafana dashboard's queries rely on
        if pairs.get("model") == model:
            key = pairs["kind"] if name == METRIC_DEEPCACHE_EVALUATIONS_TOTAL else name
            state[key] = float(value)
    return state


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deepcache_through_triton_equals_in_process_and_keeps_the_feature_inside(client, server, tiny_components):
    names = model_names(DEEPCACHE)
    before, state_before = successes(server), deepcache_state(server, names["unet"])
    result = client.infer(names["ldm"], ldm_inputs(seed=5, steps=10))
    after, state = successes(server), deepcache_state(server, names["unet"])
    # 10 DDIM steps, interval 3: full UNet at steps 0, 3, 6, 9, the shallow branch at the six others; 10 step
    # requests plus the closing one to unet_<v>, and no image left open
    assert {k: state[k] - state_before.get(k, 0) for k in ("full", "shallow")} == {"full": 4, "shallow": 6}
    assert state[METRIC_DEEPCACHE_OPEN_SEQUENCES] == 0
    calls = {part: after.get(names[part], 0) - before.get(names[part], 0) for part in ("unet", "vqdec", "ldm")}
    assert calls == {"unet": 11, "vqdec": 1, "ldm": 1}
    expected = in_process(tiny_components, DEEPCACHE, seed=5, steps=10)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deepcache_largest_served_batch(client, server, tiny_components):
    # four images, four sequences open at once, all closed at the end
    names = model_names(DEEPCACHE)
    result = client.infer(names["ldm"], ldm_inputs(seed=8, steps=4, eta=0.5, batch=SERVE_MAX_BATCH))
    expected = in_process(tiny_components, DEEPCACHE, seed=8, steps=4, eta=0.5, batch=SERVE_MAX_BATCH)
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)
    assert deepcache_state(server, names["unet"])[METRIC_DEEPCACHE_OPEN_SEQUENCES] == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_cancelled_deepcache_generation_releases_its_images(client, server):
    # a client deadline cancels ldm_<v> mid-loop; its finally-close ends every image's sequence
    import time

    from tritonclient.utils import InferenceServerException

    names = model_names(DEEPCACHE)
    client.infer(names["ldm"], ldm_inputs(seed=2, steps=2))  # warm: the first request also imports the pipeline
    before = deepcache_state(server, names["unet"])
    with pytest.raises(InferenceServerException, match=r"(?i)deadline"):
        client.infer(names["ldm"], ldm_inputs(seed=2, steps=1000, batch=3), client_timeout=1.0)

    def released() -> bool:
        return deepcache_state(server, names["unet"])[METRIC_DEEPCACHE_OPEN_SEQUENCES] == 0

    end = time.monotonic() + 60
    while not released() and time.monotonic() < end:
        time.sleep(0.2)
    assert released()
    # the pipeline stopped when the client gave up (cancelled) instead of running 3 images x 1000 steps
    after = deepcache_state(server, names["unet"])
    assert 0 < sum(after[k] - before.get(k, 0) for k in ("full", "shallow")) < 3 * 1000
    assert client.infer(names["ldm"], ldm_inputs(seed=2, steps=2)).as_numpy(LDM_OUTPUT_IMAGE).shape[0] == 1


def unet_inputs(step: int):
    import tritonclient.grpc as grpcclient

    sample = grpcclient.InferInput(UNET_INPUT_SAMPLE, [1, 3, 16, 16], "FP32")
    sample.set_data_from_numpy(np.full((1, 3, 16, 16), 0.1 * step, dtype=np.float32))
    timestep = grpcclient.InferInput(UNET_INPUT_TIMESTEP, [1, 1], "INT64")
    timestep.set_data_from_numpy(np.array([[900 - 100 * step]], dtype=np.int64))
    return [sample, timestep]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deepcache_model_speaks_triton_sequences(client, server):
    # what any Triton client (perf_analyzer --sequence-length) sees: START opens an image, END closes it unrun
    from tritonclient.utils import InferenceServerException

    unet = model_names(DEEPCACHE)["unet"]
    with pytest.raises(InferenceServerException, match="START"):
        client.infer(unet, unet_inputs(0), sequence_id=77)
    first = client.infer(unet, unet_inputs(0), sequence_id=77, sequence_start=True).as_numpy(UNET_OUTPUT)
    assert first.shape == (1, 3, 16, 16) and np.isfinite(first).all()
    client.infer(unet, unet_inputs(1), sequence_id=77)
    assert deepcache_state(server, unet)[METRIC_DEEPCACHE_OPEN_SEQUENCES] == 1
    client.infer(unet, unet_inputs(2), sequence_id=77, sequence_end=True)
    assert deepcache_state(server, unet)[METRIC_DEEPCACHE_OPEN_SEQUENCES] == 0
    with pytest.raises(InferenceServerException, match="START"):
        client.infer(unet, unet_inputs(3), sequence_id=77)  # closed: a new image needs START again


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
def test_an_inner_deepcache_model_error_is_returned(client):
    from tritonclient.utils import InferenceServerException

    names = model_names(DEEPCACHE)
    client.unload_model(names["unet"])
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer(names["ldm"], ldm_inputs(seed=1, steps=2))
        assert names["unet"] in info.value.message()
    finally:
        client.load_model(names["unet"])
    assert client.is_model_ready(names["unet"])


def test_the_deepcache_model_has_the_plain_unets_tensors():
    # the feature stays inside unet_<v>, so clients of a plain UNet model can call it unchanged (with sequences)
    from exporters.configs import part_io

    assert part_io(DEEPCACHE_PART, (3, 16, 16), 64) == part_io("unet", (3, 16, 16), 64)
    inputs, outputs = part_io(DEEPCACHE_PART, (3, 16, 16), 64)
    assert [t["name"] for t in inputs] == [UNET_INPUT_SAMPLE, UNET_INPUT_TIMESTEP]
    assert [t["name"] for t in outputs] == [UNET_OUTPUT]
    with pytest.raises(ValueError, match="part must be"):
        part_io(UNET_SHALLOW, (3, 16, 16), 64)  # an artifact part, never a model of its own
