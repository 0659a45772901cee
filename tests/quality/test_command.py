"""``edgediff quality`` as a user runs it: a folder of images, generated images with the gate, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from edgediff.quality.dataset import load_split


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def _write_pngs(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")


def test_quality_scores_a_folder_of_real_digits_and_writes_json(tmp_path):
    _, test = load_split()
    _write_pngs(tmp_path / "real", test.uint8_nhwc()[:40])
    out = tmp_path / "scores.json"
    proc = run_cli("quality", "--images", str(tmp_path / "real"), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(out.read_text())["scores"]
    assert scores["samples"] == 40
    assert scores["confident_share"] >= 0.9
    assert "confident" in proc.stdout and "digits-FD" in proc.stdout


def test_quality_with_fid_uses_the_given_torchscript_file(tmp_path):
    class Extractor(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1)

    weights = tmp_path / "inception.pt"
    torch.jit.script(Extractor()).save(str(weights))
    _, test = load_split()
    _write_pngs(tmp_path / "a", test.uint8_nhwc()[:20])
    _write_pngs(tmp_path / "b", test.uint8_nhwc()[20:40])
    out = tmp_path / "scores.json"
    proc = run_cli("quality", "--images", str(tmp_path / "a"), "--fid-reference", str(tmp_path / "b"),
                   "--inception-weights", str(weights), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["scores"]["fid"] > 0
    assert "FID" in proc.stdout


@pytest.mark.slow
def test_quality_gate_of_generated_images(tmp_path):
    out = tmp_path / "gate.json"
    proc = run_cli("quality", "--model", "digits", "--variant", "jit-fp32", "--samples", "16", "--gate",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["gate"]["passed"] is True
    assert result["source"]["variant"] == "jit-fp32"
    assert result["baseline"]["samples"] == 16
    assert "quality gate: PASSED" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--images", "/nonexistent/dir"], "is not a directory"),
    (["--fid-reference", "/tmp"], "must be given together"),
    (["--samples", "1"], "--samples must be >= 2"),
    (["--images", "/tmp", "--gate"], "cannot be used with --images"),
    (["--variant", "nope"], "unknown variant"),
    (["--classifier", "/nonexistent.safetensors"], "digits classifier"),
])
def test_quality_refuses_bad_input_with_one_line(args, message):
    proc = run_cli("quality", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
