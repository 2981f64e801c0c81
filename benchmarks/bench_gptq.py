"""Speed and error of :func:`adatsq.calib.gptq.gptq_quantize` against the IST-DASLab reference.

Both implementations quantize the same weight with the same Hessian and settings; we report the
median wall time of each and their Hessian-weighted errors ``trace(dW H dWᵀ)``. The reference is
not a package and is not vendored here: clone it yourself and pass its directory,

    git clone https://github.com/IST-DASLab/gptq /tmp/ref_gptq
    python benchmarks/bench_gptq.py --reference /tmp/ref_gptq

Settings shared by both: symmetric per-channel grid (the reference's ``Quantizer`` configured with
``perchannel=True, sym=True, mse=False``; the same grid as :class:`WeightQuantizer`), block size
128, dampening 1% of the mean diagonal, and groups of 128 columns (a multiple of the block size, so
the two fit group parameters on the same updated weights). The reference's ``fasterquant`` takes
its Hessian from ``gptq.H``; we set it to a copy of the very tensor given to ours (its own
``add_batch`` would scale ``sum X Xᵀ`` by ``2 / nsamples``, which changes neither result).

Shapes are (out, in) of Flux-Dev linears: 3072 x 3072 (attention projections), 12288 x 3072 (MLP
up projection) and a small 768 x 768. The MLP down projection (in = 12288) is left out: both
implementations spend most of their time in the Cholesky inverse of the 12288 x 12288 Hessian,
about a minute per run on a 2-core CPU. Writes ``benchmarks/results/gptq_timing.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from adatsq.calib.gptq import gptq_quantize, hessian_error
from adatsq.quant.primitives import WeightQuantizer

RESULTS = Path(__file__).parent / "results" / "gptq_timing.json"
BLOCK_SIZE = 128
DAMP = 0.01
# (out, in, bits, group_size, act_order)
CASES = [
    (768, 768, 4, None, False),
    (768, 768, 4, 128, False),
    (768, 768, 3, 128, True),
    (3072, 3072, 4, None, False),
    (3072, 3072, 4, 128, False),
    (12288, 3072, 4, 128, False),
]


def load_reference(path: Path):
    """Imports the reference's ``gptq`` and ``quant`` modules from a checkout at ``path``."""
    if not (path / "gptq.py").is_file() or not (path / "quant.py").is_file():
        raise SystemExit(f"{path} has no gptq.py and quant.py; clone "
                         f"https://github.com/IST-DASLab/gptq there first")
    sys.path.insert(0, str(path))
    with contextlib.redirect_stdout(io.StringIO()):  # "CUDA extension not installed."
        quant = importlib.import_module("quant")
        gptq = importlib.import_module("gptq")
    return gptq, quant


