"""Sampling recipe of an embedded model at full precision: guidance scale x flow shift, on the
validation split (the bench's validation prompts, disjoint from the test prompts).

The recipe (``guidance_scale`` and ``shift`` of the zoo entry) is chosen here and nowhere else;
the test prompts never see the sweep.

    python benchmarks/bench_sampling.py --model wan-digits

writes benchmarks/results/sampling_<model>.json.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import torch

from adatsq.bench import VALIDATION_SEED, environment
from adatsq.files import write_json
from adatsq.pipeline import load_pipeline
from adatsq.zoo.pipeline import DigitPipeline

SCALES = [3.0, 5.0, 7.0]
SHIFTS = [1.0, 3.0, 5.0]
THREADS = 2
RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="wan-digits")
    parser.add_argument("--prompts", type=int, default=64, help="validation prompts")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    t0 = time.time()
    base = load_pipeline(args.model)
    task = base.task
    prompts, specs = task.calibration_set(args.prompts, VALIDATION_SEED)
    rows = []
    for scale, shift in itertools.product(SCALES, SHIFTS):
        pipe = DigitPipeline(replace(base.entry, shift=shift), base.transformer, task)
        score = task.score(pipe.generate(prompts, seed=VALIDATION_SEED, guidance_scale=scale),
                           specs)
        row = {"guidance_scale": scale, "shift": shift, **score["eval"],
               "total_se": score["eval_se"]}
        rows.append(row)
        print(row, flush=True)
    out = RESULTS / f"sampling_{args.model}.json"
    write_json({"environment": environment(VALIDATION_SEED), "model": args.model,
                "prompts": args.prompts, "steps": base.entry.steps,
                "chosen": {"guidance_scale": base.entry.guidance_scale,
                           "shift": base.entry.shift},
                "rows": rows, "seconds": time.time() - t0}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
