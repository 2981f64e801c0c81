"""Low-rank + residual split of a weight (SVDQuant, Li et al., 2025).

``W = L_up L_down + R`` with ``L_up L_down`` the best rank-``r`` approximation of ``W`` (truncated
SVD). The low-rank branch runs in 16 bits and absorbs the dominant directions (including the
activation outliers migrated into the weights by smoothing); only the residual ``R``, whose range is
much smaller, is quantized.
"""

from __future__ import annotations

import torch

PAPER_RANK, PAPER_WIDTH = 32, 3072
"""SVDQuant's rank on Flux-Dev and the width of Flux-Dev's layers: the default proportion."""


def proportional_rank(out_features: int, in_features: int) -> int:
    """The rank SVDQuant's paper would use at this layer size: 32 of 3072, rounded, at least 1.

    Example:
        >>> proportional_rank(128, 128), proportional_rank(3072, 12288)
        (1, 32)
    """
    return max(1, round(min(out_features, in_features) * PAPER_RANK / PAPER_WIDTH))


def lowrank_split(weight: torch.Tensor,
                  rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(down (r, in), up (out, r), residual (out, in))`` with ``up @ down + residual == weight``.

    The singular values are split evenly between the two factors (``up = U S^½``,
    ``down = S^½ Vᵀ``), which keeps both in a range FP16 stores well.

    Example:
        >>> W = torch.randn(8, 6, dtype=torch.float64)
        >>> down, up, R = lowrank_split(W, 2)
        >>> bool(torch.allclose(up @ down + R, W))
        True
    """
    out_features, in_features = weight.shape
    if not 0 < rank <= min(out_features, in_features):
        raise ValueError(f"low-rank branch rank must be in 1..{min(out_features, in_features)} for "
                         f"a {out_features}x{in_features} layer, got {rank}")
    W = weight.detach().to(torch.float64)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = S[:rank].sqrt()
    up = U[:, :rank] * root[None, :]  # (out, r)
    down = root[:, None] * Vh[:rank]  # (r, in)
    residual = W - up @ down
    dtype = weight.dtype if weight.dtype == torch.float64 else torch.float32
    return down.to(dtype), up.to(dtype), residual.to(dtype)
