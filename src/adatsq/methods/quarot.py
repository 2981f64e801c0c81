"""QuaRot: Hadamard rotation of every quantized layer's input, GPTQ weights.

Source: Ashkboos et al., "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", NeurIPS 2024
(github.com/spcl/QuaRot): inputs rotated by a randomized Hadamard matrix ``D H`` (seeded random
signs ``D``, per layer) so that outlier channels are spread over all channels; weights absorb the
rotation (``W D H``) and are quantized with GPTQ on the rotated Hessian ``(DH)ᵀ H_x DH``. A DiT's
adaptive LayerNorms modulate per sample, so the rotation cannot be folded into them: it runs online
before the activation quantizer (QuaRot's "online Hadamard", used there for the down projections).
"""

from __future__ import annotations

from adatsq.methods.base import Method, register, rotated_layer


@register
class QuaRot(Method):
    name = "quarot"
    source = "Ashkboos et al. 2024, QuaRot (spcl/QuaRot): Hadamard rotation + GPTQ weights"
    capture = "per_step"

    def quantize_layer(self, name, linear, stats, tracker):
        return rotated_layer(self, name, linear, stats.hessian_sum(name), tracker,
                             self.options.gptq)
