"""`make bench`: the full comparison behind BENCHMARKS.md.

For every model: FP, RTN at W8A8, every baseline and AdaTSQ at W4A4 and W3A3, and the ablation
rows of the paper's Table 3 at W3A3, on 100 evaluation prompts per GenEval category (50 sampling
steps for flux-digits); plus the activation-outlier measurement. Writes
runs/bench/<model>/report.json, report.md, samples.png, figures/, artifacts/ (the two AdaTSQ rows),
outliers.json, outliers.png and timing.json.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from adatsq.eval.report import compare, make_rows, markdown_table, write_json

METHODS = ["rtn", "adatsq", "svdquant", "gptq", "quarot", "vidit_q", "smoothquant", "q_dit"]
"""In order of interest: report.json is rewritten after every row, so a cut run keeps the first."""
ABLATIONS = ["minmax", "+pareto", "+fisher_calib", "+pareto+avg_calib"]


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


def ceiling(out: Path, per_category: int) -> dict:
    """DigitEval of real held-out scenes (the evaluator's ceiling) on the evaluation layout."""
    from adatsq.eval.digiteval import ceiling as real_ceiling
    from adatsq.zoo.scenes import EVAL_SEED

    result = real_ceiling(per_category, EVAL_SEED).to_dict()
    write_json(result, out / "ceiling.json")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="flux-digits", help="space-separated zoo names")
    parser.add_argument("--methods", help="comma-separated subset (default: all)")
    parser.add_argument("--per-category", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model in args.models.split():
        t0 = time.time()
        out = args.out / model
        out.mkdir(parents=True, exist_ok=True)
        outliers(model, out)
        ceiling(out, args.per_category)
        rows = bench_rows(args.methods.split(",") if args.methods else None)
        report = compare(model, rows, args.per_category, out, artifacts_dir=out / "artifacts",
                         artifact_methods=("adatsq",))
        write_json({"wall_seconds": time.time() - t0, "rows": len(rows)}, out / "timing.json")
        print(f"## {model}\n\n{markdown_table(report)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
