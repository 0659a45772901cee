"""The GPU targets serve the torch-fp32 baseline too: Python-backend part models on KIND_GPU instances.

The study's comparison (fp32 vs TensorRT) is made on one server. The configs, the manifest and the part runtime's
device handling are checked here; the ``gpu`` tests run the parts (and, when a tritonserver is installed, the whole
served pipeline) on a CUDA device.
"""

import copy

import numpy as np
import pytest
import torch

from edgediff.constants import LDM_OUTPUT_IMAGE
from edgediff.errors import EdgediffError
from exporters.part_runtime import PartRunner, PartSpec, load_part
from exporters.repository import export_repository, model_names
from exporters.targets import KIND_GPU, PYTHON_BACKEND, TARGETS


def model_config_pb2():
    """Triton's config protobuf (imported here: the gpu tests of this file run without tritonclient)."""
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


def parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2().ModelConfig())


@pytest.mark.parametrize("target", ["rtx", "jetson"])
def test_gpu_targets_serve_the_baseline_as_python_models_on_gpu_instances(tmp_path, target):
    assert "torch-fp32" in TARGETS[target].default_variants  # exported with the accelerated variants by default
    placement = TARGETS[target].placement("torch-fp32")
    assert (placement.backend, placement.platform, placement.instance_kind) == (PYTHON_BACKEND, None, KIND_GPU)
    repo = tmp_path / target
    manifest = export_repository(model="tiny", target=target, variants=["torch-fp32", "trt-fp16"], repo=repo,
                                 configs_only=True)
    assert set(manifest["variants"]) == {"torch-fp32", "trt-fp16"}  # the comparison, on one server
    names = model_names("torch-fp32")
    for part in ("unet", "vqdec"):
        config = parse(repo / names[part] / "config.pbtxt")
        assert config.backend == "python" and not config.platform
        assert [g.kind for g in config.instance_group] == [model_config_pb2().ModelInstanceGroup.KIND_GPU]
        assert config.max_batch_size == TARGETS[target].max_batch_size
        assert config.parameters["variant"].string_value == "torch-fp32"
        assert config.parameters["artifact"].string_value == "1/weights"
        assert (repo / names[part] / "1" / "model.py").is_file()
        assert manifest["variants"]["torch-fp32"]["parts"][part]["instance_kind"] == KIND_GPU
    ldm = parse(repo / names["ldm"] / "config.pbtxt")
    assert ldm.parameters["unet_model"].string_value == names["unet"]


def test_an_rtx_export_of_the_baseline_carries_its_weights_and_runs_them(tmp_path, tiny_components):
    repo = tmp_path / "rtx"
    manifest = export_repository(model="tiny", target="rtx", variants=["torch-fp32"], repo=repo)
    entry = manifest["variants"]["torch-fp32"]["parts"]["unet"]
    assert entry["skipped"] is None and entry["format"] == "weights"
    spec = PartSpec(variant="torch-fp32", part="unet", preset="tiny", artifact="1/weights")
    runner = PartRunner(spec, repo / model_names("torch-fp32")["unet"], device="cpu")
    sample = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(5))
    timestep = np.array([[900], [20]], dtype=np.int64)  # Triton's [batch, 1]
    with torch.inference_mode():
        expected = tiny_components.unet(sample, torch.from_numpy(timestep.reshape(-1))).sample.numpy()
    np.testing.assert_allclose(runner({"sample": sample.numpy(), "timestep": timestep}), expected, rtol=1e-5,
                               atol=1e-5)


def test_only_eager_pytorch_has_a_python_part_runtime_on_a_gpu(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").write_bytes(b"")
    spec = PartSpec(variant="onnx-fp32", part="unet", preset="tiny", artifact="1/model.onnx")
    with pytest.raises(EdgediffError, match="onnx-fp32 has no Python part runtime on cuda:0; the GPU targets serve "
                                            "it with a native Triton backend"):
        load_part(spec, tmp_path, device="cuda:0")


def _cuda_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")


@pytest.mark.gpu
def test_the_baseline_part_runs_on_the_instances_gpu(tmp_path, tiny_components):
    _cuda_or_skip()
    repo = tmp_path / "rtx"
    export_repository(model="tiny", target="rtx", variants=["torch-fp32"], repo=repo)
    spec = PartSpec(variant="torch-fp32", part="vqdec", preset="tiny", artifact="1/weights")
    runner = PartRunner(spec, repo / model_names("torch-fp32")["vqdec"], device="cuda:0")
    latents = torch.randn((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    got = runner({"latents": latents.numpy()})
    vqvae = copy.deepcopy(tiny_components.vqvae).to("cuda")  # the shared components stay on the CPU
    with torch.inference_mode():
        expected = vqvae.decode(latents.cuda(), return_dict=False)[0].cpu().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_triton_serves_the_baseline_on_the_gpu(tmp_path, tiny_components):
    _cuda_or_skip()
    from edgediff.errors import BackendMissingError
    from services.triton.launcher import TritonServer, find_tritonserver
    from tests.exporters.helpers import assert_same_images, free_port, in_process, ldm_inputs

    try:
        find_tritonserver()
    except BackendMissingError as exc:
        pytest.skip(str(exc))
    grpcclient = pytest.importorskip("tritonclient.grpc")
    repo = tmp_path / "rtx"
    export_repository(model="tiny", target="rtx", variants=["torch-fp32"], repo=repo)
    ports = sorted({free_port() for _ in range(3)})
    names = model_names("torch-fp32")
    server = TritonServer(repo, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                          model_control="explicit", load_models=list(names.values()), startup_timeout_s=300)
    with server, grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(names["ldm"], ldm_inputs(seed=4, steps=3, batch=2))
    expected = in_process(tiny_components, "torch-fp32", seed=4, steps=3, batch=2)  # on CUDA here too
    assert_same_images(result.as_numpy(LDM_OUTPUT_IMAGE), expected.images)
