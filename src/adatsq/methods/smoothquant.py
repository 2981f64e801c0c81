"""SmoothQuant: per-channel smoothing with migration strength α, then round-to-nearest.

Source: Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large
Language Models", ICML 2023 (github.com/mit-han-lab/smoothquant): α = 0.5 by default, activation
ranges from calibration (here: the maximum over all sampling steps), per-channel weights.
"""

from __future__ import annotations

from adatsq.methods.base import Method, register
from adatsq.quant.qlinear import QuantLinear
from adatsq.quant.smoothing import smooth_layer


@register
class SmoothQuant(Method):
    name = "smoothquant"
    source = "Xiao et al. 2023, SmoothQuant (mit-han-lab/smoothquant), alpha 0.5"
    capture = "none"

    def quantize_layer(self, name, linear, stats, tracker):
        s, W = smooth_layer(linear.weight, stats.absmax[name], self.options.alpha)
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker,
                                       weight=W, smooth=s)
