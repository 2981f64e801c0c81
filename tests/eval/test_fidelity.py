"""PSNR, SSIM and the slot-feature Fréchet distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adatsq.eval import fidelity as fi

NOISE_LEVELS = (0.01, 0.03, 0.1, 0.3)


@pytest.fixture(scope="module")
def real():
    return fi.real_reference(50, seed=1)


@pytest.fixture(scope="module")
def other_real():
    return fi.real_reference(50, seed=2)


def _noisy(images, std, seed=0):
    return images + np.random.default_rng(seed).normal(0, std, images.shape)


def test_psnr_identical_is_capped_and_known_value(real):
    assert fi.psnr(real, real) == 100.0
    assert fi.psnr(real, real, max_db=float("inf")) == float("inf")
    flat = np.zeros((2, 3, 16, 16))
    assert fi.psnr(flat, flat + 0.2) == pytest.approx(20.0)  # MSE 0.01 on [0, 1]


def test_psnr_decreases_with_noise(real):
    values = [fi.psnr(real, _noisy(real, s)) for s in NOISE_LEVELS]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[0] < 100.0


def test_ssim_identical_is_one_and_decreases_with_noise(real):
    assert abs(fi.ssim(real, real) - 1.0) < 1e-6
    values = [fi.ssim(real, _noisy(real, s)) for s in NOISE_LEVELS]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[0] < 1.0


def test_metrics_accept_torch_and_reject_shape_mismatch(real):
    noisy = _noisy(real[:8], 0.1)
    assert fi.ssim(torch.from_numpy(real[:8]), torch.from_numpy(noisy)) == pytest.approx(
        fi.ssim(real[:8], noisy))
    assert fi.psnr(torch.from_numpy(real[:8]), noisy) == pytest.approx(fi.psnr(real[:8], noisy))
    with pytest.raises(ValueError):
        fi.psnr(real[:2], real[:3])


def test_frechet_distance_self_other_and_noise(real, other_real):
    real_vs_real = fi.frechet_distance(real, other_real)
    assert fi.frechet_distance(real, real) < 1e-3 * real_vs_real
    noise = np.random.default_rng(0).uniform(-1, 1, real.shape)
    assert fi.frechet_distance(real, noise) > 10 * real_vs_real
    blurry = np.clip(_noisy(other_real, 0.3), -1, 1)
    assert real_vs_real < fi.frechet_distance(real, blurry) < fi.frechet_distance(real, noise)


def test_slot_features_shape(real):
    feats = fi.slot_features(real[:5])
    assert feats.shape == (20, 128 + 3)
