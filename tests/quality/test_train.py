"""``edgediff train-reference`` for a few iterations: a loadable checkpoint, deterministic, atomic, checked input."""

import json
import os
import subprocess
import sys

import pytest

from edgediff.errors import InvalidArgumentError
from edgediff.models import get_preset, load_components
from edgediff.quality.classifier import load_classifier
from edgediff.quality.dataset import minibatches
from edgediff.quality.train import TrainConfig, train_reference

FEW = {"classifier_steps": 3, "vq_steps": 4, "unet_steps": 3, "eval_samples": 2, "eval_steps": 2,
       "kmeans_iterations": 2}


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.mark.slow
def test_train_reference_cli_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "ref"
    proc = run_cli("train-reference", "--out", str(out), "--vq-steps", "4", "--unet-steps", "3",
                   "--classifier-steps", "3", "--eval-samples", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    components = load_components(get_preset("digits"), out, warn=False)  # the committed preset's architecture
    assert components.weights.kind == "directory"
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["unet_steps"] == 3
    assert record["command"].startswith("edgediff train-reference --out")
    assert components.scaling_factor == pytest.approx(record["vqvae"]["scaling_factor"])
    assert record["evaluation"]["samples"] == 2
    load_classifier(out / "classifier" / "digits_classifier.safetensors")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    again = run_cli("train-reference", "--out", str(out), "--vq-steps", "1")
    assert again.returncode == 2 and "already exists" in again.stderr


@pytest.mark.slow
def test_training_is_deterministic_given_the_seed(tmp_path):
    config = TrainConfig(**{**FEW, "eval_samples": 0})
    a = train_reference(config, tmp_path / "a").record["files"]
    b = train_reference(config, tmp_path / "b").record["files"]
    assert a == b
    c = train_reference(TrainConfig(**{**FEW, "eval_samples": 0, "seed": 1}), tmp_path / "c").record["files"]
    assert c["unet/diffusion_pytorch_model.safetensors"] != a["unet/diffusion_pytorch_model.safetensors"]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(InvalidArgumentError, match="--unet-steps"):
        train_reference(TrainConfig(unet_steps=-1), tmp_path / "x")
    proc = run_cli("train-reference", "--out", str(tmp_path / "y"), "--vq-steps", "-3")
    assert proc.returncode == 2
    assert "--vq-steps must be >= 0" in proc.stderr
    assert not (tmp_path / "y").exists()


def test_minibatches_cover_every_item_once_per_epoch():
    import torch

    gen = torch.Generator().manual_seed(0)
    batches = minibatches(10, 3, gen)
    epoch = torch.cat([next(batches) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 full batches of a 10-item permutation, the last item dropped
