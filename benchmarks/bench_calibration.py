"""Fisher-guided calibration against uniform calibration, on the validation split: the sweep that
chooses AdaTSQ's calibration defaults (tau, mix, fisher_target).

Every run quantizes the model at W3A3 with uniform activation bits (the "+fisher_calib" row of the
paper's Table 3): GPTQ on ``H' = sum_t alpha_t H_t`` with ``alpha = (1 - mix) softmax(I / tau) +
mix / T`` from the Fisher of ``fisher_target``, against ``calib="uniform"`` (QuaRot's GPTQ on the
plain average). Each is sampled on the validation prompts (the bench's validation split, disjoint
from the test prompts) and scored by the paired PSNR difference to uniform calibration per prompt
(mean, 95% interval) and by the task total; the effective number of calibrated steps
``N_eff = 1 / sum_t alpha_t^2`` is reported per run (median and minimum over layers). Calibration
statistics and the Fisher are computed once and shared.

    python benchmarks/bench_calibration.py --model flux-digits

writes benchmarks/results/calibration_<model>.json.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from adatsq.bench import VALIDATION_SEED, environment
from adatsq.calib.capture import CaptureConfig, capture
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.paired import paired_difference
from adatsq.files import write_json
from adatsq.pipeline import load_pipeline, quantize_

TAUS = [0.3, 1.0, 3.0, 10.0]
MIXES = [0.0, 0.5]
TARGETS = ["velocity", "output"]
THREADS = 2
RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--bits", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=60, help="validation prompts")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    t0 = time.time()
    pipe = load_pipeline(args.model)
    task = pipe.task
    calib = Recipe().calibration
    stats = capture(pipe, pipe.calibration_prompts(calib.num_prompts, calib.seed),
                    seed=calib.seed, config=CaptureConfig(hessian="per_step"))
    prompts, specs = task.calibration_set(args.prompts, VALIDATION_SEED)
    fp = pipe.generate(prompts, seed=VALIDATION_SEED)
    configs = [{"calib": "uniform"}] + [
        {"calib": "fisher", "fisher_target": target, "tau": tau, "mix": mix}
        for target, tau, mix in itertools.product(TARGETS, TAUS, MIXES)]
    rows, reference = [], None
    for options in configs:
        q = load_pipeline(args.model)
        recipe = Recipe(method="adatsq", weights=WeightSpec(bits=args.bits),
                        activations=ActivationSpec(bits=args.bits),
                        options={"pareto": False, **options})
        policy = quantize_(q, recipe, progress=False, stats=stats, execution="simulated")
        images = q.generate(prompts, seed=VALIDATION_SEED)
        psnr = task.fidelity_per_sample(images, fp)["psnr"]
        score = task.score(images, specs)
        if reference is None:
            reference = psnr
        row = {**options, "psnr": float(psnr.mean()), "total": score["eval"]["total"],
               "psnr_vs_uniform": paired_difference(psnr, reference)}
        n_eff = policy.settings.get("effective_steps")
        if n_eff:
            values = np.array(list(n_eff.values()))
            row["n_eff"] = {"median": float(np.median(values)), "min": float(values.min())}
        rows.append(row)
        print({k: v for k, v in row.items()}, flush=True)
    out = RESULTS / f"calibration_{args.model}.json"
    write_json({"environment": environment(VALIDATION_SEED), "model": args.model,
                "bits": f"W{args.bits}A{args.bits}", "prompts": args.prompts,
                "steps": stats.steps, "rows": rows, "seconds": time.time() - t0}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
