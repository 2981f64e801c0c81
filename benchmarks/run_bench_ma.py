"""`make bench-ma`: every method against the strength of massive activations.

Real DiTs (SD3, Flux) carry *massive activations*: a few hidden channels, on every token, far
larger than the rest, with magnitudes set by the timestep embedding. The embedded models get them
without changing their function (:mod:`adatsq.models.massive`, zoo names ``<model>@ma<k>``). For
each strength (none, 10, 30, 100) this runs FP and every method at W4A4 and W3A3 on the same test
prompts and seeds, and writes runs/bench-ma/<model>@ma<k>/ (the bench files of each strength),
runs/bench-ma/report.json (the bench schema; every row with its ``"strength"``, null for the
original model; the measured outlier ratio per strength) and runs/bench-ma/strength.png.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from adatsq.bench import compare, environment, make_rows
from adatsq.eval.plots import strength_plot
from adatsq.files import write_json

STRENGTHS = [None, 10, 30, 100]
METHODS = ["rtn", "adatsq", "svdquant", "svdquant_r32", "gptq", "quarot", "vidit_q",
           "smoothquant", "q_dit"]
THREADS = 2
STEPS = 10
"""flux-digits samples in 50 steps; the sweep (4 models x 19 rows) samples and calibrates in 10 to
fit about 25 minutes on 2 cores (``--steps 0`` for the model's own schedule)."""


def variant(model: str, strength: float | None) -> str:
    return model if strength is None else f"{model}@ma{strength:g}"


def outlier_summary(model: str, prompts: int = 8, steps: int | None = None) -> dict:
    """Median and largest channel-max / median-channel-max ratio over layers (max over steps)."""
    from adatsq.bench import activation_outliers
    from adatsq.pipeline import load_pipeline

    pipe = load_pipeline(model)
    ratio = activation_outliers(pipe, pipe.calibration_prompts(prompts, 1), steps=steps)
    peak = np.array([max(r) for r in ratio["outlier_ratio"].values()])
    return {"median": float(np.median(peak)), "max": float(peak.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--strengths", default=",".join("none" if s is None else str(s)
                                                        for s in STRENGTHS))
    parser.add_argument("--size", type=int, default=10, help="test prompts per category")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="sampling steps (0: the model's own; default %(default)s)")
    parser.add_argument("--bits", default="W4A4,W3A3")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ma"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    strengths = [None if s == "none" else float(s) for s in args.strengths.split(",")]
    steps = args.steps or None
    rows = make_rows(["fp"], []) + make_rows(METHODS, args.bits.split(","))
    merged, verdicts, outliers, t0 = [], [], {}, time.time()
    for strength in strengths:
        name = variant(args.model, strength)
        outliers[name] = outlier_summary(name, steps=steps)
        report = compare(name, rows, args.size, args.out / name, steps=steps, figures=False)
        merged += [{**r, "strength": strength} for r in report["rows"]]
        verdicts += [{**v, "strength": strength} for v in report["verdicts"]]
        result = {"model": args.model, "steps": report["steps"],
                  "num_prompts": report["num_prompts"], "seed": report["seed"],
                  "environment": environment(report["seed"]), "strengths": strengths,
                  "outlier_ratio": outliers, "wall_seconds": time.time() - t0,
                  "verdicts": verdicts, "rows": merged}
        write_json(result, args.out / "report.json")
        strength_plot(merged, args.out / "strength.png",
                      title=f"{args.model}: every method against massive-activation strength")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
