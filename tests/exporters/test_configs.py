"""config.pbtxt for every target, parsed with Triton's own protobuf classes; targets and variant checks."""

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from edgediff.constants import LDM_OUTPUT_IMAGE, LDM_OUTPUT_TIMINGS, SERVE_MAX_BATCH, UNET_INPUT_TIMESTEP
from edgediff.errors import InvalidArgumentError, UnknownVariantError
from exporters.configs import Enum, instance_count, ldm_config, render_config
from exporters.repository import export_repository, model_names
from exporters.targets import TARGETS, get_target

NATIVE_PLATFORM = {"onnx": "onnxruntime_onnx", "trt": "tensorrt_plan", "jit": "pytorch_libtorch"}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def test_render_config_round_trips_through_triton_protobuf():
    tricky = '{"a": "quote \\" backslash \\\\ tab\t", "b": [1, 2]}\nline 2'
    config = {
        "name": "m",
        "backend": "python",
        "max_batch_size": 4,
        "input": [{"name": "x", "data_type": Enum("TYPE_INT64"), "dims": [1], "reshape": {"shape": []}},
                  {"name": "y", "data_type": Enum("TYPE_FP32"), "dims": [3, -1], "optional": True}],
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": 2}],
        "dynamic_batching": {"max_queue_delay_microseconds": 0},
        "parameters": {"json": tricky, "plain": "v"},
    }
    parsed = text_format.Parse(render_config(config), model_config_pb2.ModelConfig())
    assert parsed.name == "m" and parsed.max_batch_size == 4
    assert parsed.input[0].data_type == model_config_pb2.TYPE_INT64
    assert list(parsed.input[0].reshape.shape) == []
    assert list(parsed.input[1].dims) == [3, -1] and parsed.input[1].optional
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert parsed.instance_group[0].count == 2
    assert parsed.parameters["json"].string_value == tricky
    assert parsed.parameters["plain"].string_value == "v"


@pytest.mark.parametrize("target", ["rtx", "jetson"])
def test_gpu_repositories_use_native_backends_on_gpu_instances(tmp_path, target):
    repo = tmp_path / target
    variants = [v for v, p in TARGETS[target].placements.items() if p.platform]  # torch-fp32: test_gpu_targets.py
    manifest = export_repository(model="tiny", target=target, variants=variants, repo=repo, configs_only=True)
    assert manifest["state"] == "complete" and set(manifest["variants"]) == set(variants)
    max_batch = TARGETS[target].max_batch_size
    for variant in variants:
        names = model_names(variant)
        platform = NATIVE_PLATFORM[variant.split("-")[0]]
        for part in ("unet", "vqdec"):
            config = parse(repo / names[part] / "config.pbtxt")
            assert config.name == names[part]
            assert config.platform == platform and not config.backend
            assert config.max_batch_size == max_batch
            assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
            assert config.dynamic_batching.max_queue_delay_microseconds == TARGETS[target].queue_delay_us > 0
            assert config.default_model_filename == TARGETS[target].placements[variant].filename
            entry = manifest["variants"][variant]["parts"][part]
            assert entry["artifact"] is None and "configs only" in entry["skipped"]
        timestep = next(i for i in parse(repo / names["unet"] / "config.pbtxt").input if i.name == UNET_INPUT_TIMESTEP)
        assert list(timestep.dims) == [1] and list(timestep.reshape.shape) == []
        ldm = parse(repo / names["ldm"] / "config.pbtxt")
        assert ldm.backend == "python" and ldm.max_batch_size == 0
        assert [g.kind for g in ldm.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        # several generations at once, enough batch-1 ones to fill one merged part execution
        assert [g.count for g in ldm.instance_group] == [TARGETS[target].pipeline_instances] == [max_batch]
        assert ldm.parameters["max_batch"].string_value == str(SERVE_MAX_BATCH)  # what the gateway accepts
        assert ldm.parameters["unet_model"].string_value == names["unet"]
        assert ldm.parameters["vqdec_model"].string_value == names["vqdec"]
        outputs = {o.name: o for o in ldm.output}
        assert outputs[LDM_OUTPUT_IMAGE].data_type == model_config_pb2.TYPE_UINT8
        assert list(outputs[LDM_OUTPUT_IMAGE].dims) == [-1, 64, 64, 3]
        assert outputs[LDM_OUTPUT_TIMINGS].data_type == model_config_pb2.TYPE_FP64
        assert (repo / names["ldm"] / "1" / "model.py").is_file()


def test_cpu_configs_are_python_models_on_cpu_instances(tmp_path):
    repo = tmp_path / "cpu"
    variants = list(TARGETS["cpu"].placements)
    export_repository(model="tiny", target="cpu", variants=variants, repo=repo, configs_only=True)
    for variant in variants:
        for name in model_names(variant).values():
            config = parse(repo / name / "config.pbtxt")
            assert config.backend == "python" and not config.platform
            assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
            assert (repo / name / "1" / "model.py").is_file()
        placement = TARGETS["cpu"].placements[variant]
        unet = parse(repo / model_names(variant)["unet"] / "config.pbtxt")
        assert unet.parameters["variant"].string_value == variant
        assert unet.parameters["part"].string_value == placement.unet_part  # "unet", or "unet-deepcache"
        first = "1/" if placement.deepcache_interval == 1 else "1/unet-full/"  # DeepCache: full and shallow inside
        assert unet.parameters["artifact"].string_value == f"{first}{placement.filename}"
        if placement.deepcache_interval > 1:  # every image of every generation in progress is one open sequence
            oldest = unet.sequence_batching.oldest
            assert oldest.max_candidate_sequences == SERVE_MAX_BATCH * TARGETS["cpu"].pipeline_instances


def test_instance_count_reads_config_dicts_and_tritons_json():
    config = ldm_config(name="ldm_x", image_size=8, parameters={}, instances=3)
    assert instance_count(config) == 3
    assert instance_count({"instance_group": [{"kind": "KIND_CPU", "count": 2}, {"count": 1}]}) == 3
    assert instance_count({}) == 1  # Triton's default: one instance
    with pytest.raises(ValueError, match="instances must be >= 1"):
        ldm_config(name="ldm_x", image_size=8, parameters={}, instances=0)


def test_target_and_variant_errors_name_the_flag():
    with pytest.raises(InvalidArgumentError, match="--target: unknown target 'tpu'"):
        get_target("tpu")
    with pytest.raises(InvalidArgumentError, match="--variants: variant 'openvino-fp32' cannot be served on target "
                                                   "rtx"):
        get_target("rtx").placement("openvino-fp32")
    with pytest.raises(UnknownVariantError, match="unknown variant 'onnx-fp8'"):
        export_repository(model="tiny", target="cpu", variants=["onnx-fp8"], repo="unused", configs_only=True)


def test_export_cli_rejects_a_variant_the_target_cannot_serve(tmp_path, capsys):
    from cli.main import main

    code = main(["export", "--target", "jetson", "--model", "tiny", "--variants", "openvino-fp32",
                 "--repo", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("edgediff export: error: --variants: variant 'openvino-fp32' cannot be served")
    assert not (tmp_path / "r").exists()
