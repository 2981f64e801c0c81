"""RTN / MinMax: round-to-nearest weights (per output channel) and dynamic per-token activations.

The plain baseline every PTQ paper starts from (e.g. the MinMax rows of ViDiT-Q and AdaTSQ's
Table 3); it needs no calibration.
"""

from __future__ import annotations

from adatsq.methods.base import Method, register
from adatsq.quant.qlinear import QuantLinear


@register
class RTN(Method):
    name = "rtn"
    source = "round-to-nearest MinMax baseline"

    def quantize_layer(self, name, linear, stats, tracker):
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker)
