"""`make bench-ma`: every method against the strength of massive activations, of both kinds.

Real DiTs (SD3, Flux) carry *massive activations*: a few hidden channels, on every token, far
larger than the rest. The embedded models get them without changing their function
(:mod:`adatsq.models.massive`), in two variants: *absorbable* (zoo names ``<model>@ma<k>``: the
channels scaled by k and the consumers' input columns by 1/k, which channel balancing undoes
exactly) and *bias-compensated* (``<model>@mb<k>``: constant offsets of k medians in the channels,
absorbed by the consumers' biases, which no channel rescaling removes). For each (variant,
strength) this runs FP and every method at W4A4 and W3A3 on the same test prompts and seeds, and
writes runs/bench-ma/<name>/ (the bench files of each), runs/bench-ma/report.json (the bench
schema; every row with its ``"variant"`` and ``"strength"``, null for the original model; the
measured outlier ratio per name, before and after a Hadamard rotation) and
runs/bench-ma/strength_<variant>.png.
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
from adatsq.zoo.registry import MASSIVE_SUFFIXES

STRENGTHS = {"bias": [10, 30, 110], "absorbable": [30, 100]}
"""Per variant (the bias-compensated first: the one smoothing cannot undo); 110x is about 10x after
rotation at width 128 (``rotated_ratio``)."""
METHODS = ["rtn", "adatsq", "adatsq_cb", "svdquant", "svdquant_r32", "gptq", "quarot", "vidit_q",
           "smoothquant", "q_dit"]
THREADS = 2
STEPS = 10
"""flux-digits samples in 50 steps; the sweep (6 models x 19 rows) samples and calibrates in 10 to
fit about 40 minutes on 2 cores (``--steps 0`` for the model's own schedule)."""
SUFFIX = {kind: suffix for suffix, kind in MASSIVE_SUFFIXES.items()}
"""Variant -> its zoo suffix (``@ma``, ``@mb``), as the zoo names them."""


def variant(model: str, kind: str | None, strength: float | None) -> str:
    return model if strength is None else f"{model}@{SUFFIX[kind]}{strength:g}"


def outlier_summary(model: str, prompts: int = 8, steps: int | None = None) -> dict:
    """Median and largest channel-max / median-channel-max ratio over layers (max over steps),
    and the largest after a Hadamard rotation of each layer's input (ratio / sqrt(width))."""
    from adatsq.bench import activation_outliers
    from adatsq.pipeline import load_pipeline

    pipe = load_pipeline(model)
    ratio = activation_outliers(pipe, pipe.calibration_prompts(prompts, 1), steps=steps)
    peak = np.array([max(r) for r in ratio["outlier_ratio"].values()])
    rotated = np.array([max(r) / np.sqrt(ratio["width"][n])
                        for n, r in ratio["outlier_ratio"].items()])
    return {"median": float(np.median(peak)), "max": float(peak.max()),
            "max_rotated": float(rotated.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--variants", default=",".join(STRENGTHS))
    parser.add_argument("--strengths", default=None,
                        help="comma-separated, the same for every variant (default: "
                             + "; ".join(f"{k}: {v}" for k, v in STRENGTHS.items()) + ")")
    parser.add_argument("--size", type=int, default=10, help="test prompts per category")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="sampling steps (0: the model's own; default %(default)s)")
    parser.add_argument("--bits", default="W4A4,W3A3")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ma"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    kinds = args.variants.split(",")
    configs = [(None, None)] + [
        (kind, float(s)) for kind in kinds
        for s in (args.strengths.split(",") if args.strengths else STRENGTHS[kind])]
    steps = args.steps or None
    rows = make_rows(["fp"], []) + make_rows(METHODS, args.bits.split(","))
    merged, verdicts, outliers, t0 = [], [], {}, time.time()
    for kind, strength in configs:
        name = variant(args.model, kind, strength)
        outliers[name] = outlier_summary(name, steps=steps)
        report = compare(name, rows, args.size, args.out / name, steps=steps, figures=False)
        tag = {"variant": kind, "strength": strength, "name": name}
        merged += [{**r, **tag} for r in report["rows"]]
        verdicts += [{**v, **tag} for v in report["verdicts"]]
        result = {"model": args.model, "steps": report["steps"],
                  "num_prompts": report["num_prompts"], "seed": report["seed"],
                  "environment": environment(report["seed"]),
                  "configs": [{"name": variant(args.model, k, s), "variant": k, "strength": s}
                              for k, s in configs],
                  "outlier_ratio": outliers, "wall_seconds": time.time() - t0,
                  "verdicts": verdicts, "rows": merged}
        write_json(result, args.out / "report.json")
        for k in kinds:
            strength_plot([r for r in merged if r["variant"] in (None, k)],
                          args.out / f"strength_{k}.png",
                          title=f"{args.model}: every method against the strength of {k} "
                                "massive activations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
