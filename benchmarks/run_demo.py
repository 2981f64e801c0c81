"""`make demo`: quantize flux-digits and compare with full precision on a modest prompt set.

Writes runs/demo/report.json, report.md and samples.png (rows = methods, columns = prompts).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from adatsq.cli import _rows
from adatsq.eval.report import compare, markdown_table, write_json

DEMO_METHODS = ["fp", "rtn"]
DEMO_BITS = ["W8A8", "W4A4", "W3A3"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--per-category", type=int, default=10)
    parser.add_argument("--methods", default=",".join(DEMO_METHODS))
    parser.add_argument("--bits", default=",".join(DEMO_BITS))
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.time()
    report = compare(args.model, _rows(args.methods.split(","), args.bits.split(",")),
                     args.per_category, args.out, artifacts_dir=args.out / "artifacts")
    wall = time.time() - t0
    write_json({"wall_seconds": wall, "model": args.model, "per_category": args.per_category},
               args.out / "timing.json")
    print(markdown_table(report))
    print(json.dumps({"wall_seconds": round(wall, 1)}))
    print(f"reports in {args.out}/ (report.md, samples.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
