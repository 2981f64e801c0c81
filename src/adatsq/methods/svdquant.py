"""SVDQuant: smoothing into the weights, a 16-bit low-rank branch, a low-bit residual.

Source: Li et al., "SVDQuant: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion
Models", ICLR 2025 (github.com/mit-han-lab/deepcompressor, nunchaku). Activation outliers are
migrated into the weights by smoothing (α = 0.5 here; deepcompressor searches it per layer), the
smoothed weight is split by a truncated SVD into a rank-32 branch kept in 16 bits, which sees the
smoothed but unquantized input, and a residual quantized to the target width. The branch's weights
count in ``model_bytes``. On flux-digits (layers 128-640 wide) rank 32 is 5-25% of the width,
against 1% on Flux-Dev's 3072: pass ``{"rank": 2}`` to match Flux-Dev's proportion. The rank is
capped at half of the layer's smaller side, so that some of every layer is quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

from adatsq.config import MethodOptions
from adatsq.methods.base import Method, register
from adatsq.quant.lowrank import lowrank_split
from adatsq.quant.qlinear import QuantLinear
from adatsq.quant.smoothing import check_alpha, smooth_layer


@dataclass(frozen=True)
class SVDQuantOptions(MethodOptions):
    rank: int = 32
    alpha: float = 0.5

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"SVDQuant rank must be positive, got {self.rank}")
        check_alpha(self.alpha)


@register
class SVDQuant(Method):
    name = "svdquant"
    source = "Li et al. 2025, SVDQuant (mit-han-lab/deepcompressor): smoothing + rank-32 branch"
    options_class = SVDQuantOptions
    capture = "none"

    def quantize_layer(self, name, linear, stats, tracker):
        s, W = smooth_layer(linear.weight, stats.absmax[name], self.options.alpha)
        rank = max(1, min(self.options.rank, min(W.shape) // 2))
        down, up, residual = lowrank_split(W, rank)
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker,
                                       weight=residual, smooth=s, lowrank=(down, up))
