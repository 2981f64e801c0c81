"""QuaRot: Hadamard rotation of every quantized layer's input, GPTQ weights.

Source: Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS 2024
(github.com/spcl/QuaRot): inputs rotated by a (randomized in the paper, here deterministic)
Hadamard matrix so that outlier channels are spread over all channels; weights absorb the rotation
(``W H``) and are quantized with GPTQ on the rotated Hessian ``Hᵀ H_x H``. A DiT's adaptive
LayerNorms modulate per sample, so the rotation cannot be folded into them: it runs online before
the activation quantizer (QuaRot's "online Hadamard", used there for the down projections).
"""

from __future__ import annotations

from dataclasses import dataclass

from adatsq.methods.base import GPTQOptions, Method, register, solve_weights
from adatsq.quant.qlinear import QuantLinear
from adatsq.quant.rotation import rotate, rotate_hessian


@dataclass(frozen=True)
class QuaRotOptions(GPTQOptions):
    gptq: bool = True


@register
class QuaRot(Method):
    name = "quarot"
    source = "Ashkboos et al. 2024, QuaRot (spcl/QuaRot): Hadamard rotation + GPTQ weights"
    options_class = QuaRotOptions
    capture = "per_step"

    def quantize_layer(self, name, linear, stats, tracker):
        W = rotate(linear.weight.detach().double()).float()  # W H
        H = rotate_hessian(stats.hessian_sum(name).double()).float()
        gptq = self.options if self.options.gptq else None
        solved = solve_weights(W, H, self.recipe.weights, gptq)
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker,
                                       weight=W, rotate_input=True, **solved)
