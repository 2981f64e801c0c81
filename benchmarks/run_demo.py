"""`make demo`: the AdaTSQ story on flux-digits in under 10 minutes.

Quantizes flux-digits with AdaTSQ at W4A4 and compares it with full precision, RTN and SVDQuant on
10 prompts per GenEval category. Writes runs/demo/report.json, report.md, samples.png (rows =
methods, columns = prompts), figures/ (Fisher heatmap, activation violins, bit map, Pareto
frontier, calibration error per step) and artifacts/ (the packed AdaTSQ model).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from adatsq.bench import compare, make_rows, markdown_table
from adatsq.files import write_json

DEMO_METHODS = ["fp", "rtn", "svdquant", "adatsq"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--per-category", type=int, default=10)
    parser.add_argument("--methods", default=",".join(DEMO_METHODS))
    parser.add_argument("--bits", default="W4A4")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.time()
    report = compare(args.model, make_rows(args.methods.split(","), args.bits.split(",")),
                     args.per_category, args.out, artifacts_dir=args.out / "artifacts")
    wall = time.time() - t0
    write_json({"wall_seconds": wall, "model": args.model, "per_category": args.per_category},
               args.out / "timing.json")
    print(markdown_table(report))
    print(json.dumps({"wall_seconds": round(wall, 1)}))
    print(f"reports in {args.out}/ (report.md, samples.png, figures/, artifacts/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
