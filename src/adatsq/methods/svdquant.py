"""SVDQuant: smoothing into the weights, a 16-bit low-rank branch, a low-bit residual.

Source: Li et al., "SVDQuant: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion
Models", ICLR 2025 (github.com/mit-han-lab/deepcompressor, nunchaku). Activation outliers are
migrated into the weights by smoothing (α = 0.5 here; deepcompressor searches it per layer), the
smoothed weight is split by a truncated SVD into a low-rank branch kept in 16 bits, which sees the
smoothed but unquantized input, and a residual quantized to the target width. The branch's weights
count in ``model_bytes``.

The paper uses rank 32 on Flux-Dev, whose layers are 3072 wide or wider: about 1% of a layer's
smaller side held in 16 bits. The default rank keeps that proportion on every model,
``max(1, round(min(out, in) * 32 / 3072))`` (1 on the 128-wide embedded models, 32 on Flux-Dev), so
that a W4A4 row is a W4A4 model in the paper's sense; an explicit ``{"rank": 32}`` buys quality with
extra 16-bit parameters (on a 128-wide layer, a third of it). An explicit rank is capped at half of
the layer's smaller side, so that some of every layer is quantized.
"""

from __future__ import annotations

from adatsq.methods.base import Method, register
from adatsq.quant.lowrank import lowrank_split, proportional_rank
from adatsq.quant.qlinear import QuantLinear
from adatsq.quant.smoothing import smooth_layer


@register
class SVDQuant(Method):
    name = "svdquant"
    source = ("Li et al. 2025, SVDQuant (mit-han-lab/deepcompressor): smoothing + 16-bit "
              "low-rank branch (rank 32 of 3072)")
    capture = "none"

    def quantize_layer(self, name, linear, stats, tracker):
        s, W = smooth_layer(linear.weight, stats.absmax[name], self.options.alpha)
        rank = (proportional_rank(*W.shape) if self.options.rank is None
                else max(1, min(self.options.rank, min(W.shape) // 2)))
        down, up, residual = lowrank_split(W, rank)
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker,
                                       weight=residual, smooth=s, lowrank=(down, up))

    def granularity(self):
        g = super().granularity()
        rule = "proportional" if self.options.rank is None else f"rank {self.options.rank}"
        g["weights"] = f"{g['weights']}, 16-bit low-rank branch ({rule})"
        return g

    def finalize(self, pipeline, stats, tracker, layers, policy):
        # from the layers (some may come from a checkpoint or another rank)
        ranks = sorted({q.lowrank_down.shape[0] for q in layers.values()})
        return policy.with_settings(lowrank_rank=self.options.rank, lowrank_ranks=ranks)
