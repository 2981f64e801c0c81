"""GPTQ with uniform temporal calibration: one Hessian averaged over all sampling steps.

Source: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", ICLR 2023 (github.com/IST-DASLab/gptq): block size 128, dampening 1% of the mean
diagonal, no act-order. For a diffusion model the calibration inputs of every step weigh the same
(``H = (1/T) sum_t H_t``), the baseline that AdaTSQ's Fisher-guided calibration improves on.
"""

from __future__ import annotations

from adatsq.methods.base import Method, register, solve_weights
from adatsq.quant.qlinear import QuantLinear


@register
class GPTQ(Method):
    name = "gptq"
    source = "Frantar et al. 2023, GPTQ (IST-DASLab/gptq), uniform over timesteps"
    capture = "per_step"

    def quantize_layer(self, name, linear, stats, tracker):
        W = linear.weight.detach().float()
        solved = solve_weights(W, stats.hessian_sum(name), self.recipe.weights, self.options)
        return QuantLinear.from_linear(linear, self.recipe.weights, self.activation(), tracker,
                                       **solved)
