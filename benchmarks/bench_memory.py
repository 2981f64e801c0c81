"""Memory at Flux-Dev's width: peak RSS of each phase against the bf16 model, and artifact sizes.

A random-weight ``FluxTransformer2DModel`` with Flux-Dev's width (3072 = 24 heads x 128, guidance
embedding) and a few blocks (about 1 B parameters at the default 2 + 2) is saved in bfloat16 as a
diffusers ``FluxPipeline`` folder with tiny text encoders and VAE. Every phase then runs in a
process of its own, in bfloat16 (the dtype Flux runs in on a GPU), and reports its peak resident
memory:

- ``overhead``: the same pipeline with a tiny transformer, loaded and sampled: Python, torch,
  diffusers, the encoders and VAE; the fixed cost every phase below includes;
- ``fp_generate``: the bf16 pipeline loaded and sampled (the reference);
- ``quantize``: RTN W4A4 (and ``quantize_w3``: W3A3), loaded from the folder, quantized, saved;
- ``quantize_adatsq`` (with ``--adatsq``): AdaTSQ W4A4 with 2 calibration prompts, 2 steps, a
  small search (slow on CPUs);
- ``load_w4``: the W4 artifact loaded (never building the full-precision transformer);
- ``generate_w4``: loaded and sampled.

All artifacts quantize the timestep-modulation weights too (``WeightSpec.modulation``, weight-only,
per-channel scales): they hold 27% of Flux-Dev's weights.

    python benchmarks/bench_memory.py [--double 2 --single 2]

writes runs/memory/report.json (and benchmarks/results/memory.json).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tiny pipeline builders of the tests

from tests.models.examples import tiny_flux  # noqa: E402

from adatsq.bench import environment  # noqa: E402
from adatsq.config import ActivationSpec, CalibrationSpec, Recipe, WeightSpec  # noqa: E402
from adatsq.files import write_json  # noqa: E402
from adatsq.io import SAFETENSORS_DTYPES  # noqa: E402
from adatsq.pipeline import load, load_pipeline, quantize_, save  # noqa: E402

THREADS = 2
RESULTS = ROOT / "benchmarks" / "results"
SAMPLING = {"height": 32, "width": 32, "max_sequence_length": 16, "dtype": torch.bfloat16}
STEPS = 2
PROMPTS = ["a red bench in a park", "a cat on a sofa"]
ADATSQ = {"fisher_prompts": 2, "select_prompts": 2, "select_paths": 2, "num_candidates": 4}
FLUX_DEV = {"double": 19, "single": 38, "params": 11_901_408_320,
            "text_widths": (4096, 768)}
"""Flux-Dev's transformer (black-forest-labs/FLUX.1-dev): blocks, parameters, and the widths of
its T5 and CLIP inputs (32 here: the tiny encoders)."""


def _bytes_by_part(path: Path) -> dict[str, int]:
    """Stored bytes of a safetensors file: double blocks, single blocks, the rest."""
    parts = {"double": 0, "single": 0, "rest": 0}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            t = f.get_slice(key)
            n = math.prod(t.get_shape()) * SAFETENSORS_DTYPES[t.get_dtype()].itemsize
            part = ("double" if key.startswith("transformer_blocks.") else
                    "single" if key.startswith("single_transformer_blocks.") else "rest")
            parts[part] += n
    return parts


def flux_dev_bytes(parts: dict[str, int], config: dict, rest_bytes_per_param: float) -> float:
    """Bytes of the same thing for Flux-Dev: blocks scaled by their count, the rest fixed plus
    the wider text projections (4096- and 768-wide instead of 32)."""
    extra = sum(w - 32 for w in FLUX_DEV["text_widths"]) * 3072 * rest_bytes_per_param
    return (parts["double"] / config["num_layers"] * FLUX_DEV["double"]
            + parts["single"] / config["num_single_layers"] * FLUX_DEV["single"]
            + parts["rest"] + extra)


def _recipe(method: str, bits: int, **options) -> Recipe:
    return Recipe(method=method, weights=WeightSpec(bits=bits, modulation=True),
                  activations=ActivationSpec(bits=bits),
                  calibration=CalibrationSpec(num_prompts=2, steps=STEPS), options=options)


def _quantize(work: Path, recipe: Recipe, name: str) -> dict:
    pipe = load_pipeline(str(work / "flux-wide"), **SAMPLING)
    policy = quantize_(pipe, recipe, progress=False)
    path = save(pipe, policy, work / name)
    return {"artifact_bytes": (path / "model.safetensors").stat().st_size,
            "quantize_seconds": policy.settings["seconds"]}


def _sample(pipe) -> dict:
    images = pipe.generate(PROMPTS[:1], seed=0, steps=STEPS)
    return {"finite": bool(torch.isfinite(images).all()), "std": float(images.std())}


PHASES = {
    "overhead": lambda work: _sample(load_pipeline(str(work / "flux-tiny"), **SAMPLING)),
    "fp_generate": lambda work: _sample(load_pipeline(str(work / "flux-wide"), **SAMPLING)),
    "quantize": lambda work: _quantize(work, _recipe("rtn", 4), "w4"),
    "quantize_w3": lambda work: _quantize(work, _recipe("rtn", 3), "w3"),
    "quantize_adatsq": lambda work: _quantize(work, _recipe("adatsq", 4, **ADATSQ), "adatsq_w4"),
    "load_w4": lambda work: {"loaded": bool(load(work / "w4", **SAMPLING))},
    "generate_w4": lambda work: _sample(load(work / "w4", **SAMPLING)[0]),
}


def _peak_rss() -> int:
    """Peak resident memory of this process image (``VmHWM``: unlike ``ru_maxrss`` it starts
    afresh at exec, not counting the parent's memory the child was forked with)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux


def run_phase(phase: str, work: Path) -> None:
    """One phase in this process; prints its result with the peak RSS as one JSON line."""
    torch.set_num_threads(THREADS)
    t0 = time.time()
    result = PHASES[phase](work)
    peak = _peak_rss()
    if torch.cuda.is_available():
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    print(json.dumps({"phase": phase, "peak_rss_bytes": peak, "seconds": time.time() - t0,
                      **result}))


def build_folders(work: Path, double: int, single: int) -> dict:
    """The wide and the tiny pipeline folders (rebuilt when the block counts change)."""
    from diffusers import FluxTransformer2DModel

    config = {"patch_size": 1, "in_channels": 16, "num_layers": double,
              "num_single_layers": single, "attention_head_dim": 128, "num_attention_heads": 24,
              "joint_attention_dim": 32, "pooled_projection_dim": 32,
              "axes_dims_rope": (16, 56, 56), "guidance_embeds": True}
    stamp = work / "config.json"
    if not stamp.is_file() or json.loads(stamp.read_text()) != json.loads(json.dumps(config)):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        tiny_flux(guidance_embeds=True).save_pretrained(work / "flux-tiny")
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # never a float32 copy of the wide model
        try:
            wide = FluxTransformer2DModel(**config)
        finally:
            torch.set_default_dtype(torch.float32)
        tiny_flux(guidance_embeds=True, transformer=wide).save_pretrained(work / "flux-wide")
        del wide
        stamp.write_text(json.dumps(config))
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--double", type=int, default=2, help="double-stream blocks")
    parser.add_argument("--single", type=int, default=2, help="single-stream blocks")
    parser.add_argument("--adatsq", action="store_true",
                        help="also quantize with AdaTSQ (slow on CPUs: GPTQ factors Hessians "
                        "up to 15360 wide per step)")
    parser.add_argument("--out", default="runs/memory")
    parser.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run_phase(args.phase, Path(args.work))
        return 0
    t0 = time.time()
    out = Path(args.out)
    work = out / "work"
    config = build_folders(work, args.double, args.single)
    fp_file = next((work / "flux-wide" / "transformer").glob("*.safetensors"))
    fp_parts = _bytes_by_part(fp_file)
    params = sum(fp_parts.values()) // 2
    phases = {}
    for phase in PHASES:
        if phase == "quantize_adatsq" and not args.adatsq:
            continue
        done = subprocess.run([sys.executable, __file__, "--phase", phase, "--work", str(work)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"phase {phase} failed")
        phases[phase] = json.loads(done.stdout.strip().splitlines()[-1])
        print(phase, phases[phase], flush=True)
    bf16 = params * 2
    dev = {name: flux_dev_bytes(_bytes_by_part(work / name / "model.safetensors"), config, 2)
           for name in ("w4", "w3")}
    dev_bf16 = flux_dev_bytes(fp_parts, config, 2)
    w4_scale = dev["w4"] / phases["quantize"]["artifact_bytes"]
    flux_dev = {"params": FLUX_DEV["params"], "bf16_bytes": 2 * FLUX_DEV["params"],
                "bf16_bytes_extrapolated": dev_bf16,
                "artifact_bytes": {"W4": dev["w4"], "W3": dev["w3"]},
                "load_w4_bytes_above_overhead":
                    (phases["load_w4"]["peak_rss_bytes"] - phases["overhead"]["peak_rss_bytes"])
                    * w4_scale,
                "generate_w4_bytes_above_overhead":
                    (phases["generate_w4"]["peak_rss_bytes"]
                     - phases["overhead"]["peak_rss_bytes"]) * w4_scale}
    overhead = phases["overhead"]["peak_rss_bytes"]
    peak = {p: phases[p]["peak_rss_bytes"] for p in PHASES if p in phases and p != "overhead"}
    over = {p: (v - overhead) / bf16 for p, v in peak.items()}
    artifact = {"W4": phases["quantize"]["artifact_bytes"],
                "W3": phases["quantize_w3"]["artifact_bytes"]}
    if "quantize_adatsq" in phases:
        artifact["W4 adatsq"] = phases["quantize_adatsq"]["artifact_bytes"]
    report = {
        "params": params, "bf16_bytes": bf16, "overhead_bytes": overhead,
        "artifact_bytes": artifact, "peak_rss_bytes": peak,
        "peak_over_overhead_per_bf16": over,
        "bf16_over_artifact": {k: bf16 / v for k, v in artifact.items()},
        "goal": {"load_and_generate_w4_below": 0.35, "w3_smaller_by_at_least": 5.0,
                 "memory_met": max(over["load_w4"], over["generate_w4"]) < 0.35,
                 "w3_met": bf16 / artifact["W3"] >= 5.0,
                 "w3_met_flux_dev": flux_dev["bf16_bytes"] / flux_dev["artifact_bytes"]["W3"]
                 >= 5.0},
        "flux_dev": flux_dev,
        "phases": phases, "config": config, "sampling": {
            k: str(v) for k, v in SAMPLING.items()}, "steps": STEPS,
        "adatsq_options": ADATSQ, "environment": environment(0),
        "seconds": time.time() - t0}
    write_json(report, out / "report.json")
    write_json(report, RESULTS / "memory.json")
    print(json.dumps({k: report[k] for k in ("params", "bf16_over_artifact",
                                               "peak_over_overhead_per_bf16", "goal")}, indent=1))
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
