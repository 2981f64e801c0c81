"""`make bench`: the full comparison behind BENCHMARKS.md.

For every model: FP, RTN at W8A8, every baseline and AdaTSQ at W4A4 and W3A3 (SVDQuant at the
paper's proportional rank and, labelled ``svdquant_r32``, at rank 32), the ablation rows of the
paper's Table 3 at W3A3, and on :data:`DECOMPOSED` models the weight-only and activation-only rows
(W4A16, W16A4, W3A16, W16A3) of :data:`DECOMPOSITION`; on the model's test set
(:data:`EVAL_SIZE`: prompts per GenEval category for the image models, clips for the video model)
and on a disjoint validation set (:data:`VALIDATION_SIZE`) on which the strongest baseline is
chosen, at the model's default number of sampling steps; plus the activation-outlier measurement and
the evaluator's ceiling (real held-out samples). Writes runs/bench/<model>/report.json (with the
paired verdicts), per_sample.json, report.md, samples.png, efficiency.png, figures/, artifacts/
(the two AdaTSQ rows), outliers.json, outliers.png, ceiling.json and timing.json, then the combined
runs/bench/report.md and radar.png over every model benchmarked so far.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from adatsq.bench import combine, compare, make_rows, markdown_table
from adatsq.files import write_json
from adatsq.zoo.registry import ENTRIES

METHODS = ["rtn", "adatsq", "svdquant", "svdquant_r32", "adatsq_lr", "gptq", "quarot", "vidit_q",
           "smoothquant", "q_dit"]
"""In order of interest: report.json is rewritten after every row, so a cut run keeps the first."""
ABLATIONS = ["minmax", "+pareto", "+fisher_calib", "+pareto+avg_calib"]
DECOMPOSITION = ["rtn", "quarot", "svdquant", "adatsq"]
"""Methods run with 16-bit weights or 16-bit activations: where does the error come from?"""
DECOMPOSITION_BITS = ["W4A16", "W16A4", "W3A16", "W16A3"]
DECOMPOSED = ("flux-digits",)
MODELS = ["flux-digits", "flux-digits-schnell", "zimage-digits", "wan-digits"]
EVAL_SIZE = {"flux-digits": 50, "flux-digits-schnell": 100, "zimage-digits": 50,
             "wan-digits": 96}
"""Test set per model, sized so that ``make bench`` fits its time budget (BENCHMARKS.md)."""
VALIDATION_SIZE = {"flux-digits": 60, "flux-digits-schnell": 120, "zimage-digits": 60,
                   "wan-digits": 32}
"""Validation prompts per model (disjoint from the test set): the strongest baseline is chosen
on them."""
THREADS = 2


def bench_rows(methods: list[str] | None = None, decomposition: bool = False):
    """The rows of `make bench` (a subset of methods with ``methods``)."""
    methods = methods or ["fp", *METHODS, *ABLATIONS]
    rows = []
    for m in methods:
        if m == "fp":
            rows += make_rows(["fp"], [])
        elif m == "rtn":
            rows += make_rows(["rtn"], ["W8A8", "W4A4", "W3A3"])
        elif m in ABLATIONS:
            rows += make_rows([m], ["W3A3"])
        else:
            rows += make_rows([m], ["W4A4", "W3A3"])
        if decomposition and m in DECOMPOSITION:
            rows += make_rows([m], DECOMPOSITION_BITS)
    return rows


def fp_calibration_seconds(model: str) -> float:
    """Wall time of one FP generation of the calibration set (the unit of AdaTSQ's cost)."""
    from adatsq.config import Recipe
    from adatsq.pipeline import load_pipeline

    pipe = load_pipeline(model)
    calib = Recipe().calibration
    prompts = pipe.calibration_prompts(calib.num_prompts, calib.seed)
    t0 = time.perf_counter()
    pipe.generate(prompts, seed=calib.seed)
    return time.perf_counter() - t0


def outliers(model: str, out: Path, prompts: int = 32) -> dict:
    """Channel max / median channel max per layer and step, on calibration prompts."""
    from adatsq.bench import activation_outliers
    from adatsq.eval.plots import outlier_plot
    from adatsq.pipeline import load_pipeline

    pipe = load_pipeline(model)
    result = activation_outliers(pipe, pipe.calibration_prompts(prompts, 1))
    write_json(result, out / "outliers.json")
    outlier_plot(result["outlier_ratio"], out / "outliers.png",
                 title=f"{model}: activation outliers per layer and step")
    return result


def ceiling(model: str, out: Path, size: int) -> dict:
    """The task metric of real held-out samples of the evaluation prompts (the evaluator's
    ceiling)."""
    import torch

    from adatsq.pipeline import load_pipeline

    task = load_pipeline(model).task
    evaluation = task.evaluation_set(size)
    result = task.score(torch.from_numpy(evaluation.real), evaluation.specs)
    result.pop("per_sample")
    write_json(result, out / "ceiling.json")
    return result


def main() -> int:
    from adatsq.eval.plots import efficiency_plot

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=" ".join(MODELS), help="space-separated zoo names")
    parser.add_argument("--methods", help="comma-separated subset (default: all)")
    parser.add_argument("--size", type=int, help="test set size (default: EVAL_SIZE)")
    parser.add_argument("--validation", type=int, help="validation prompts (default: "
                        "VALIDATION_SIZE)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)  # reports record it; results depend on it in the last bits
    for model in args.models.split():
        t0 = time.time()
        out = args.out / model
        out.mkdir(parents=True, exist_ok=True)
        size = args.size or EVAL_SIZE.get(model, 100)
        validation = args.validation if args.validation is not None else \
            VALIDATION_SIZE.get(model, 60)
        unit = fp_calibration_seconds(model)
        outliers(model, out)
        ceiling(model, out, size)
        rows = bench_rows(args.methods.split(",") if args.methods else None,
                          decomposition=model in DECOMPOSED)
        report = compare(model, rows, size, out, artifacts_dir=out / "artifacts",
                         artifact_methods=("adatsq",), validation=validation)
        efficiency_plot(report["rows"], out / "efficiency.png",
                        title=f"{model}: quality against size and compute")
        write_json({"wall_seconds": time.time() - t0, "rows": len(rows),
                    "fp_calibration_seconds": unit}, out / "timing.json")
        print(f"## {model}\n\n{markdown_table(report)}\n")
        combine(args.out, list(ENTRIES))  # the zoo's order, whichever models ran
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
