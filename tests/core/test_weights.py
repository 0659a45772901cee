import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgediff.errors import WeightsError
from edgediff.models import get_preset, load_components, save_components
from edgediff.variants import build_variant


@pytest.fixture
def weights_dir(tmp_path, tiny_components):
    return save_components(tiny_components, tmp_path / "w")


def _generate(components):
    return build_variant("torch-fp32", components).pipeline(components)(seed=3, steps=4)


def test_round_trip_gives_identical_outputs(weights_dir, tiny_components):
    loaded = load_components(get_preset("tiny"), weights_dir)
    assert loaded.weights.kind == "directory"
    assert loaded.weights.path == str(weights_dir)
    assert len(loaded.weights.sha256) == 64
    a, b = _generate(tiny_components), _generate(loaded)
    assert torch.equal(a.latents, b.latents)
    assert (a.images == b.images).all()


def test_env_variable_names_the_folder(weights_dir, monkeypatch):
    monkeypatch.setenv("EDGEDIFF_WEIGHTS", str(weights_dir))
    assert load_components(get_preset("tiny")).weights.path == str(weights_dir)


def test_missing_file_is_named(weights_dir):
    (weights_dir / "vqvae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"vqvae/diffusion_pytorch_model\.safetensors"):
        load_components(get_preset("tiny"), weights_dir)


def test_missing_scheduler_is_named(weights_dir):
    (weights_dir / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(WeightsError, match=r"scheduler_config\.json"):
        load_components(get_preset("tiny"), weights_dir)


def test_mismatched_tensor_is_named(weights_dir):
    path = weights_dir / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state["conv_in.weight"] = torch.zeros(7, 3, 3, 3)
    save_file(state, path)
    with pytest.raises(WeightsError, match=r"conv_in\.weight.*\[7, 3, 3, 3\]"):
        load_components(get_preset("tiny"), weights_dir)


def test_missing_tensor_is_named(weights_dir):
    path = weights_dir / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    del state["conv_out.bias"]
    save_file(state, path)
    with pytest.raises(WeightsError, match=r"conv_out\.bias"):
        load_components(get_preset("tiny"), weights_dir)


def test_corrupt_file_is_reported(weights_dir):
    (weights_dir / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_components(get_preset("tiny"), weights_dir)


def test_architecture_mismatch_names_the_field(weights_dir):
    config_path = weights_dir / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["block_out_channels"] = [64, 64]
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match="block_out_channels"):
        load_components(get_preset("tiny"), weights_dir)


def test_celebahq_preset_refuses_tiny_weights(weights_dir):
    with pytest.raises(WeightsError, match="preset expects"):
        load_components(get_preset("celebahq-256"), weights_dir)


def test_a_spec_loads_its_modules_once_on_first_use(weights_dir, tiny_components, monkeypatch):
    from edgediff.models import ModelSpec
    from edgediff.models import weights as model_weights

    loaded = load_components(get_preset("tiny"), weights_dir, warn=False)
    spec = ModelSpec.from_components(loaded)  # the same model, without its modules
    assert loaded.has_modules and not spec.has_modules
    assert spec.fingerprint() == loaded.fingerprint() and spec.scaling_factor == loaded.scaling_factor
    calls = []
    real = model_weights.load_modules
    monkeypatch.setattr(model_weights, "load_modules", lambda *a, **k: calls.append(a) or real(*a, **k))
    unet = spec.unet
    assert spec.has_modules and spec.unet is unet and spec.vqvae is spec.modules().vqvae
    assert len(calls) == 1
    assert torch.equal(_generate(spec).latents, _generate(loaded).latents)


def test_a_spec_read_back_from_disk_loads_the_same_weights(weights_dir, tmp_path):
    from edgediff.models import ModelSpec

    loaded = load_components(get_preset("tiny"), weights_dir, warn=False)
    loaded.save(tmp_path / "spec")
    spec = ModelSpec.load(tmp_path / "spec")
    assert not spec.has_modules and spec.fingerprint() == loaded.fingerprint()
    assert torch.equal(spec.unet.conv_in.weight, loaded.unet.conv_in.weight)


def test_a_spec_refuses_weights_that_changed_since(weights_dir, tmp_path):
    from edgediff.models import ModelSpec

    spec = ModelSpec.from_components(load_components(get_preset("tiny"), weights_dir, warn=False))
    path = weights_dir / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["conv_in.bias"] = tensors["conv_in.bias"] + 1
    save_file(tensors, path)
    with pytest.raises(WeightsError, match="weights of tiny changed"):
        spec.modules()
    assert not spec.has_modules


def test_a_copy_with_one_module_replaced_leaves_the_model_alone(tiny_components):
    import copy

    other = copy.copy(tiny_components)
    other.unet = copy.deepcopy(tiny_components.unet).half()
    assert other.unet.dtype == torch.float16 and tiny_components.unet.dtype == torch.float32
    assert other.vqvae is tiny_components.vqvae
