"""The committed digits model and classifier: they load, and the model draws digits the classifier recognises."""

import json

import numpy as np
import pytest

from edgediff.models import get_preset
from edgediff.models.presets import BUNDLED_WEIGHTS_ROOT
from edgediff.quality.classifier import accuracy, classify, load_classifier
from edgediff.quality.dataset import load_split
from edgediff.quality.gate import evaluate

from .helpers import generate

CONFIDENT_SHARE_THRESHOLD = 0.75
"""16 torch-fp32 samples of the committed model must have at least this share classified with p >= 0.9.

The trained model scores well above it (see training.json), while noise, an untrained model or a broken sampler
score near 0: the threshold leaves room for the 16-sample estimate's spread (one image is 6.25 points).
"""


def test_digits_preset_uses_the_committed_weights(digits_components):
    preset = get_preset("digits")
    assert preset.bundled_weights == BUNDLED_WEIGHTS_ROOT / "digits"
    assert preset.image_size == 32 and preset.latent_shape == (3, 8, 8)
    assert digits_components.weights.kind == "bundled"
    assert not digits_components.weights.synthetic
    # the latents the UNet was trained on are encode(x) * scaling_factor; the default 0.18215 would be wrong here
    record = json.loads((BUNDLED_WEIGHTS_ROOT / "digits" / "training.json").read_text())
    assert digits_components.scaling_factor == pytest.approx(record["vqvae"]["scaling_factor"])
    assert digits_components.scaling_factor != pytest.approx(0.18215)
    assert digits_components.scheduler_config["beta_schedule"] == "scaled_linear"
    assert digits_components.scheduler_config["clip_sample"] is False


def test_committed_classifier_recognises_held_out_digits():
    model = load_classifier()
    _, test = load_split()
    assert accuracy(model, test) >= 0.97
    real = evaluate(test.uint8_nhwc())
    assert real.confident_share >= 0.9
    assert real.digits_fd == pytest.approx(0.0, abs=1e-6)  # the reference set against itself
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    noise_scores = evaluate(noise)
    assert noise_scores.digits_fd > 10 * max(evaluate(load_split()[0].uint8_nhwc()).digits_fd, 0.01)


@pytest.mark.slow
def test_sixteen_samples_of_the_committed_model_are_confident_digits(digits_components):
    images = generate(digits_components, "torch-fp32", samples=16)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.uint8
    scores = evaluate(images)
    assert scores.confident_share >= CONFIDENT_SHARE_THRESHOLD, scores.summary()
    predicted = classify(load_classifier(), images).probs.argmax(axis=1)
    assert len(set(predicted.tolist())) >= 5, f"mode collapse: classes {sorted(predicted.tolist())}"
