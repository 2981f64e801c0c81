"""Does the step loss (Eq. 2) rank the timesteps as quantizing them actually hurts?

For one model and activation width (weights kept in 16 bits, inputs rotated as AdaTSQ does):

* *damage* of step ``t``: quantize the activations at step ``t`` only (16 bits at every other
  step) and measure the MSE of the final samples against the FP samples, same prompts and seeds;
* *step losses* of step ``t`` with every layer quantized: the MSE between the quantized and the FP
  velocity at ``z_t`` in four forms: the conditional velocity (Eq. 2 literally) or the guided one
  (``v_u + s (v_c - v_u)``, what sampling integrates), each on the FP trajectory or on the
  quantized model's own trajectory.

It reports the Spearman rank correlation of each step loss with the damage over the steps and
plots the normalized curves. Writes runs/step_damage/report.json and step_damage.png.

    python benchmarks/step_damage.py --model flux-digits --bits 3
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tqdm import tqdm

from adatsq.bench import environment
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.plots import step_damage_plot
from adatsq.files import write_json
from adatsq.models.sampling import guidance_batch, guided_velocity
from adatsq.pipeline import load_pipeline, quantize_
from adatsq.policy import Policy

THREADS = 2
SEED = 4
"""Prompts and noise of this analysis: calibration-style prompts under their own seed, disjoint
from the evaluation prompts (nothing here is tuned)."""


def _set_bits(policy: Policy, model, bits) -> None:
    """Every layer at ``bits`` (one width, or one per step), through the policy."""
    per_step = np.broadcast_to(np.asarray(bits), (policy.steps,))
    policy.with_activation_bits(np.tile(per_step, (len(policy.layers), 1))).apply_(model)


def _trajectory(pipe, prompts) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Latents and noise levels entering every step, and the final samples."""
    latents, sigmas = [], []

    def record(i, sigma, x):
        latents.append(x.clone())
        sigmas.append(sigma.clone())

    images = pipe.generate(prompts, seed=SEED, callback=record, batch_size=len(prompts))
    return latents, sigmas, images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/step_damage"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    t0 = time.time()
    pipe = load_pipeline(args.model)
    prompts = pipe.calibration_prompts(args.prompts, SEED)
    recipe = Recipe(method="adatsq", weights=WeightSpec(bits=16),
                    activations=ActivationSpec(bits=args.bits),
                    options={"pareto": False, "calib": "none"})
    policy = quantize_(pipe, recipe, progress=False, execution="simulated")
    T, A, FP = pipe.default_steps, args.bits, 16
    _set_bits(policy, pipe.transformer, FP)
    fp_latents, sigmas, fp_images = _trajectory(pipe, prompts)
    _set_bits(policy, pipe.transformer, A)
    q_latents, _, _ = _trajectory(pipe, prompts)

    cond, null, cfg = pipe.encode(prompts), pipe.null_conditioning(), pipe.cfg_scale
    batches = {s: guidance_batch(cond, null, s) for s in (1.0, cfg)}
    losses = {f"{kind}, {where}": np.zeros(T) for kind in ("conditional", "guided")
              for where in ("FP trajectory", "quantized trajectory")}
    with torch.no_grad():
        for t in tqdm(range(T), desc="step losses"):
            for where, z in (("FP trajectory", fp_latents[t]),
                             ("quantized trajectory", q_latents[t])):
                for kind, scale in (("conditional", 1.0), ("guided", cfg)):
                    v = {}
                    for bits in (FP, A):
                        _set_bits(policy, pipe.transformer, bits)
                        v[bits] = guided_velocity(pipe.adapter, pipe.transformer, z,
                                                  batches[scale], sigmas[t], scale)
                    losses[f"{kind}, {where}"][t] = float((v[A] - v[FP]).square().mean())
    damage = np.zeros(T)
    for t in tqdm(range(T), desc="damage per step"):
        _set_bits(policy, pipe.transformer, tuple(A if s == t else FP for s in range(T)))
        images = pipe.generate(prompts, seed=SEED)
        damage[t] = float((images - fp_images).square().mean())
    rho = {k: float(spearmanr(v, damage).statistic) for k, v in losses.items()}
    report = {"environment": environment(SEED), "model": args.model, "bits": f"W16A{A}",
              "prompts": args.prompts, "cfg_scale": cfg, "damage": damage.tolist(),
              "losses": {k: v.tolist() for k, v in losses.items()}, "spearman": rho,
              "seconds": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "report.json")
    step_damage_plot(report, args.out / "step_damage.png")
    logging.info("Spearman with the damage: %s", {k: round(v, 3) for k, v in rho.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
