"""Hadamard rotations: exact orthogonality, fast transform = dense matrix, exact fusing."""

import time

import pytest
import torch
from torch import nn

from adatsq.quant.rotation import (
    fwht,
    hadamard_matrix,
    random_signs,
    rotate,
    rotate_hessian,
    rotate_linear_input_,
    rotation_matrix,
)

F64 = torch.float64


def _sylvester(n: int) -> torch.Tensor:
    """Independent reference: ``H[i, j] = (-1)^popcount(i & j) / sqrt(n)``."""
    idx = torch.arange(n)
    bits = idx[:, None] & idx[None, :]
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    return (1 - 2 * parity).to(F64) / n**0.5


@pytest.mark.parametrize("n", [8, 64, 128, 96, 384, 12, 20, 28, 40, 6, 15])
def test_orthogonal_in_float64(n):
    H = hadamard_matrix(n)
    assert H.shape == (n, n) and H.dtype == F64
    assert (H @ H.T - torch.eye(n, dtype=F64)).abs().max() < 1e-12


@pytest.mark.parametrize("n", [8, 64, 128, 96, 384, 12, 20, 28])
def test_hadamard_entries(n):
    """Powers of two and Paley orders give true Hadamard matrices: all entries ±1/sqrt(n)."""
    H = hadamard_matrix(n)
    assert torch.allclose(H.abs(), torch.full_like(H, n**-0.5), atol=1e-15)


def test_orthogonal_3072_fast():
    n = 3072  # Flux-Dev's hidden width: 256 x Paley-12
    start = time.perf_counter()
    H = hadamard_matrix(n)
    HtH = rotate(H.T)  # Hᵀ H by the fast path, O(n² log n)
    elapsed = time.perf_counter() - start
    assert (HtH - torch.eye(n, dtype=F64)).abs().max() < 1e-12
    assert (H[:256] @ H.T - torch.eye(n, dtype=F64)[:256]).abs().max() < 1e-12
    assert elapsed < 10.0  # ~1 s here, with a training job busy on both cores


@pytest.mark.parametrize("n", [1, 2, 8, 64, 128, 512])
def test_fwht_equals_sylvester_matrix(n):
    x = torch.randn(3, 5, n, dtype=F64)
    assert (fwht(x) - x @ _sylvester(n)).abs().max() < 1e-12
    assert (hadamard_matrix(n) - _sylvester(n)).abs().max() < 1e-15


@pytest.mark.parametrize("n", [12, 96, 384, 40, 15])
def test_rotate_equals_dense_matrix(n):
    x = torch.randn(7, n, dtype=F64)
    assert (rotate(x) - x @ hadamard_matrix(n)).abs().max() < 1e-12
    assert (rotate(rotate(x) @ hadamard_matrix(n).T) - rotate(x)).abs().max() < 1e-12


def test_fwht_leaves_input_and_dtype():
    x = torch.randn(4, 32)
    x_before = x.clone()
    y = fwht(x)
    assert y.dtype == torch.float32 and torch.equal(x, x_before)
    assert torch.allclose(fwht(y), x, atol=1e-6)  # Sylvester H is symmetric: an involution


def test_fwht_is_differentiable():
    x = torch.randn(2, 16, dtype=F64, requires_grad=True)
    fwht(x).sum().backward()
    assert torch.allclose(x.grad, torch.ones(2, 16, dtype=F64) @ _sylvester(16).T)


def test_fwht_rejects_non_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.randn(2, 12))


@pytest.mark.parametrize("in_features", [64, 96])
def test_rotated_linear_equals_original(in_features):
    torch.manual_seed(0)
    layer = nn.Linear(in_features, 24).double()
    x = torch.randn(10, in_features, dtype=F64)
    y = layer(x)
    rotate_linear_input_(layer)
    with torch.no_grad():
        assert (layer(rotate(x)) - y).abs().max() < 1e-10

    layer32 = nn.Linear(in_features, 24)
    x32 = torch.randn(10, in_features)
    with torch.no_grad():
        y32 = layer32(x32)
        rotate_linear_input_(layer32)
        assert layer32.weight.dtype == torch.float32
        assert (layer32(rotate(x32)) - y32).abs().max() < 1e-5


def _outlier_ratio(x: torch.Tensor) -> float:
    return float(x.abs().max() / x.abs().median())


@pytest.mark.parametrize("n", [256, 384])
def test_rotation_spreads_an_outlier_channel(n):
    torch.manual_seed(0)
    x = torch.randn(512, n, dtype=F64)
    x[:, 5] *= 50.0  # one outlier channel, as in DiT activations
    before, after = _outlier_ratio(x), _outlier_ratio(rotate(x))
    assert before > 150  # ~50 * 3.5 / 0.67
    assert after < 15  # the outlier's energy is spread over all n channels
    assert after < before / 10


@pytest.mark.parametrize("n", [8, 128, 96, 384, 15])
def test_randomized_rotation_orthogonal_and_exact_in_float64(n):
    s = random_signs(n, seed=3, name="blocks.0.attn.to_q")
    assert set(s.tolist()) == {-1.0, 1.0}
    R = rotation_matrix(n, s)
    assert torch.equal(R, s.double()[:, None] * hadamard_matrix(n))
    assert (R @ R.T - torch.eye(n, dtype=F64)).abs().max() < 1e-12
    x = torch.randn(7, n, dtype=F64)
    assert (rotate(x, s) - x @ R).abs().max() < 1e-12
    layer = nn.Linear(n, 5).double()
    with torch.no_grad():
        y = layer(x)
        rotate_linear_input_(layer, s)
        assert (layer(rotate(x, s)) - y).abs().max() < 1e-12
    H = x.T @ x
    assert (rotate_hessian(H, s) - R.T @ H @ R).abs().max() < 1e-10


def test_random_signs_seeded_per_name():
    a = random_signs(64, seed=0, name="a")
    assert torch.equal(a, random_signs(64, seed=0, name="a"))
    assert not torch.equal(a, random_signs(64, seed=0, name="b"))
    assert not torch.equal(a, random_signs(64, seed=1, name="a"))
    with pytest.raises(ValueError, match="signs of shape"):
        rotate(torch.randn(2, 8), random_signs(4, seed=0))


def test_signs_scatter_a_common_offset():
    """Post-GELU-like inputs share a positive mean: the plain H piles it onto one coordinate,
    random signs do not."""
    torch.manual_seed(0)
    n = 128
    x = torch.rand(256, n, dtype=F64) + 1.0  # every channel around 1.5
    plain = _outlier_ratio(rotate(x))
    randomized = _outlier_ratio(rotate(x, random_signs(n, seed=0)))
    assert plain > 50  # sqrt(128) * 1.5 on coordinate 0 against the small rest
    assert randomized < plain / 5
