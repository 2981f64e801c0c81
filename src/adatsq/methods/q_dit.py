"""Q-DiT: automatic weight-granularity allocation and sample-wise dynamic activations.

Source: Chen et al., "Q-DiT: Accurate Post-Training Quantization for Diffusion Transformers",
CVPR 2025 (github.com/Juanerx/Q-DiT). Q-DiT gives every layer its own weight group size, chosen by
a search under a budget equal to the cost of one uniform group size, and quantizes activations
dynamically per sample (one range per sample and step, tracking the shift of activation ranges
over timesteps). Its paper searches with an evolutionary algorithm on FID; here the search is a
greedy allocation on a layer-wise proxy, the relative Hessian-weighted output error
``trace(ΔW H ΔWᵀ) / trace(W H Wᵀ)`` on the calibration inputs, solved exactly (a knapsack over
layers: least summed error with no more scales than the uniform budget group size would use).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import torch

from adatsq.calib.gptq import hessian_error
from adatsq.methods.base import Method, register
from adatsq.quant.qlinear import ActivationQuant, QuantLinear, weight_quantizer
from adatsq.search.exact import dynamic_programming


def allocate_group_sizes(errors: dict[str, dict[int, float]], costs: dict[str, dict[int, int]],
                         budget: int) -> dict[str, int]:
    """Per layer the group size minimizing the summed error within ``budget`` scales (exact).

    A multiple-choice knapsack, solved by the same dynamic program as AdaTSQ's reference optimum
    (:func:`adatsq.search.exact.dynamic_programming`), with layers as stages.

    Args:
        errors: layer -> group size -> error.
        costs: layer -> group size -> number of scales (integers).
        budget: total scales allowed.
    """
    names = list(errors)
    options = [sorted(errors[n], reverse=True) for n in names]
    width = max(len(o) for o in options)
    padded = [o + [o[-1]] * (width - len(o)) for o in options]  # repeat a real candidate
    unit = math.gcd(*(costs[n][g] for n, o in zip(names, padded) for g in o))
    cost = np.array([[costs[n][g] // unit for g in o] for n, o in zip(names, padded)], np.float64)
    loss = np.array([[errors[n][g] for g in o] for n, o in zip(names, padded)])
    L = len(names)
    path, _, _ = dynamic_programming(cost, loss, (budget // unit) / L, denominator=1)
    return {n: o[k] for n, o, k in zip(names, padded, path)}


@register
class QDiT(Method):
    name = "q_dit"
    source = "Chen et al. 2025, Q-DiT (Juanerx/Q-DiT): group sizes + per-sample activations"
    capture = "per_step"
    streams = False  # the group-size allocation weighs every layer's Hessian at once

    def activation(self) -> ActivationQuant:
        a = self.recipe.activations
        return ActivationQuant(a.bits, "sample", a.symmetric, a.group_size)

    def granularity(self):
        counts = Counter(getattr(self, "group_sizes", {}).values())
        groups = ", ".join(f"{g}: {n}" for g, n in sorted(counts.items(), reverse=True))
        sym = 'sym' if self.recipe.weights.symmetric else 'asym'
        return {"weights": f"searched groups ({groups}) {sym}",
                "activations": "per-sample dynamic"}

    def prepare(self, pipeline, stats):
        layers = pipeline.adapter.quantizable_layers(pipeline.transformer)
        errors, costs, budget = {}, {}, 0
        for name, linear in layers.items():
            W = linear.weight.detach().float()  # (out, in)
            out_f, in_f = W.shape
            H = stats.hessian_sum(name)
            norm = float(hessian_error(W, torch.zeros_like(W), H)) or 1.0
            sizes = [g for g in self.options.group_sizes if in_f % g == 0] or [in_f]
            errors[name], costs[name] = {}, {}
            for g in sizes:
                q = weight_quantizer(replace(self.recipe.weights, group_size=g))
                errors[name][g] = float(hessian_error(W, q(W), H)) / norm
                costs[name][g] = out_f * in_f // g
            at_budget = [g for g in sizes if g <= self.options.budget_group_size] or [min(sizes)]
            budget += costs[name][max(at_budget)]
        self.group_sizes = allocate_group_sizes(errors, costs, budget)

    def quantize_layer(self, name, linear, stats, tracker):
        g = self.group_sizes[name]
        spec = replace(self.recipe.weights, group_size=None if g == linear.in_features else g)
        return QuantLinear.from_linear(linear, spec, self.activation(), tracker)

    def finalize(self, pipeline, stats, tracker, layers, policy):
        return policy.with_settings(group_sizes=self.group_sizes)
