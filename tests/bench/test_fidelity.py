import math

import numpy as np
import pytest

from edgediff.bench.fidelity import (
    compare_outputs,
    gaussian_kernel,
    max_abs_error,
    psnr_db,
    ssim,
    ssim_per_image,
)


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(2, 32, 24, 3), dtype=np.uint8)


def test_identical_images(images: np.ndarray) -> None:
    assert math.isinf(psnr_db(images, images))
    assert ssim(images, images) == pytest.approx(1.0, abs=1e-12)
    fid = compare_outputs(images, images, reference="torch-fp32", latents=np.ones((2, 3, 4, 4)),
                          reference_latents=np.ones((2, 3, 4, 4)))
    assert fid.to_dict()["psnr_db"] == "inf" and fid.max_abs_latent_error == 0.0 and fid.images == 2


def test_psnr_of_a_known_error(images: np.ndarray) -> None:
    shifted = images.astype(np.int32)
    shifted = np.where(shifted < 255, shifted + 1, shifted - 1)  # every pixel off by exactly 1
    assert psnr_db(shifted, images) == pytest.approx(10 * math.log10(255**2))


def test_ssim_of_constant_images_matches_the_formula() -> None:
    a, b = np.full((1, 16, 16, 1), 100.0), np.full((1, 16, 16, 1), 150.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)  # variances are 0: the contrast term is C2/C2
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_matches_a_brute_force_window_loop() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 255, size=(1, 14, 13, 1))
    b = np.clip(a + rng.normal(0, 20, size=a.shape), 0, 255)
    taps = gaussian_kernel()
    w = np.outer(taps, taps)
    k, c1, c2 = taps.size, (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[1] - k + 1):
        for j in range(a.shape[2] - k + 1):
            x, y = a[0, i:i + k, j:j + k, 0], b[0, i:i + k, j:j + k, 0]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert ssim_per_image(a, b)[0] == pytest.approx(np.mean(values), rel=1e-12)


def test_ssim_matches_scikit_image_when_installed(images: np.ndarray) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    noisy = np.clip(images.astype(int) + np.random.default_rng(2).integers(-40, 40, images.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    ref = metrics.structural_similarity(noisy[0], images[0], gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255, channel_axis=-1)
    assert ssim(noisy[:1], images[:1]) == pytest.approx(ref, rel=1e-9)


def test_a_perturbation_lowers_psnr_and_ssim(images: np.ndarray) -> None:
    noisy = np.clip(images.astype(int) + np.random.default_rng(3).integers(-30, 30, images.shape), 0, 255)
    assert psnr_db(noisy, images) < 30
    assert ssim(noisy, images) < 0.99
    assert max_abs_error(np.array([1.0, -2.0]), np.array([1.5, 1.0])) == 3.0


def test_shape_mismatch_and_small_images_are_refused(images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr_db(images, images[:1])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(images[:, :8, :8], images[:, :8, :8])
