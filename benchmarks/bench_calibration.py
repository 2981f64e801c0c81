"""Which per-step weights should GPTQ's Hessian get? Fisher-guided calibration measured properly.

Every run quantizes the model at W3A3 with uniform activation bits (the "+fisher_calib" row of the
paper's Table 3): GPTQ on ``H' = sum_t alpha_t H_t`` (Eqs. 7-8), with ``alpha`` from

* the Fisher of Eq. 6 (softmax over steps of the per-layer mean-normalized Fisher, no uniform
  mix) of three targets: ``velocity`` (Eq. 1 as printed), ``output`` (target-free) and ``x0``
  (the loss on the denoised estimate, which the last steps' irreducible noise does not dominate),
  each at tau 1 (Eq. 6 literally, on normalized scores) and 10;
* ``delta_sigma``: alpha_t proportional to the step size sigma_t - sigma_{t+1};
* ``damage``: alpha_t proportional to the measured damage of quantizing step t alone
  (``benchmarks/step_damage.py``, runs/step_damage/report.json, when it is of this model);
* ``uniform``: the plain average (QuaRot's GPTQ), the reference;
* ``default``: AdaTSQ's current default (velocity Fisher, tau 10, mix 0.5),

each with and without the last step. Every run samples the validation prompts (disjoint from the
test prompts) and is scored by the paired per-prompt difference to uniform calibration, in PSNR to
the FP samples and in faithfulness to them, with 95% intervals.

*Transfer bound.* The calibration prompts are split in halves A and B, each captured on its own.
Per layer and step t, GPTQ is fitted on A and its output error ``tr(E H_t^B E^T)`` is measured on
B's step-t Hessian, for the uniform fit and for the fit on ``H_t^A`` alone (all the weight on step
t: the most any reweighting can give that step). ``gain`` = 1 - step-only / uniform, summed over
layers: what reweighting could win at step t at best; ``gap`` = uniform fit on A / uniform fit on
B, measured on B, - 1: the sampling noise of the Hessians themselves. The Fig. 5 analog plots one
layer's per-step error, uniform against Fisher-guided.

    python benchmarks/bench_calibration.py --model flux-digits --prompts 200

writes runs/calibration/report.json, fig5.png and transfer.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adatsq.bench import VALIDATION_SEED, environment
from adatsq.calib.capture import CaptureConfig, capture
from adatsq.calib.fisher import fisher_information, temporal_weights
from adatsq.calib.gptq import gptq_quantize, hessian_error
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.paired import paired_difference
from adatsq.eval.plots import calibration_error_plot, transfer_plot
from adatsq.files import write_json
from adatsq.pipeline import load_pipeline, quantize_
from adatsq.quant.primitives import WeightQuantizer
from adatsq.quant.rotation import rotate, rotate_hessian

TAUS = (1.0, 10.0)
TARGETS = ("velocity", "output", "x0")
THREADS = 2
FIG5_LAYER = "transformer_blocks.0.attn.to_q"


def configs(sigmas: np.ndarray, damage: list[float] | None) -> list[dict]:
    """Every weighting, with and without the last step; uniform with the last step first."""
    base = [("uniform", {"calib": "uniform"}),
            ("default", {"calib": "fisher", "tau": 10.0, "mix": 0.5})]
    base += [(f"fisher_{target}", {"calib": "fisher", "fisher_target": target, "tau": tau,
                                   "mix": 0.0})
             for target in TARGETS for tau in TAUS]
    step = np.abs(np.diff(np.append(sigmas, 0.0)))  # (T,) the Euler move of each step
    base.append(("delta_sigma", {"calib": "steps", "step_weights": tuple(step.tolist())}))
    if damage is not None:
        base.append(("damage", {"calib": "steps", "step_weights": tuple(damage)}))
    return [(name, {**options, "calib_last_step": last})
            for last in (True, False) for name, options in base]


def load_damage(model: str, steps: int) -> list[float] | None:
    path = Path("runs/step_damage/report.json")
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    damage = report.get("damage")
    if report.get("model") != model or damage is None or len(damage) != steps:
        return None
    return [max(float(d), 0.0) for d in damage]


def transfer_bound(pipe, stats_a, stats_b, bits: int, fisher_alpha: dict[str, np.ndarray]
                   ) -> dict:
    """Per step (summed over layers): the out-of-sample error of the uniform fit, the step-only
    fit and the in-sample uniform fit, measured on B's step Hessians; the Fig. 5 layer's error per
    step under uniform and Fisher-guided (tau 1) weights."""
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    steps = stats_a.steps
    sums = {k: np.zeros(steps) for k in ("uniform", "step_only", "in_sample")}
    fig5 = None
    q = WeightQuantizer(bits)
    for name, layer in tqdm(layers.items(), desc="transfer bound", leave=False):
        W = rotate(layer.weight.double()).float()

        def hess(stats, t=None, weights=None):
            H = stats.hessian_sum(name, weights if t is None else
                                  torch.eye(steps)[t])
            return rotate_hessian(H.double()).float()

        uniform = gptq_quantize(W, hess(stats_a), q).weight
        in_sample = gptq_quantize(W, hess(stats_b), q).weight
        for t in range(steps):
            Hb = hess(stats_b, t)
            sums["uniform"][t] += float(hessian_error(W, uniform, Hb))
            sums["in_sample"][t] += float(hessian_error(W, in_sample, Hb))
            only = gptq_quantize(W, hess(stats_a, t), q).weight
            sums["step_only"][t] += float(hessian_error(W, only, Hb))
        if name == FIG5_LAYER or (fig5 is None and name == list(layers)[-1]):
            guided = gptq_quantize(W, hess(stats_a, weights=torch.tensor(
                fisher_alpha[name], dtype=torch.float32)), q).weight
            fig5 = {"layer": name, "uniform": [], "fisher": []}
            for t in range(steps):
                Hb = hess(stats_b, t)
                fig5["uniform"].append(float(hessian_error(W, uniform, Hb)))
                fig5["fisher"].append(float(hessian_error(W, guided, Hb)))
    gain = 1.0 - sums["step_only"] / np.maximum(sums["uniform"], 1e-30)
    gap = sums["uniform"] / np.maximum(sums["in_sample"], 1e-30) - 1.0
    return {"per_step": {k: v.tolist() for k, v in sums.items()}, "gain": gain.tolist(),
            "gap": gap.tolist(), "max_gain": float(gain.max()),
            "mean_gain": float(gain.mean()), "mean_gap": float(gap.mean()), "fig5": fig5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=200, help="validation prompts")
    parser.add_argument("--out", type=Path, default=Path("runs/calibration"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    t0 = time.time()
    pipe = load_pipeline(args.model)
    task = pipe.task
    calib = Recipe().calibration
    calib_prompts = pipe.calibration_prompts(calib.num_prompts, calib.seed)
    stats = capture(pipe, calib_prompts, seed=calib.seed, config=CaptureConfig(hessian="per_step"))
    prompts, _ = task.calibration_set(args.prompts, VALIDATION_SEED)
    fp = pipe.generate(prompts, seed=VALIDATION_SEED, progress="FP")
    damage = load_damage(args.model, stats.steps)
    rows, reference, per_sample = [], None, {}
    for name, options in configs(stats.sigmas.numpy(), damage):
        q = load_pipeline(args.model)
        recipe = Recipe(method="adatsq", weights=WeightSpec(bits=args.bits),
                        activations=ActivationSpec(bits=args.bits),
                        options={"pareto": False, **options})
        # the statistics (and each target's Fisher) are shared by every run
        policy = quantize_(q, recipe, progress=False, stats=stats, execution="simulated")
        images = q.generate(prompts, seed=VALIDATION_SEED, progress=name)
        close = task.fidelity_per_sample(images, fp)
        if reference is None:
            reference = close
        tau = f"_tau{options['tau']:g}" if name.startswith("fisher") else ""
        key = f"{name}{tau}{'' if options['calib_last_step'] else '-last'}"
        per_sample[key] = {k: v.tolist() for k, v in close.items()}
        psnr = paired_difference(close["psnr"], reference["psnr"])
        faithful = paired_difference(close["faithful"], reference["faithful"])
        n_eff = policy.settings.get("effective_steps")
        rows.append({
            "weighting": name, "last_step": options["calib_last_step"],
            "tau": options.get("tau") if options["calib"] == "fisher" else None,
            "mix": options.get("mix") if options["calib"] == "fisher" else None,
            "target": options.get("fisher_target", "velocity")
            if options["calib"] == "fisher" else None,
            "n_prompts": len(prompts), "psnr": float(close["psnr"].mean()),
            "faithful": float(close["faithful"].mean()),
            "psnr_diff": psnr["diff"], "lo": psnr["lo"], "hi": psnr["hi"],
            "faithful_diff": faithful["diff"], "faithful_lo": faithful["lo"],
            "faithful_hi": faithful["hi"],
            "n_eff_median": float(np.median(list(n_eff.values()))) if n_eff else None})
        print(f"{key}: PSNR {rows[-1]['psnr']:.2f} dB, vs uniform {psnr['diff']:+.2f} "
              f"[{psnr['lo']:+.2f}, {psnr['hi']:+.2f}]", flush=True)
    half = len(calib_prompts) // 2
    split = [capture(pipe, part, seed=calib.seed, config=CaptureConfig(hessian="per_step"),
                     progress=False) for part in (calib_prompts[:half], calib_prompts[half:])]
    fisher = fisher_information(pipe, pipe.calibration_prompts(16, calib.seed),
                                steps=stats.steps, seed=calib.seed, sigmas=stats.sigmas,
                                progress=False)
    alpha = dict(zip(fisher.layers, temporal_weights(fisher.scores, 1.0)))
    bound = transfer_bound(pipe, *split, args.bits, alpha)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(VALIDATION_SEED), "model": args.model,
              "bits": f"W{args.bits}A{args.bits}", "n_prompts": len(prompts),
              "steps": stats.steps, "sigmas": stats.sigmas.tolist(),
              "damage_source": "runs/step_damage/report.json" if damage else None,
              "rows": rows, "transfer_bound": bound, "seconds": time.time() - t0}
    write_json(per_sample, args.out / "per_sample.json", indent=None)
    write_json(report, args.out / "report.json")
    calibration_error_plot(bound["fig5"], stats.sigmas.numpy(), args.out / "fig5.png")
    transfer_plot(bound, stats.sigmas.numpy(), args.out / "transfer.png")
    print(f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
