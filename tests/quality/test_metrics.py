"""Frechet distance against closed forms, the confident share, and the FID plumbing with a TorchScript stand-in."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgediff.errors import InvalidArgumentError, WeightsError
from edgediff.quality.metrics import (
    INCEPTION_SIZE,
    FeatureStats,
    confident_share,
    fid,
    frechet_distance,
    inception_features,
    load_image_folder,
    load_inception,
)


def _stats(mu, sigma):
    return FeatureStats(mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64), count=100)


def test_frechet_of_diagonal_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(_stats(mu1, np.diag(v1)), _stats(mu2, np.diag(v2))) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_commuting_covariances_uses_the_eigenvalues():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))  # a random rotation shared by both covariances
    e1, e2 = rng.uniform(0.2, 2.0, size=6), rng.uniform(0.2, 2.0, size=6)
    s1, s2 = q @ np.diag(e1) @ q.T, q @ np.diag(e2) @ q.T
    mu = rng.normal(size=6)
    expected = np.sum((mu - 0.5) ** 2) + np.sum((np.sqrt(e1) - np.sqrt(e2)) ** 2)
    assert frechet_distance(_stats(mu, s1), _stats(np.full(6, 0.5), s2)) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_general_covariances_matches_the_symmetric_form():
    # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2): compute the right side with eigendecompositions only.
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T

    r1 = psd_sqrt(s1)
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(_stats(np.zeros(4), s1), _stats(np.zeros(4), s2)) == pytest.approx(expected, rel=1e-8)


def test_frechet_is_zero_for_identical_sets_and_handles_singular_covariances():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(10, 32))  # fewer samples than dimensions: singular covariance
    stats = FeatureStats.of(feats)
    assert frechet_distance(stats, stats) == pytest.approx(0.0, abs=1e-6)
    shifted = FeatureStats.of(feats + 1.0)
    assert frechet_distance(stats, shifted) == pytest.approx(32.0, rel=1e-4)


def test_sample_statistics_converge_to_the_true_distance():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, size=(20000, 3))
    y = rng.normal(1.0, 2.0, size=(20000, 3))
    expected = 3 * 1.0 + 3 * (1 + 4 - 2 * 2)  # |mu|^2 + sum(v1 + v2 - 2 sqrt(v1 v2))
    assert frechet_distance(FeatureStats.of(x), FeatureStats.of(y)) == pytest.approx(expected, rel=0.05)


def test_feature_stats_and_frechet_reject_bad_shapes():
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        FeatureStats.of(np.zeros((1, 4)))
    with pytest.raises(InvalidArgumentError, match="dimensions differ"):
        frechet_distance(_stats(np.zeros(2), np.eye(2)), _stats(np.zeros(3), np.eye(3)))


def test_confident_share_counts_rows_at_or_above_the_threshold():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert confident_share(probs) == 0.5
    assert confident_share(probs, threshold=0.5) == 1.0
    with pytest.raises(InvalidArgumentError):
        confident_share(np.zeros((0, 10)))


class _StandInInception(torch.nn.Module):
    """Mimics the StyleGAN2-ADA TorchScript detector's call: uint8 NCHW 299x299, ``return_features`` flag."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise RuntimeError("expected uint8 input")
        if x.shape[1] != 3 or x.shape[2] != 299 or x.shape[3] != 299:
            raise RuntimeError("expected [N, 3, 299, 299]")
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4)  # [N, 3, 4, 4]
        features = pooled.flatten(1)
        if return_features:
            return features
        return features[:, :10]  # 'logits': a different width, so a missing flag shows


@pytest.fixture
def inception_file(tmp_path):
    path = tmp_path / "inception-standin.pt"
    torch.jit.script(_StandInInception()).save(str(path))
    return path


def _write_images(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    return folder


def test_fid_runs_the_torchscript_extractor_on_299px_uint8_and_matches_the_formula(tmp_path, inception_file):
    rng = np.random.default_rng(5)
    generated = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    reference = rng.integers(0, 128, size=(9, 40, 40, 3), dtype=np.uint8)
    ref_dir = _write_images(tmp_path / "ref", reference)
    model = load_inception(inception_file)
    gen_feats = inception_features(model, generated)
    assert gen_feats.shape == (12, 48) and gen_feats.dtype == np.float64
    ref_feats = inception_features(model, load_image_folder(ref_dir, size=INCEPTION_SIZE))
    expected = frechet_distance(FeatureStats.of(gen_feats), FeatureStats.of(ref_feats))
    value = fid(generated, ref_dir, inception_file)
    assert value == pytest.approx(expected, rel=1e-9)
    assert value > 0.1  # the two sets differ in brightness
    assert fid(reference, ref_dir, inception_file) == pytest.approx(0.0, abs=1e-6)


def test_fid_inputs_are_checked(tmp_path, inception_file):
    with pytest.raises(WeightsError, match="does not exist"):
        load_inception(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript file")
    with pytest.raises(WeightsError, match="not a TorchScript"):
        load_inception(junk)
    with pytest.raises(InvalidArgumentError, match="not a directory"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match="holds no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="uint8"):
        inception_features(load_inception(inception_file), np.zeros((2, 8, 8, 3), dtype=np.float32))
