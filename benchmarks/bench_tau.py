"""Sweep of the temperature tau of Fisher-guided calibration (Eq. 6), behind AdaTSQ's default.

Every run quantizes flux-digits at W3A3 with uniform activation bits (Table 3's "+fisher_calib"
row), GPTQ on H' = sum_t alpha_t H_t, for several tau, plus tau = inf (uniform calibration). Each is
scored on 60 selection prompts (disjoint from the evaluation prompts): DigitEval total and PSNR
against the FP images. Calibration statistics and the Fisher are computed once and shared.

    python benchmarks/bench_tau.py        # writes benchmarks/results/tau.json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from adatsq.calib.capture import CaptureConfig, capture
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.fidelity import psnr
from adatsq.pipeline import load_pipeline, quantize_

TAUS = [0.1, 0.3, 1.0, 3.0, 10.0, math.inf]
OUT = Path(__file__).parent / "results" / "tau.json"


def main(model: str = "flux-digits", bits: int = 3, prompts: int = 60) -> int:
    t0 = time.time()
    pipe = load_pipeline(model)
    calib = Recipe().calibration
    stats = capture(pipe, pipe.calibration_prompts(calib.num_prompts, calib.seed), seed=calib.seed,
                    config=CaptureConfig(hessian="per_step"))
    selection, task = pipe.selection_set(prompts, seed=calib.seed + 1)
    fp = pipe.generate(selection, seed=calib.seed + 1)
    rows = []
    for tau in TAUS:
        options = {"pareto": False, "calib": "uniform"} if math.isinf(tau) else {
            "pareto": False, "calib": "fisher", "tau": tau}
        q = load_pipeline(model)
        recipe = Recipe(method="adatsq", weights=WeightSpec(bits=bits),
                        activations=ActivationSpec(bits=bits), options=options)
        quantize_(q, recipe, progress=False, stats=stats)
        images = q.generate(selection, seed=calib.seed + 1)
        rows.append({"tau": None if math.isinf(tau) else tau,
                     "digiteval": float(task(images).mean()), "psnr": psnr(images, fp)})
        print(rows[-1], flush=True)
    OUT.write_text(json.dumps({"model": model, "bits": f"W{bits}A{bits}", "prompts": prompts,
                               "rows": rows, "seconds": time.time() - t0}, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
