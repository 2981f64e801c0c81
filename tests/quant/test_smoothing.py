"""SmoothQuant's factors ``s_j = max|X_j|^α / max|W_:j|^(1-α)`` (Xiao et al. 2023, Eq. 4) and the
transforms built on them."""

import pytest
import torch

from adatsq.quant.smoothing import (
    smooth_hessian,
    smooth_layer,
    smooth_weight,
    smoothing_factors,
)


def _weight(column_max: list[float]) -> torch.Tensor:
    """A (3, in) weight whose column ``j`` has largest magnitude ``column_max[j]`` (signs mixed)."""
    m = torch.tensor(column_max)
    return torch.stack([m * 0.5, -m, m * 0.25])


@pytest.mark.parametrize("alpha, expected", [
    (0.5, [4.0, 0.25, 9.0, 1.0]),  # sqrt(a) / sqrt(w)
    (0.75, [8.0, 0.5, 27.0, 1.0]),  # a^(3/4) / w^(1/4)
    (1.0, [16.0, 1.0, 81.0, 1.0]),  # all of the difficulty into the weights: s = a
    (0.0, [1.0, 1 / 16, 1.0, 1.0]),  # none: s = 1 / w
])
def test_smoothing_factors_by_hand(alpha, expected):
    """Exact powers (all representable in FP16); the last channel is dead (never active):
    ``s = 1``. Inverting the formula (``w^(1-α) / a^α``) or swapping the exponents errs by
    factors of 2 or more."""
    act = torch.tensor([16.0, 1.0, 81.0, 0.0])
    weight = _weight([1.0, 16.0, 1.0, 5.0])
    s = smoothing_factors(act, weight, alpha)
    assert s.dtype == torch.float32 and s.shape == (4,)
    assert s.tolist() == expected


def test_smoothing_balances_activation_and_weight_ranges():
    """At α = 0.5 every channel's activation range after smoothing, ``max|X_j| / s_j``, equals its
    weight range ``max|W_:j| s_j`` (both ``sqrt(max|X_j| max|W_:j|)``), the layer's output is
    unchanged, and the outlier channels get the largest factors."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(256, 32, generator=gen)
    X[:, [3, 11]] *= 60.0  # outlier channels
    W = torch.randn(16, 32, generator=gen) * torch.rand(32, generator=gen).add(0.1)
    act = X.abs().amax(0)
    s = smoothing_factors(act, W, 0.5)
    Ws = smooth_weight(W, s)
    act_range = (X / s).abs().amax(0)
    weight_range = Ws.abs().amax(0)
    torch.testing.assert_close(act_range, weight_range, rtol=2e-3, atol=0)  # s is FP16-rounded
    torch.testing.assert_close((X / s) @ Ws.T, X @ W.T, rtol=1e-4, atol=1e-3)
    assert set(torch.topk(s, 2).indices.tolist()) == {3, 11}
    # the activation ranges spread about as the square root of before (85x -> 20x here)
    assert float(act_range.max() / act_range.min()) < float(act.max() / act.min()) / 3


def test_smoothing_factors_are_clamped_and_fp16_exact():
    act = torch.tensor([1e6, 1e-3, 3.0])
    weight = _weight([1e-6, 1e3, 7.0])
    s = smoothing_factors(act, weight, 0.5)
    assert s[0] == 1e4 and s[1] == pytest.approx(1e-3, rel=1e-3)  # sqrt(1e-6) = 1e-3 unclamped
    assert torch.equal(s, s.half().float())
    assert smoothing_factors(torch.tensor([1e8]), _weight([1e-8]), 1.0)[0] == 1e4
    assert smoothing_factors(torch.tensor([1e-2]), _weight([1e8]), 0.0)[0] == pytest.approx(
        1e-4, rel=1e-3)


def test_smooth_layer_uses_the_range_over_all_steps_and_the_hessian_follows():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(5, 4, generator=gen)
    per_step = torch.tensor([[1.0, 9.0, 2.0, 0.5], [4.0, 1.0, 2.0, 8.0]])  # (T, in)
    s, Ws = smooth_layer(W, per_step, 0.5)
    assert torch.equal(s, smoothing_factors(torch.tensor([4.0, 9.0, 2.0, 8.0]), W, 0.5))
    assert torch.equal(Ws, W * s)
    X = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    H = X.T @ X
    Xs = X / s.double()
    torch.testing.assert_close(smooth_hessian(H, s), Xs.T @ Xs, rtol=1e-12, atol=1e-12)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        smoothing_factors(torch.ones(2), torch.ones(3, 2), 1.5)
    with pytest.raises(ValueError, match="do not match"):
        smoothing_factors(torch.ones(3), torch.ones(3, 2), 0.5)
