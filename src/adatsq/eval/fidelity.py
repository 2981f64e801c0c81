"""Fidelity of generated images: PSNR and SSIM against a reference generation, and a Fréchet
distance to real scenes.

PSNR and SSIM compare a quantized model's images with the full-precision model's images for the
same prompts and noise (pixel-level agreement). The Fréchet distance is the FID analog: Gaussian
fits of per-slot features (the DigitEval classifier's penultimate layer on the slot's gray ink,
plus the slot's mean RGB) of the generated images and of real held-out scenes.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.linalg
import torch
from numpy.lib.stride_tricks import sliding_window_view

from adatsq.eval.classifier import DigitClassifier, load_classifier
from adatsq.eval.digiteval import ink, slot_crops
from adatsq.zoo import scenes

log = logging.getLogger(__name__)

SSIM_WINDOW = 7  # a 16x16 image leaves a 10x10 SSIM map (an 11-tap window only 6x6)
SSIM_SIGMA = 1.5  # Wang et al. (2004)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. (2004), for data range 1


def _to_unit(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) float64 in [0, 1] from images in [-1, 1] (one (C, H, W) image allowed;
    clips (B, C, F, H, W) become their B*F frames)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().double().numpy()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 3:
        images = images[None]
    if images.ndim == 5:
        images = images.transpose(0, 2, 1, 3, 4).reshape(-1, *images.shape[1:2], *images.shape[3:])
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W) or (C, H, W), got shape {images.shape}")
    return np.clip((images + 1.0) / 2.0, 0.0, 1.0)


def _pair(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> tuple[np.ndarray, ...]:
    x, y = _to_unit(a), _to_unit(b)
    if x.shape != y.shape:
        raise ValueError(f"image batches differ in shape: {x.shape} vs {y.shape}")
    return x, y


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
         max_db: float = 100.0) -> float:
    """Mean per-image PSNR in dB of two batches in [-1, 1] (mapped to [0, 1], peak 1).

    Args:
        a: images (N, C, H, W) or (C, H, W) in [-1, 1].
        b: images of the same shape.
        max_db: cap of each image's PSNR, reached by identical images (MSE 0 would give
            infinity and make the batch mean infinite).

    Returns:
        The mean over images of ``min(10 log10(1 / MSE), max_db)``.

    Example:
        >>> x = np.zeros((2, 3, 16, 16))
        >>> psnr(x, x)
        100.0
        >>> round(psnr(x, x + 0.2), 2)  # MSE 0.01 on [0, 1]
        20.0
    """
    return float(psnr_per_image(a, b, max_db).mean())


def psnr_per_image(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                   max_db: float = 100.0) -> np.ndarray:
    """PSNR in dB of every image pair (N,), capped at ``max_db`` (see :func:`psnr`)."""
    x, y = _pair(a, b)
    mse = ((x - y) ** 2).mean(axis=(1, 2, 3))  # (N,)
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(1.0 / mse)
    return np.minimum(db, max_db)


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalized 1-D Gaussian taps (size,)."""
    t = np.arange(size) - (size - 1) / 2
    w = np.exp(-t ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def _filter(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of the last two axes: (..., H, W) -> (..., H-k+1, W-k+1)."""
    x = sliding_window_view(x, len(taps), axis=-2) @ taps  # (..., H-k+1, W)
    return sliding_window_view(x, len(taps), axis=-1) @ taps


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
         window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> float:
    """Mean SSIM of two batches in [-1, 1] (Wang et al. 2004, Gaussian window, data range 1).

    Local statistics use a ``window`` x ``window`` Gaussian of standard deviation ``sigma``
    without padding (7 taps leave a 10x10 map on a 16x16 image); the SSIM map is averaged per
    channel, then over channels and images.

    Example:
        >>> x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16))
        >>> round(ssim(x, x), 6)
        1.0
    """
    return float(ssim_per_image(a, b, window, sigma).mean())


def ssim_per_image(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                   window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """SSIM of every image pair (N,) (see :func:`ssim`); its mean is :func:`ssim`."""
    x, y = _pair(a, b)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"images {x.shape[-2:]} smaller than the SSIM window {window}")
    taps = _gaussian_window(window, sigma)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    mu_x, mu_y = _filter(x, taps), _filter(y, taps)  # (N, C, h, w)
    var_x = _filter(x * x, taps) - mu_x ** 2
    var_y = _filter(y * y, taps) - mu_y ** 2
    cov = _filter(x * y, taps) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return ssim_map.mean(axis=(1, 2, 3))  # (N,): equal maps, so the mean is ssim


@torch.no_grad()
def slot_features(images: torch.Tensor | np.ndarray,
                  classifier: DigitClassifier | None = None) -> np.ndarray:
    """Per-slot features (4 B, hidden + 3): classifier features of the gray ink + mean RGB.

    Every slot counts, empty ones too, so the distribution also reflects how many digits a
    generator draws.
    """
    classifier = classifier or load_classifier()
    crops = slot_crops(images)  # (B, 4, 3, 8, 8)
    crops = crops.reshape(-1, *crops.shape[2:])  # (4B, 3, 8, 8)
    feats = classifier.features(torch.from_numpy(ink(crops)).float()).double().numpy()
    return np.concatenate([feats, crops.mean(axis=(-2, -1))], axis=1)


def _frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) of two Gaussians."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(np.abs(covmean.real).max(), 1e-12):
            log.warning("Fréchet distance: sqrtm has a large imaginary part %.3g", imag)
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance(images: torch.Tensor | np.ndarray,
                     reference_images: torch.Tensor | np.ndarray,
                     classifier: DigitClassifier | None = None, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussian fits of the slot features of two image sets.

    Args:
        images: generated scenes (B, 3, 16, 16) in [-1, 1].
        reference_images: reference scenes, e.g. :func:`real_reference`.
        classifier: feature extractor; the shipped DigitEval classifier if None.
        eps: added to both covariance diagonals so that near-singular fits (empty slots share
            one feature vector) keep ``sqrtm`` well conditioned.

    Returns:
        The distance (>= 0 up to round-off; 0 for identical sets).

    Example:
        >>> real = real_reference(10)
        >>> frechet_distance(real, real) < 1e-3
        True
    """
    fits = []
    for batch in (images, reference_images):
        feats = slot_features(batch, classifier)  # (4B, D)
        if feats.shape[0] < 2:
            raise ValueError("need at least one image per set for a Fréchet distance")
        cov = np.cov(feats, rowvar=False) + eps * np.eye(feats.shape[1])
        fits.append((feats.mean(axis=0), cov))
    return max(_frechet(*fits[0], *fits[1]), 0.0)


def real_reference(n_per_category: int = 100, seed: int = 1) -> np.ndarray:
    """Real held-out scenes (6 n, 3, 16, 16) in [-1, 1], all categories, for the Fréchet distance.

    Example:
        >>> real_reference(2).shape
        (12, 3, 16, 16)
    """
    return np.stack([s.image for s in scenes.make_scenes(n_per_category, seed, part="held_out")])
