"""Per-channel smoothing (SmoothQuant): migrate activation outliers into the weights.

A linear layer ``y = x Wᵀ`` is unchanged by ``x -> x / s`` and ``W -> W diag(s)``. With
``s_j = max|x_j|^α / max|W_:j|^(1-α)`` (Xiao et al., 2023, Eq. 4) the channel ranges of the
activations and of the weights meet in between: ``α = 1`` moves all of the difficulty into the
weights, ``α = 0`` none. The division by ``s`` is fused into the layer that produces ``x`` where the
graph allows (a LayerNorm's scale), otherwise it runs online before the activation quantizer, as
here: in a DiT the producer is an adaptive LayerNorm whose scale depends on the timestep and the
prompt, so nothing static can absorb ``s``.
"""

from __future__ import annotations

import torch


def check_alpha(alpha: float) -> float:
    """``alpha`` if it is a valid migration strength, else a one-line ``ValueError``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    return alpha


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float,
                      eps: float = 1e-5) -> torch.Tensor:
    """Smoothing factors ``s`` (in,) for a layer.

    Args:
        act_absmax: largest |x_j| per input channel (in,), over all calibration inputs.
        weight: the layer's weight (out, in).
        alpha: migration strength in [0, 1].
        eps: floor of both ranges (dead channels get ``s = 1``).

    Example:
        >>> s = smoothing_factors(torch.tensor([100.0, 1.0]), torch.ones(3, 2), alpha=0.5)
        >>> s.tolist()
        [10.0, 1.0]
    """
    check_alpha(alpha)
    if act_absmax.shape != weight.shape[1:]:
        raise ValueError(f"activation ranges of shape {tuple(act_absmax.shape)} do not match a "
                         f"weight of shape {tuple(weight.shape)}")
    a = act_absmax.float().clamp_min(eps)
    w = weight.detach().float().abs().amax(0).clamp_min(eps)  # (in,)
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    dead = act_absmax <= eps
    s = torch.where(dead, torch.ones_like(s), s).clamp(1e-4, 1e4)
    return s.half().float()  # exactly representable in the FP16 the artifact stores


def smooth_weight(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The weight ``W diag(s)`` (out, in) that expects inputs ``x / s``."""
    return weight.detach().float() * s[None, :]


def smooth_layer(weight: torch.Tensor, act_absmax: torch.Tensor,
                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, W diag(s))`` for a layer, from its input ranges (T, in) per step or (in,)."""
    ranges = act_absmax.amax(0) if act_absmax.dim() == 2 else act_absmax
    s = smoothing_factors(ranges, weight, alpha)
    return s, smooth_weight(weight, s)


def smooth_hessian(H: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The Hessian of the smoothed inputs: ``diag(1/s) H diag(1/s)``."""
    inv = 1.0 / s.to(H.dtype)
    return H * inv[:, None] * inv[None, :]
