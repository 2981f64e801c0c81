"""The figures of a quantization run, from its policy and calibration statistics.

* ``fisher.png``: Fisher sensitivity, layers x timesteps (paper Fig. 4a);
* ``violins.png``: one layer's input distribution per timestep (Fig. 4b);
* ``bitmap.png``: the searched activation bits, layers x timesteps;
* ``pareto.png``: the final beam in the (mean bits, cumulative MSE) plane with the chosen path;
* ``calibration_error.png``: one layer's weight-reconstruction error per timestep under uniform and
  Fisher-guided calibration (Fig. 5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adatsq.calib.gptq import gptq_quantize, hessian_error
from adatsq.eval import plots
from adatsq.quant.primitives import WeightQuantizer
from adatsq.quant.rotation import random_signs, rotate, rotate_hessian


def calibration_error_curves(stats, layer: str, weight: torch.Tensor, alpha: np.ndarray,
                             bits: int = 3, signs: torch.Tensor | None = None,
                             ) -> dict[str, np.ndarray]:
    """Per-step error ``||W X_t - Q X_t||² / rows`` of GPTQ under uniform and Fisher weights, in
    the rotated basis AdaTSQ quantizes in (``signs``: its random signs, None: plain Hadamard)."""
    W = rotate(weight.detach().double(), signs).float()
    H_t = stats.hessian[layer] / stats.rows[layer].clamp_min(1)[:, None, None]  # (T, d, d)
    curves = {}
    for label, w in (("uniform calibration", None),
                     ("Fisher-guided calibration", torch.tensor(alpha, dtype=torch.float32))):
        H = rotate_hessian(stats.hessian_sum(layer, w).double(), signs).float()
        Q = gptq_quantize(W, H, WeightQuantizer(bits)).weight
        curves[label] = np.array([float(hessian_error(
            W, Q, rotate_hessian(h.double(), signs).float())) for h in H_t])
    return curves


def run_figures(policy, stats, fp_model, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Writes every figure the policy and statistics allow; returns their paths.

    ``fp_model`` is the unquantized transformer (for the calibration-error curves).
    """
    out_dir = Path(out_dir)
    written = []
    settings = policy.settings
    sigmas = np.asarray(stats.sigmas) if stats is not None else np.array(policy.schedule)
    if "fisher" in settings:
        f = settings["fisher"]
        written.append(plots.fisher_heatmap(f["layers"], np.array(f["scores"]),
                                            np.array(f["sigmas"]), out_dir / f"{prefix}fisher.png",
                                            title=f"{policy.model}: Fisher sensitivity (Eq. 1)"))
    if "search" in settings:
        label = f"{policy.method} W{policy.weight_bits}A{policy.average_activation_bits:.2f}"
        written.append(plots.bit_map(list(policy.layers), policy.bit_matrix(),
                                     out_dir / f"{prefix}bitmap.png",
                                     title=f"{policy.model}: activation bits, {label}"))
        written.append(plots.pareto_plot(settings["search"], out_dir / f"{prefix}pareto.png",
                                         title=f"{policy.model}: final beam, {label}"))
    if stats is not None and stats.samples:
        layer = max(stats.layers, key=lambda n: float(stats.absmax[n].amax()))
        written.append(plots.activation_violins(
            stats.samples[layer].numpy(), sigmas, out_dir / f"{prefix}violins.png",
            title=f"{policy.model}: input of {layer} per timestep"))
    if stats is not None and "alpha" in settings and stats.hessian:
        f = settings["fisher"]
        scores = np.array(f["scores"])
        spread = scores.max(axis=1) / np.maximum(scores.mean(axis=1), 1e-30)
        li = int(np.argmax(spread))  # the layer whose sensitivity varies most over time
        layer = f["layers"][li]
        weight = fp_model.get_submodule(layer).weight
        recipe = policy.recipe or {}
        signs = None
        if recipe.get("options", {}).get("random_signs", True):
            signs = random_signs(weight.shape[1], recipe.get("calibration", {}).get("seed", 1),
                                 layer)
        curves = calibration_error_curves(stats, layer, weight,
                                          np.array(settings["alpha"][layer]), signs=signs)
        written.append(plots.error_over_timesteps(
            curves, sigmas, out_dir / f"{prefix}calibration_error.png",
            title=f"{policy.model}: 3-bit weight error of {layer} per step", fisher=scores[li]))
    return written
