"""Does AdaTSQ's end-to-end selection (Sec. 3.2.4) pick the path that is best on the test set?

Quantizes one model with AdaTSQ, keeps every path the selection tried (their selection scores:
task metric and PSNR to FP on the selection prompts), then samples the test prompts with each of
them and scores them the same way (the bench's seed 0). Reports the Spearman rank correlation
between selection and test scores over the tried paths and where the chosen path ranks on the
test set. The test prompts judge the rule here; nothing is tuned on them.
Writes runs/selection/<model>_<bits>.json and .png.

    python benchmarks/selection_check.py --model flux-digits --bits W3A3 --size 20
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from adatsq.bench import environment, parse_bits
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.plots import selection_plot
from adatsq.files import write_json
from adatsq.methods import adatsq as adatsq_method
from adatsq.pipeline import load_pipeline, quantize_

THREADS = 2
SEED = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="flux-digits")
    parser.add_argument("--bits", default="W3A3")
    parser.add_argument("--size", type=int, default=20, help="test prompts per category")
    parser.add_argument("--out", type=Path, default=Path("runs/selection"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    t0 = time.time()
    tried = {}
    select = adatsq_method.AdaTSQ._select

    def spy(self, pipeline, stats, layers, candidates, paths):  # keeps what the rule saw
        tried["method"] = self
        tried["bits"] = [adatsq_method._path_bits(candidates, p) for p in paths]
        return select(self, pipeline, stats, layers, candidates, paths)

    adatsq_method.AdaTSQ._select = spy
    w, a = parse_bits(args.bits)
    pipe = load_pipeline(args.model)
    task = pipe.task
    test = task.evaluation_set(args.size)
    fp = pipe.generate(test.prompts, seed=SEED)
    policy = quantize_(pipe, Recipe(method="adatsq", weights=WeightSpec(bits=w),
                                    activations=ActivationSpec(bits=a)), progress=True,
                       execution="simulated")
    search = policy.settings["search"]
    rows = []
    for i, bits in enumerate(tried["bits"]):
        tried["method"].apply_bits(bits)
        images = pipe.generate(test.prompts, seed=SEED)
        fidelity = task.fidelity(images, fp)
        rows.append({"path": i, "loss_weight": search["tried"]["loss_weight"][i],
                     "mean_bits": search["tried"]["mean_bits"][i],
                     "step_loss": search["tried"]["total_loss"][i],
                     "selection_task": search["selection_scores"][i][0],
                     "selection_psnr": search["selection_scores"][i][1],
                     "test_total": task.score(images, test.specs)["eval"]["total"],
                     "test_psnr": fidelity["psnr"]})
        logging.info("%s", rows[-1])
    column = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    rho = {}
    if len(rows) > 2:
        for sel in ("selection_task", "selection_psnr", "step_loss"):
            for test_key in ("test_total", "test_psnr"):
                sign = -1.0 if sel == "step_loss" else 1.0  # lower loss should mean better
                x, y = sign * column[sel], column[test_key]
                # a constant column (a saturated metric) has no rank correlation
                rho[f"{sel} ~ {test_key}"] = (float(spearmanr(x, y).statistic)
                                              if np.ptp(x) > 0 and np.ptp(y) > 0 else None)
    chosen = search["chosen"]
    report = {"environment": environment(SEED), "model": args.model, "bits": args.bits,
              "test_prompts": len(test.prompts), "rows": rows, "chosen": chosen,
              "chosen_test_rank": {k: int(1 + (column[k] > column[k][chosen]).sum())
                                   for k in ("test_total", "test_psnr")},
              "spearman": rho, "seconds": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / f"{args.model}_{args.bits}.json")
    selection_plot(report, args.out / f"{args.model}_{args.bits}.png")
    logging.info("Spearman: %s; chosen path ranks %s", rho, report["chosen_test_rank"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
