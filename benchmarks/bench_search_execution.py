"""AdaTSQ's search on the integer path against the simulated reference (``search_execution``).

For each bit setting, AdaTSQ quantizes flux-digits twice with the default recipe, once with the
search (step losses and end-to-end selection) on the simulated float reference and once on the
integer path; each run records its phases in seconds and as a multiple of one full-precision
generation of the calibration set (the unit of the cost goal). Both quantized models then generate
the first test prompts with the default (integer) execution; the paired PSNR difference against
full precision says whether the faster search costs quality.

    python benchmarks/bench_search_execution.py [--bits W4A4 W3A3] [--prompts 24]

writes runs/speed/search.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from adatsq.bench import environment, make_rows
from adatsq.config import Recipe
from adatsq.eval.fidelity import psnr_per_image
from adatsq.eval.tasks import task_for
from adatsq.files import write_json
from adatsq.pipeline import load_pipeline, quantize_
from adatsq.search.selection import paired_difference
from adatsq.zoo import registry

THREADS = 2
MODEL = "flux-digits"
MODES = ("simulated", "integer")


def fp_calibration_seconds(pipe) -> float:
    """One FP generation of the calibration set, timed."""
    calib = Recipe().calibration
    prompts = pipe.calibration_prompts(calib.num_prompts, calib.seed)
    t0 = time.perf_counter()
    pipe.generate(prompts, seed=calib.seed)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bits", nargs="+", default=["W4A4", "W3A3"])
    parser.add_argument("--prompts", type=int, default=24, help="test prompts scored")
    parser.add_argument("--out", type=Path, default=Path("runs/speed"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    fp = load_pipeline(MODEL)
    unit = fp_calibration_seconds(fp)
    prompts = task_for(registry.get(MODEL)).evaluation_set(args.prompts).prompts[:args.prompts]
    reference = fp.generate(prompts, seed=0)
    rows = []
    for label in args.bits:
        base = make_rows(["adatsq"], [label])[0].recipe
        scores = {}
        for mode in MODES:
            recipe = Recipe.from_dict({**base.to_dict(), "options": {
                **base.to_dict()["options"], "search_execution": mode}})
            pipe = load_pipeline(MODEL)
            t0 = time.perf_counter()
            policy = quantize_(pipe, recipe, progress=False)
            seconds = time.perf_counter() - t0
            scores[mode] = psnr_per_image(pipe.generate(prompts, seed=0), reference)
            search = policy.settings["search"]
            rows.append({"bits": label, "search_execution": mode, "seconds": seconds,
                         "x_fp_generation": seconds / unit,
                         "phases": policy.settings["phases"],
                         "path": search["tried"]["paths"][search["chosen"]],
                         "mean_bits": search["mean_bits"],
                         "psnr": float(scores[mode].mean())})
            print(f"{label} {mode}: {seconds:.1f} s = {seconds / unit:.1f}x FP generation, "
                  f"PSNR {rows[-1]['psnr']:.2f} dB")
        sim, integer = rows[-2], rows[-1]
        integer["speedup"] = sim["seconds"] / integer["seconds"]
        integer["steps_changed"] = sum(a != b for a, b in zip(sim["path"], integer["path"]))
        integer["psnr_diff"] = paired_difference(scores["integer"], scores["simulated"])
    write_json({"model": MODEL, "fp_calibration_seconds": unit, "test_prompts": len(prompts),
                "rows": rows, "environment": environment(0)},
               args.out / "search.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
