"""`make bench`: the full comparison behind BENCHMARKS.md.

For every model: FP, RTN at W8A8, every baseline and AdaTSQ at W4A4 and W3A3, and the ablation
rows of the paper's Table 3 at W3A3, on the model's evaluation set (:data:`EVAL_SIZE`: prompts per
GenEval category for the image models, clips for the video model) at its default number of
sampling steps; plus the activation-outlier measurement and the evaluator's ceiling (real held-out
samples). Writes runs/bench/<model>/report.json, report.md, samples.png, figures/, artifacts/ (the
two AdaTSQ rows), outliers.json, outliers.png, ceiling.json and timing.json, then the combined
runs/bench/report.md and radar.png over every model benchmarked so far.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from adatsq.eval.report import combine, compare, make_rows, markdown_table, write_json

METHODS = ["rtn", "adatsq", "svdquant", "gptq", "quarot", "vidit_q", "smoothquant", "q_dit"]
"""In order of interest: report.json is rewritten after every row, so a cut run keeps the first."""
ABLATIONS = ["minmax", "+pareto", "+fisher_calib", "+pareto+avg_calib"]
MODELS = ["flux-digits", "flux-digits-schnell", "zimage-digits", "wan-digits"]
EVAL_SIZE = {"flux-digits": 100, "flux-digits-schnell": 100, "zimage-digits": 50,
             "wan-digits": 96}
"""Evaluation set per model, sized so that ``make bench`` fits its time budget (BENCHMARKS.md)."""


def bench_rows(methods: list[str] | None = None):
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
    return rows


def outliers(model: str, out: Path, prompts: int = 32) -> dict:
    """Channel max / median channel max per layer and step, on calibration prompts."""
    from adatsq.eval.plots import outlier_plot
    from adatsq.eval.report import activation_outliers
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
    write_json(result, out / "ceiling.json")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=" ".join(MODELS), help="space-separated zoo names")
    parser.add_argument("--methods", help="comma-separated subset (default: all)")
    parser.add_argument("--size", type=int, help="evaluation set size (default: EVAL_SIZE)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model in args.models.split():
        t0 = time.time()
        out = args.out / model
        out.mkdir(parents=True, exist_ok=True)
        size = args.size or EVAL_SIZE.get(model, 100)
        outliers(model, out)
        ceiling(model, out, size)
        rows = bench_rows(args.methods.split(",") if args.methods else None)
        report = compare(model, rows, size, out, artifacts_dir=out / "artifacts",
                         artifact_methods=("adatsq",))
        write_json({"wall_seconds": time.time() - t0, "rows": len(rows)}, out / "timing.json")
        print(f"## {model}\n\n{markdown_table(report)}\n")
        combine(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
