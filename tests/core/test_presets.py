import json
from pathlib import Path

import pytest

from edgediff.errors import UnknownPresetError
from edgediff.models import get_preset, list_presets, load_components

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "ldm-celebahq-256"


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_celebahq_has_the_study_parameter_counts():
    components = load_components(get_preset("celebahq-256"), warn=False)
    unet = _count(components.unet)
    total = unet + _count(components.vqvae)
    assert unet == 274_056_163
    assert round(total / 1e6, 1) == 329.4
    assert components.preset.latent_shape == (3, 64, 64)
    assert components.preset.image_size == 256
    assert components.weights.synthetic


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference is not beside this checkout")
def test_celebahq_configs_match_the_reference_checkpoint():
    preset = get_preset("celebahq-256")
    for sub, name, ours in (("unet", "config.json", preset.unet_config), ("vqvae", "config.json", preset.vqvae_config)):
        ref = {k: v for k, v in json.loads((REFERENCE / sub / name).read_text()).items() if not k.startswith("_")}
        assert ours == ref
    sched = json.loads((REFERENCE / "scheduler" / "scheduler_config.json").read_text())
    assert preset.scheduler_config["num_train_timesteps"] == sched["timesteps"] == 1000
    assert preset.scheduler_config["beta_schedule"] == "scaled_linear"
    assert (preset.scheduler_config["beta_start"], preset.scheduler_config["beta_end"]) == (0.0015, 0.0195)


def test_tiny_is_a_few_hundred_thousand_parameters(tiny_components):
    total = _count(tiny_components.unet) + _count(tiny_components.vqvae)
    assert 100_000 < total < 1_000_000
    assert type(tiny_components.unet).__name__ == "UNet2DModel"
    assert type(tiny_components.vqvae).__name__ == "VQModel"


def test_synthetic_weights_are_deterministic_and_seeded():
    preset = get_preset("tiny")
    a = load_components(preset, warn=False, seed=0)
    b = load_components(preset, warn=False, seed=0)
    c = load_components(preset, warn=False, seed=1)
    pa, pb, pc = (next(x.unet.parameters()) for x in (a, b, c))
    assert (pa == pb).all()
    assert not (pa == pc).all()
    assert a.weights.sha256 == b.weights.sha256 != c.weights.sha256


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(UnknownPresetError, match="celebahq-256"):
        get_preset("sd-xl")
    assert {"celebahq-256", "tiny"} <= set(list_presets())