def make_layer(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (out, in) and the Hessian ``X Xᵀ`` (in, in) of correlated, outlier-laden inputs."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_features, in_features, generator=gen) / in_features**0.5
    n_tokens = in_features + 512
    channel_scale = torch.exp(0.5 * torch.randn(in_features, generator=gen))  # (in,)
    channel_scale[torch.randperm(in_features, generator=gen)[:8]] *= 20.0  # outlier channels
    shared = torch.randn(n_tokens, 32, generator=gen) @ torch.randn(32, in_features, generator=gen)
    X = (torch.randn(n_tokens, in_features, generator=gen) + 0.5 * shared) * channel_scale
    return W, X.T @ X  # (in, in)


def run_reference(gptq, quant, W: torch.Tensor, H: torch.Tensor, bits: int,
                  group_size: int | None, act_order: bool) -> tuple[torch.Tensor, float]:
    """The reference's fake-quantized weight and the time of ``fasterquant`` alone."""
    layer = nn.Linear(W.shape[1], W.shape[0], bias=False)
    layer.weight.data = W.clone()
    solver = gptq.GPTQ(layer)
    solver.H = H.clone()  # fasterquant modifies it in place
    solver.nsamples = H.shape[0]
    solver.quantizer = quant.Quantizer()
    solver.quantizer.configure(bits, perchannel=True, sym=True, mse=False)
    synchronize = torch.cuda.synchronize
    if not torch.cuda.is_available():  # the reference synchronizes unconditionally
        torch.cuda.synchronize = lambda *args, **kwargs: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its own time and error
            start = time.perf_counter()
            solver.fasterquant(blocksize=BLOCK_SIZE, percdamp=DAMP, groupsize=group_size or -1,
                               actorder=act_order)
            elapsed = time.perf_counter() - start
    finally:
        torch.cuda.synchronize = synchronize
    return layer.weight.data, elapsed


def run_ours(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int | None,
             act_order: bool) -> tuple[torch.Tensor, float]:
    """Our fake-quantized weight and the time of :func:`gptq_quantize`."""
    quantizer = WeightQuantizer(bits, symmetric=True, group_size=group_size)
    start = time.perf_counter()
    result = gptq_quantize(W, H, quantizer, block_size=BLOCK_SIZE, damp=DAMP, act_order=act_order)
    return result.weight, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True,
                        help="directory of an IST-DASLab/gptq checkout (gptq.py, quant.py)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results path")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-in", type=int, default=None,
                        help="skip cases with more input columns (quick runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gptq, quant = load_reference(args.reference)

    rows = []
    for out_features, in_features, bits, group_size, act_order in CASES:
        if args.max_in and in_features > args.max_in:
            continue
        W, H = make_layer(out_features, in_features, seed=out_features + in_features)
        times_ours, times_reference = [], []
        for repeat in range(args.repeats):  # alternate which runs first, against drift
            runs = [("ours", times_ours), ("reference", times_reference)]
            for name, times in runs if repeat % 2 == 0 else runs[::-1]:
                if name == "ours":
                    Wq_ours, elapsed = run_ours(W, H, bits, group_size, act_order)
                else:
                    Wq_reference, elapsed = run_reference(gptq, quant, W, H, bits, group_size,
                                                          act_order)
                times.append(elapsed)
        error_ours = float(hessian_error(W, Wq_ours, H))
        error_reference = float(hessian_error(W, Wq_reference, H))
        rtn = WeightQuantizer(bits, group_size=group_size)(W)
        row = {
            "shape": [out_features, in_features], "bits": bits, "group_size": group_size,
            "act_order": act_order,
            "time_ours_s": statistics.median(times_ours),
            "time_reference_s": statistics.median(times_reference),
            "times_ours_s": times_ours, "times_reference_s": times_reference,
            "error_ours": error_ours, "error_reference": error_reference,
            "error_rtn": float(hessian_error(W, rtn, H)),
            "relative_error_difference": (error_ours - error_reference) / error_reference,
            "fraction_weights_differing": float((Wq_ours != Wq_reference).float().mean()),
        }
        row["time_ratio"] = row["time_ours_s"] / row["time_reference_s"]
        rows.append(row)
        groups = f"g{group_size}" if group_size else "per-channel"
        sys.stdout.write(
            f"{out_features:>5}x{in_features:<5} w{bits} {groups:<11} act_order={act_order!s:<5} "
            f"ours {row['time_ours_s']:6.2f}s  reference {row['time_reference_s']:6.2f}s  "
            f"ratio {row['time_ratio']:.2f}  error ours/reference/RTN "
            f"{error_ours:.4g}/{error_reference:.4g}/{row['error_rtn']:.4g}  "
            f"rel diff {row['relative_error_difference']:+.1e}\n")
        sys.stdout.flush()

    report = {
        "benchmark": "gptq_quantize vs IST-DASLab/gptq fasterquant",
        "settings": {"block_size": BLOCK_SIZE, "damp": DAMP, "symmetric": True,
                     "repeats": args.repeats, "statistic": "median wall time"},
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "device": "cpu", "machine": platform.machine(),
                        "python": platform.python_version()},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.out}\n")


if __name__ == "__main__":
    main()
