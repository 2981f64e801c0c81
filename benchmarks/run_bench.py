"""`make bench`: the full comparison behind BENCHMARKS.md.

For every model: every method at every bit setting on 100 evaluation prompts per GenEval category
(50 sampling steps for flux-digits), plus the activation-outlier measurement. Writes
runs/bench/<model>/report.json, report.md, samples.png, outliers.json and outliers.png.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from adatsq.cli import _rows
from adatsq.eval.report import compare, markdown_table, write_json

BENCH_METHODS = ["fp", "rtn"]
BENCH_BITS = ["W8A8", "W4A4", "W3A3"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="flux-digits", help="space-separated zoo names")
    parser.add_argument("--methods", default=",".join(BENCH_METHODS))
    parser.add_argument("--bits", default=",".join(BENCH_BITS))
    parser.add_argument("--per-category", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for model in args.models.split():
        t0 = time.time()
        out = args.out / model
        report = compare(model, _rows(args.methods.split(","), args.bits.split(",")),
                         args.per_category, out, artifacts_dir=None)
        write_json({"wall_seconds": time.time() - t0}, out / "timing.json")
        print(f"## {model}\n\n{markdown_table(report)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
