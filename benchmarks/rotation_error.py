"""Activation quantization error with no rotation, a Hadamard rotation H and a randomized one DH.

For every quantizable layer, the inputs it receives while the FP model generates calibration
prompts (every step) are fake-quantized per token (asymmetric MinMax, as every method here does)
three ways: as they are (``none``), after ``x H`` and after ``x D H`` (seeded random signs ``D``,
the layer's own as the rotating methods draw them). The error is measured back in the original
basis, ``||Q(x R) Rᵀ - x||² / ||x||²`` (R orthogonal), summed over every call. Writes
runs/rotation/report.json and runs/rotation/rotation_error.png.

    python benchmarks/rotation_error.py --models flux-digits,flux-digits@ma30,zimage-digits
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from adatsq.bench import environment
from adatsq.eval.plots import rotation_error_plot
from adatsq.files import write_json
from adatsq.pipeline import load_pipeline
from adatsq.quant.primitives import quantize_activation
from adatsq.quant.rotation import random_signs, rotate

ROTATIONS = ("none", "H", "DH")
THREADS = 2
SEED = 1


def layer_errors(model: str, prompts: int, bits: tuple[int, ...]) -> dict[str, dict]:
    """{layer: {"<rotation>@<bits>": relative error}} over one FP generation of ``prompts``."""
    pipe = load_pipeline(model)
    layers = pipe.adapter.quantizable_layers(pipe.transformer)
    sums = {n: {f"{r}@{b}": 0.0 for r in ROTATIONS for b in bits} | {"energy": 0.0}
            for n in layers}

    def hook(name, width):
        signs = random_signs(width, SEED, name)

        def record(_module, args):
            x = args[0].detach().double().reshape(-1, width)  # (tokens, d)
            acc = sums[name]
            acc["energy"] += float(x.square().sum())
            for r in ROTATIONS:
                s = None if r != "DH" else signs.double()
                xr = x if r == "none" else rotate(x, s)
                for b in bits:
                    err = quantize_activation(xr, b) - xr  # the rotation keeps norms
                    acc[f"{r}@{b}"] += float(err.square().sum())
        return record

    handles = [lin.register_forward_pre_hook(hook(n, lin.in_features)) for n, lin in
               layers.items()]
    try:
        pipe.generate(pipe.calibration_prompts(prompts, SEED), seed=SEED)
    finally:
        for h in handles:
            h.remove()
    return {n: {k: v / acc["energy"] for k, v in acc.items() if k != "energy"}
            for n, acc in sums.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--models", default="flux-digits,flux-digits@ma30,zimage-digits,"
                                            "wan-digits")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--bits", default="3,4")
    parser.add_argument("--out", type=Path, default=Path("runs/rotation"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    bits = tuple(int(b) for b in args.bits.split(","))
    report = {"environment": environment(SEED), "prompts": args.prompts, "bits": list(bits),
              "models": {}}
    for model in args.models.split(","):
        errors = layer_errors(model, args.prompts, bits)
        summary = {}
        for b in bits:
            for r in ROTATIONS:
                values = [e[f"{r}@{b}"] for e in errors.values()]
                best = sum(min(ROTATIONS, key=lambda q: e[f"{q}@{b}"]) == r  # noqa: B023
                           for e in errors.values())
                summary[f"{r}@{b}"] = {"median": float(np.median(values)),
                                       "max": float(max(values)), "best_layers": int(best)}
        report["models"][model] = {"summary": summary, "layers": errors}
        logging.info("%s: %s", model, {k: round(v["median"], 4) for k, v in summary.items()})
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "report.json")
    rotation_error_plot(report, args.out / "rotation_error.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
