"""ViDiT-Q: static-dynamic channel balancing and timestep-aware dynamic activation quantization.

Source: Zhao et al., "ViDiT-Q: Efficient and Accurate Quantization of Diffusion Transformers for
Image and Video Generation", ICLR 2025 (github.com/thu-nics/ViDiT-Q). Channel balancing combines a
*static* part, SmoothQuant-style smoothing with factors from the channel ranges over all timesteps
(α = 0.5), which removes the channel imbalance shared by every step, with a *dynamic* part, a
(randomized) Hadamard rotation after smoothing, which evens out the imbalance that moves from step
to step.
Activations are quantized dynamically per token at every step (their ranges follow the timestep);
weights per output channel by round-to-nearest. (ViDiT-Q's metric-decoupled mixed precision is not
part of this baseline: it is the mixed-precision axis AdaTSQ's search covers.)
"""

from __future__ import annotations

from adatsq.methods.base import Method, layer_signs, register
from adatsq.quant.qlinear import QuantLinear
from adatsq.quant.rotation import rotate
from adatsq.quant.smoothing import smooth_layer


@register
class ViDiTQ(Method):
    name = "vidit_q"
    source = "Zhao et al. 2025, ViDiT-Q (thu-nics/ViDiT-Q): smoothing (alpha 0.5) + rotation"
    capture = "none"

    def quantize_layer(self, name, linear, stats, tracker):
        s, W = smooth_layer(linear.weight, stats.absmax[name], self.options.alpha)
        signs = None
        if self.options.rotate:
            signs = layer_signs(self, name, linear.in_features)
            W = rotate(W.double(), signs).float()
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker,
                                       weight=W, smooth=s, rotate_input=self.options.rotate,
                                       rotation_signs=signs)
