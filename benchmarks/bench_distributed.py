"""Calibration on two ranks against one: wall time, and what changes in the artifact.

The same command, ``adatsq quantize flux-digits --method adatsq`` (the embedded default: 32
calibration prompts, 50 steps, the full search), runs once as one process with 2 threads and once
under ``torchrun --nproc-per-node 2`` (gloo, 1 thread per rank) on the same 2 cores. Reported:
wall time of each (process start to artifact written) and the quantization phases; the share of
weight codes that differ and the relative difference of the Fisher scores (float summation
order, see adatsq.distributed); the chosen mean bits; and, on the test prompts, the paired
DigitEval difference (2 ranks - 1 rank) with its 95% interval and each one's PSNR to FP.

    python benchmarks/bench_distributed.py [--per-category 20]

writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from adatsq.bench import environment
from adatsq.eval.fidelity import psnr_per_image
from adatsq.eval.paired import paired_difference
from adatsq.files import write_json
from adatsq.pipeline import load, load_pipeline
from adatsq.quant.qlinear import set_execution_

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = ["quantize", "flux-digits", "--method", "adatsq"]


def quantize(out: Path, ranks: int) -> float:
    """Wall seconds of the command on ``ranks`` processes (2 cores in all)."""
    launcher = [sys.executable, "-m", "adatsq.cli"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={ranks}", "-m", "adatsq.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // ranks)}
    t0 = time.perf_counter()
    done = subprocess.run([*launcher, *COMMAND, "--out", str(out)], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{ranks} rank(s) failed:\n{done.stderr[-3000:]}")
    return seconds


def codes_differ(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Share of the weight codes that differ between two quantized transformers (same layers)."""
    m1, m2 = dict(a.named_modules()), dict(b.named_modules())
    names = [n for n, m in m1.items() if hasattr(m, "qweight")]
    differ = sum(int((m1[n].codes != m2[n].codes).sum()) for n in names)
    return differ / sum(m1[n].codes.numel() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=20)
    parser.add_argument("--work", default="runs/distributed")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    runs = {}
    for ranks in (1, 2):
        out = work / f"ranks{ranks}"
        seconds = quantize(out, ranks)
        settings = json.loads((out / "policy.json").read_text())["settings"]
        runs[ranks] = {"wall_seconds": seconds, "quantize_seconds": settings["seconds"],
                       "phases": settings["phases"], "mean_bits": settings["search"]["mean_bits"],
                       "fisher": np.array(settings["fisher"]["scores"])}
        print(f"{ranks} rank(s): {seconds:.1f}s", flush=True)

    torch.set_num_threads(2)
    (one, _), (two, _) = load(work / "ranks1"), load(work / "ranks2")
    for pipe in (one, two):  # the reference path the committed numbers were measured on
        set_execution_(pipe.transformer, "simulated")
    f1, f2 = runs[1].pop("fisher"), runs[2].pop("fisher")

    fp = load_pipeline("flux-digits")
    task = fp.task
    data = task.evaluation_set(args.per_category)
    seed = 0
    samples = {name: pipe.generate(data.prompts, seed=seed)
               for name, pipe in (("fp", fp), ("ranks1", one), ("ranks2", two))}
    scores = {k: task.score(v, data.specs)["per_sample"] for k, v in samples.items()}
    strata = task.strata(data.specs)
    result = {
        "command": "adatsq " + " ".join(COMMAND),
        "wall_seconds": {str(k): v["wall_seconds"] for k, v in runs.items()},
        "speedup": runs[1]["wall_seconds"] / runs[2]["wall_seconds"],
        "runs": {str(k): v for k, v in runs.items()},
        "codes_differ": codes_differ(one.transformer, two.transformer),
        "fisher_max_rel_diff": float(np.abs(f1 - f2).max() / np.abs(f1).max()),
        "eval_prompts": len(data.prompts),
        "digiteval": {k: float(np.mean(v)) for k, v in scores.items()},
        "digiteval_2_minus_1": paired_difference(scores["ranks2"], scores["ranks1"], strata),
        "psnr_to_fp": {k: float(psnr_per_image(samples[k], samples["fp"]).mean())
                       for k in ("ranks1", "ranks2")},
        "environment": environment(seed),
    }
    write_json(result, RESULTS / "distributed.json")
    print(json.dumps({k: result[k] for k in ("wall_seconds", "speedup", "codes_differ",
                                             "digiteval_2_minus_1")}, indent=1))


if __name__ == "__main__":
    main()
