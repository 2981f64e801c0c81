"""Where AdaTSQ ties the strongest equal-size baseline at W3A3: too few prompts, or no difference?

``make bench`` scores each model on a fixed test set (300 prompts on the image models). On
flux-digits and zimage-digits, W3A3 AdaTSQ beats every baseline on PSNR but ties QuaRot (and on
zimage-digits ViDiT-Q) on task total and faithfulness. This script asks, on validation prompts
only (disjoint from the test prompts, so nothing here is chosen on them), whether a larger sample
resolves those ties and whether channel balancing (``adatsq_cb``) changes them:

* every row of :data:`ROWS` at W3A3, exactly as ``make bench`` runs it
  (:func:`adatsq.bench.make_rows`);
* for each of ``adatsq`` and ``adatsq_cb`` against each baseline, the paired per-prompt difference
  in task total (stratified by category), PSNR and faithfulness to the FP sample of the same seed,
  with its 95% interval and verdict;
* ``sd``: the per-prompt standard deviation of that difference, and ``n_resolve``: the number of
  prompts at which a difference of the observed mean would clear its 95% interval (``(1.96 sd /
  diff)^2``; None for a zero difference).

    python benchmarks/bench_ties.py --models "flux-digits zimage-digits" --prompts 400

writes runs/ties/report.json and per_sample.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from adatsq.bench import VALIDATION_SEED, environment, make_rows
from adatsq.eval.paired import paired_difference, verdict
from adatsq.files import write_json
from adatsq.pipeline import load_pipeline, quantize_

ROWS = ("quarot", "vidit_q", "adatsq", "adatsq_cb")
OURS = ("adatsq", "adatsq_cb")
METRICS = ("total", "psnr", "faithful")
BITS = "W3A3"
THREADS = 2


def compare_rows(per: dict[str, dict[str, np.ndarray]], strata: list[str]) -> list[dict]:
    """Paired rows of every row of :data:`OURS` against every other row of ``per``."""
    out = []
    for ours in (r for r in OURS if r in per):
        for base in (r for r in per if r not in OURS):
            for metric in METRICS:
                a, b = per[ours][metric], per[base][metric]
                iv = paired_difference(a, b, strata if metric == "total" else None)
                sd = float(np.std(np.asarray(a) - np.asarray(b), ddof=1))
                n = math.ceil((1.96 * sd / iv["diff"]) ** 2) if iv["diff"] else None
                out.append({"method": ours, "baseline": base, "metric": metric,
                            "n_prompts": len(a), "diff": iv["diff"], "lo": iv["lo"],
                            "hi": iv["hi"], "verdict": verdict(iv), "sd": sd, "n_resolve": n})
    return out


def run_model(model: str, n_prompts: int) -> tuple[dict, dict]:
    pipe = load_pipeline(model)
    task = pipe.task
    prompts, specs = task.calibration_set(n_prompts, VALIDATION_SEED)
    strata = task.strata(specs)
    fp = pipe.generate(prompts, seed=VALIDATION_SEED, progress=f"{model} FP")
    fp_total = task.score(fp, specs)["eval"]["total"]
    per, means = {}, {}
    for row in make_rows(list(ROWS), [BITS]):
        q = load_pipeline(model)
        quantize_(q, row.recipe, progress=False, execution="simulated")
        images = q.generate(prompts, seed=VALIDATION_SEED, progress=f"{model} {row.label}")
        scored = task.score(images, specs)
        close = task.fidelity_per_sample(images, fp)
        per[row.method] = {"total": np.asarray(scored["per_sample"]), **close}
        means[row.method] = {"total": scored["eval"]["total"],
                             **{k: float(v.mean()) for k, v in close.items()}}
        print(f"{model} {row.label}: " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                   means[row.method].items()), flush=True)
    result = {"model": model, "bits": BITS, "n_prompts": len(prompts), "fp_total": fp_total,
              "means": means, "pairs": compare_rows(per, strata)}
    return result, {m: {k: np.asarray(v).tolist() for k, v in d.items()} for m, d in per.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default="flux-digits zimage-digits")
    parser.add_argument("--prompts", type=int, default=400, help="validation prompts per model")
    parser.add_argument("--out", type=Path, default=Path("runs/ties"))
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    t0 = time.time()
    models, per_sample = [], {}
    for model in args.models.split():
        result, per = run_model(model, args.prompts)
        models.append(result)
        per_sample[model] = per
    report = {"environment": environment(VALIDATION_SEED), "models": models,
              "seconds": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(per_sample, args.out / "per_sample.json", indent=None)
    write_json(report, args.out / "report.json")
    print(f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
