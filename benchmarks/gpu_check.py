"""The GPU path, checked where a CUDA GPU is present (``make gpu-check``); elsewhere it says so
and exits 0.

1. the tiny-pipeline integration tests (tests/integration): on a GPU the diffusers pipelines
   load in bfloat16 on CUDA, so quantize -> save -> load -> generate runs there bit-exactly;
2. the memory benchmark (benchmarks/bench_memory.py), with CUDA peak memory per phase;
3. the integer path on CUDA (cuBLASLt int8 GEMMs) against the simulated reference, for every
   layer structure the methods use (rotation, smoothing, low-rank branch; 3/4/8 bits), in
   float32 and bfloat16;
4. where two GPUs are present, a two-rank NCCL calibration: ``torchrun --nproc-per-node 2 -m
   adatsq.cli quantize flux-digits --method gptq`` (the tests/test_distributed.py command), and
   the same in one process, with the share of weight codes that differ (float summation
   order).

Writes runs/gpu-check/results.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from adatsq.config import WeightSpec
from adatsq.pipeline import load
from adatsq.quant.qlinear import ActivationQuant, QuantLinear
from adatsq.quant.rotation import random_signs
from bench_distributed import codes_differ

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "gpu-check"


def _run(name: str, argv: list[str], timeout: int) -> dict:
    t0 = time.time()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              check=False)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-4000:]
    except subprocess.TimeoutExpired:
        rc, tail = 124, f"timed out after {timeout} s"
    (OUT / f"{name}.log").write_text(tail)
    print(f"{name}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
    return {"exit": rc, "seconds": time.time() - t0, "log": f"runs/gpu-check/{name}.log"}


def integer_on_cuda() -> dict:
    """Relative error of integer against simulated layers on CUDA (the CPU tests' check)."""
    worst = {}
    for bits in (3, 4, 8):
        for transforms in ((), ("rotate",), ("smooth", "lowrank")):
            torch.manual_seed(0)
            lin = nn.Linear(256, 128)
            extra = {}
            if "rotate" in transforms:
                extra = {"rotate_input": True, "rotation_signs": random_signs(256, 0)}
            if "smooth" in transforms:
                extra = {"smooth": torch.rand(256) + 0.5,
                         "lowrank": (torch.randn(8, 256) * 0.1, torch.randn(128, 8) * 0.1)}
            q = QuantLinear.from_linear(lin, WeightSpec(bits=bits), ActivationQuant(bits), None,
                                        weight=lin.weight.detach(), **extra).cuda()
            for dtype in (torch.float32, torch.bfloat16):
                x = torch.randn(64, 256, device="cuda", dtype=dtype) * 3
                q.execution = "simulated"
                want = q(x).float()
                q.execution = "integer"
                got = q(x).float()
                key = f"W{bits}A{bits} {'+'.join(transforms) or 'plain'} {str(dtype)[6:]}"
                worst[key] = float((got - want).norm() / want.norm())
    print(json.dumps(worst, indent=1), flush=True)
    return {"relative_error": worst, "exit": 0 if all(
        v <= (1e-5 if "float32" in k and "rotate" not in k else 2e-2) for k, v in worst.items())
        else 1}


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here; nothing to check (exit 0)")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
               "torch": torch.__version__}
    results["integration"] = _run("integration", [sys.executable, "-m", "pytest", "-q", "-x",
                                                  "tests/integration"], 300)
    results["integer"] = integer_on_cuda()
    results["memory"] = _run("memory", [sys.executable, "benchmarks/bench_memory.py", "--out",
                                        "runs/gpu-check/memory"], 240)
    if torch.cuda.device_count() >= 2:
        quick = ["quantize", "flux-digits", "--method", "gptq", "--calib-prompts", "4",
                 "--steps", "6", "--overwrite", "--out"]
        results["nccl_two_ranks"] = _run("nccl_two_ranks", [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "-m", "adatsq.cli", *quick, "runs/gpu-check/nccl2"], 300)
        results["one_rank"] = _run("one_rank", [sys.executable, "-m", "adatsq.cli", *quick,
                                                "runs/gpu-check/nccl1"], 300)
        if results["nccl_two_ranks"]["exit"] == 0 and results["one_rank"]["exit"] == 0:
            results["codes_differ"] = codes_differ(load(OUT / "nccl1")[0].transformer,
                                                     load(OUT / "nccl2")[0].transformer)
    else:
        results["nccl_two_ranks"] = {"skipped": "one GPU"}
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    return 0 if all(r.get("exit", 0) == 0 for r in results.values() if isinstance(r, dict)) \
        else 1


if __name__ == "__main__":
    sys.exit(main())
