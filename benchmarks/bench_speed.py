"""Speed of quantized execution at Flux-Dev's width: integer against simulated, bf16, fp32, torchao.

A random-weight ``FluxTransformer2DModel`` of Flux-Dev's width (3072 = 24 heads x 128, guidance
embedding; the memory benchmark's model, ``--double`` + ``--single`` blocks) is called on
``--tokens`` image tokens and 64 text tokens. Every quantizable layer (the adapter's) is replaced
by a :class:`~adatsq.quant.qlinear.QuantLinear` with the *structure* of each method, which is what
its speed depends on (the values of the codes do not change it):

- ``rtn``: per-channel weights, per-token activations;
- ``quarot``: the same after a randomized Hadamard rotation of every layer input;
- ``svdquant``: smoothing factors, and a 16-bit low-rank branch of rank 32;
- ``adatsq``: rotated like ``quarot``, with per-step activation bits (a schedule of 28 steps that
  mixes 3, 4 and 8 bits, timed at a 4-bit step for W4A4 and a 3-bit step for W3A3).

Each row times one layer (``transformer_blocks.0.attn.to_q``, 3072 -> 3072, on the call's image
tokens) and one transformer call, median of ``--repeats`` after warm-up, in one process on an idle
machine with 2 threads. Paths: ``fp32`` and ``bf16`` (the unquantized model), ``simulated`` (the
reference: dequantized weights, fake-quantized activations, a float matmul) and ``integer``
(int8 GEMMs, :mod:`adatsq.quant.integer`), eager and under ``torch.compile(fullgraph=True)``, and
torchao's ``Int8DynamicActivationInt8WeightConfig`` (the int8 peer on a CPU) eager and compiled.
The integer rows also give the share of each operation of the layer (profiled) and the cost of
unpacking weight codes per call against a cached int8 operand at 256, 1024 and 4096 tokens.

Last, flux-digits generates 8 prompts with each method's real artifact (quantized by
``quantize_``), integer against simulated and full precision: wall time and PSNR between paths.

    python benchmarks/bench_speed.py          # make bench-speed

writes runs/speed/report.json.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from adatsq.bench import environment
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.fidelity import psnr
from adatsq.files import write_json
from adatsq.models.base import adapter_for
from adatsq.pipeline import load_pipeline, quantize_
from adatsq.quant import integer
from adatsq.quant.qlinear import (
    ActivationQuant,
    QuantLinear,
    StepTracker,
    cache_weights_,
    set_execution_,
    set_module,
)
from adatsq.quant.rotation import random_signs, rotate

THREADS = 2
TEXT_TOKENS = 64
STEPS = 28
ADATSQ_STEPS = {4: (8, 4, 4, 4, 4, 4, 3, 4) * 3 + (4, 4, 8, 4),
                3: (8, 4, 3, 3, 3, 3, 3, 4) * 3 + (3, 3, 4, 8)}
"""Per-step activation bits of the ``adatsq`` rows (28 steps; about A4.3 and A3.6)."""
LAYER = "transformer_blocks.0.attn.to_q"
METHODS = [("rtn", 8), ("rtn", 4), ("quarot", 4), ("svdquant", 4), ("adatsq", 4), ("adatsq", 3)]
COMPILED = [("rtn", 8), ("adatsq", 4)]
"""Methods also timed compiled (each compile takes minutes on 2 cores)."""
GENERATE = [("rtn", "W4A4"), ("quarot", "W4A4"), ("svdquant", "W4A4"), ("adatsq", "W4A4")]


def build_model(double: int, single: int) -> nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=double,
                                   num_single_layers=single, attention_head_dim=128,
                                   num_attention_heads=24, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=(16, 56, 56),
                                   guidance_embeds=True)
    return model.eval().requires_grad_(False)


def inputs(tokens: int, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    side = int(tokens ** 0.5)
    img_ids = torch.zeros(tokens, 3)
    img_ids[:, 1] = torch.arange(tokens) // side
    img_ids[:, 2] = torch.arange(tokens) % side
    return {"hidden_states": torch.randn(1, tokens, 16, generator=g).to(dtype),
            "encoder_hidden_states": torch.randn(1, TEXT_TOKENS, 32, generator=g).to(dtype),
            "pooled_projections": torch.randn(1, 32, generator=g).to(dtype),
            "timestep": torch.full((1,), 0.5, dtype=dtype),
            "guidance": torch.full((1,), 3.5, dtype=dtype),
            "img_ids": img_ids, "txt_ids": torch.zeros(TEXT_TOKENS, 3), "return_dict": False}


def quantized_layer(name: str, linear: nn.Linear, method: str, bits: int,
                    tracker: StepTracker) -> QuantLinear:
    """A layer with ``method``'s structure (round-to-nearest codes)."""
    weights = WeightSpec(bits=bits)
    activation = ActivationQuant(ADATSQ_STEPS[bits] if method == "adatsq" else bits)
    W = linear.weight.detach().float()
    extra = {}
    if method in ("quarot", "adatsq"):
        signs = random_signs(linear.in_features, 0, name)
        W = rotate(W.double(), signs).float()
        extra = {"rotate_input": True, "rotation_signs": signs}
    elif method == "svdquant":
        g = torch.Generator().manual_seed(1)
        smooth = torch.rand(linear.in_features, generator=g) + 0.5
        W = W * smooth
        down = torch.randn(32, linear.in_features, generator=g) / linear.in_features ** 0.5
        up = torch.randn(linear.out_features, 32, generator=g) * 1e-3
        extra = {"smooth": smooth, "lowrank": (down, up)}
    return QuantLinear.from_linear(linear, weights, activation, tracker, weight=W, **extra)


def quantize_structure(model: nn.Module, method: str, bits: int) -> nn.Module:
    adapter = adapter_for(model)
    tracker = StepTracker(torch.linspace(1, 1 / STEPS, STEPS))  # sigma, as Flux receives it
    tracker.attach(model, adapter.timestep_of)
    for name, linear in adapter.quantizable_layers(model).items():
        set_module(model, name, quantized_layer(name, linear, method, bits, tracker))
    model._tracker = tracker
    return model


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def at_step(model: nn.Module, bits: int, method: str):
    """A transformer-call timestep at a step of ``bits`` activation bits (adatsq rows)."""
    if method != "adatsq":
        return 0.5
    step = ADATSQ_STEPS[bits].index(bits)
    return float(model._tracker.schedule[step])


def time_row(model, x_call, x_layer, repeats: int, compiled: bool) -> dict:
    call = torch.compile(model, fullgraph=True) if compiled else model
    layer = model.get_submodule(LAYER)
    t0 = time.time()
    with torch.no_grad():
        call(**x_call)
    first = time.time() - t0
    row = {"call_ms": median_ms(lambda: call(**x_call), repeats)}
    if not compiled:
        row["layer_ms"] = median_ms(lambda: layer(x_layer), repeats)
    else:
        row["compile_seconds"] = first
    return row


def integer_breakdown(tokens_list, repeats: int) -> list[dict]:
    """Each operation of a rotated 4-bit 3072 -> 3072 integer layer, timed alone."""
    torch.manual_seed(0)
    K = N_OUT = 3072
    lin = nn.Linear(K, N_OUT)
    q = quantized_layer("probe", lin, "quarot", 4, None)
    packed = q.qweight
    L, R = (f.float() for f in integer.hadamard_factors(K))
    rows = []
    for n in tokens_list:
        x = torch.randn(n, K)
        xt = integer.rotate_factored(x, L, R)
        A, sx, _ = integer.activation_operand(xt, 4, "token", False, 4)
        B = integer.weight_operand(packed, 4, N_OUT, K)
        Y = integer.int_matmul(A, B)
        xb, wb = x.bfloat16(), lin.weight.detach().bfloat16()
        ops = {
            "rotation": median_ms(lambda: integer.rotate_factored(x * q.rotation_signs, L, R),
                                  repeats),
            "activation_codes": median_ms(
                lambda: integer.activation_operand(xt, 4, "token", False, 4), repeats),
            "unpack_weights": median_ms(lambda: integer.weight_operand(packed, 4, N_OUT, K),
                                        repeats),
            "int8_gemm": median_ms(lambda: integer.int_matmul(A, B), repeats),
            "rescale": median_ms(lambda: integer.rescale(Y, sx, q.scale[:, 0], q.bias,
                                                         torch.float32), repeats),
            "bf16_gemm": median_ms(lambda: nn.functional.linear(xb, wb), repeats),
        }
        q.cache = False
        uncached = median_ms(lambda: q(x), repeats)
        cache_weights_(q)
        cached = median_ms(lambda: q(x), repeats)
        cache_weights_(q, on=False)
        # the widest input: Flux-Dev's MLP down projection, 12288 -> 3072
        wide = torch.randn(n, 4 * K)
        Lw, Rw = (f.float() for f in integer.hadamard_factors(4 * K))
        signs = random_signs(4 * K, 0)
        Aw = torch.randint(-8, 8, (n, 4 * K), dtype=torch.int8)
        Bw = torch.randint(-8, 8, (N_OUT, 4 * K), dtype=torch.int8)
        ops["rotation_12288"] = median_ms(lambda: integer.rotate_factored(wide * signs, Lw, Rw),
                                          repeats)
        ops["int8_gemm_12288"] = median_ms(lambda: integer.int_matmul(Aw, Bw), repeats)
        rows.append({"tokens": n, "ops_ms": ops, "layer_uncached_ms": uncached,
                     "layer_cached_ms": cached,
                     "unpack_share": ops["unpack_weights"] / uncached,
                     "rotation_vs_gemm": ops["rotation"] / ops["int8_gemm"],
                     "rotation_vs_gemm_12288": ops["rotation_12288"] / ops["int8_gemm_12288"]})
        logging.info("breakdown at %d tokens: %s", n, {k: round(v, 2) for k, v in ops.items()})
    return rows


def torchao_model(model: nn.Module) -> nn.Module | None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
        from torchao.quantization import quantize_ as ao_quantize_
    except ImportError:
        logging.warning("torchao is not installed: no peer rows (pip install torchao)")
        return None
    layers = set(adapter_for(model).quantizable_layers(model))
    ao_quantize_(model, Int8DynamicActivationInt8WeightConfig(),
                 filter_fn=lambda m, name: name in layers)
    return model


def generation(per_prompt: int, repeats: int) -> list[dict]:
    """flux-digits with each method's artifact: integer and simulated against FP."""
    pipe = load_pipeline("flux-digits")
    prompts = pipe.task.evaluation_set(per_prompt).prompts[:8]
    steps = pipe.default_steps
    rows = []
    fp_images = pipe.generate(prompts, seed=0, steps=steps)
    fp_ms = median_ms(lambda: pipe.generate(prompts, seed=0, steps=steps), repeats, warmup=0)
    rows.append({"method": "fp", "bits": "W16A16", "path": "fp32", "generate_ms": fp_ms})
    for method, bits in GENERATE:
        q = load_pipeline("flux-digits")
        recipe = Recipe(method=method, weights=WeightSpec(bits=int(bits[1])),
                        activations=ActivationSpec(bits=int(bits[3])))
        quantize_(q, recipe, progress=False)
        images = {}
        for path in ("simulated", "integer"):
            set_execution_(q.transformer, path)
            images[path] = q.generate(prompts, seed=0, steps=steps)
            ms = median_ms(lambda: q.generate(prompts, seed=0, steps=steps), repeats, warmup=0)
            rows.append({"method": method, "bits": bits, "path": path, "generate_ms": ms,
                         "vs_fp32": fp_ms / ms, "psnr_vs_fp": psnr(images[path], fp_images)})
        rows[-1]["psnr_integer_vs_simulated"] = psnr(images["integer"], images["simulated"])
        logging.info("generation %s %s: %s", method, bits, rows[-2:])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks")
    parser.add_argument("--single", type=int, default=1, help="single-stream blocks")
    parser.add_argument("--tokens", type=int, default=448, help="image tokens per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument("--out", type=Path, default=Path("runs/speed"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    base = build_model(args.double, args.single)
    rows = []

    def add(method, bits, path, dtype, compiled, timing):
        rows.append({"method": method, "bits": bits, "path": path, "dtype": str(dtype)[6:],
                     "compiled": compiled, **timing})
        logging.info("%s", rows[-1])

    for dtype in (torch.float32, torch.bfloat16):
        x_call = inputs(args.tokens, dtype)
        x_layer = torch.randn(args.tokens, 3072).to(dtype)
        fp = copy.deepcopy(base).to(dtype)
        path = "fp32" if dtype == torch.float32 else "bf16"
        add("fp", "W16A16", path, dtype, False, time_row(fp, x_call, x_layer, args.repeats, False))
        if dtype == torch.bfloat16 and not args.no_compile:
            add("fp", "W16A16", path, dtype, True, time_row(fp, x_call, x_layer, args.repeats,
                                                            True))
            torch._dynamo.reset()
        del fp
        for method, bits in METHODS:
            model = quantize_structure(copy.deepcopy(base), method, bits).to(dtype)
            x_call["timestep"] = torch.full((1,), at_step(model, bits, method), dtype=dtype)
            for execution in ("simulated", "integer"):
                set_execution_(model, execution)
                add(method, f"W{bits}A{bits}", execution, dtype, False,
                    time_row(model, x_call, x_layer, args.repeats, False))
            if (method, bits) in COMPILED and not args.no_compile:
                add(method, f"W{bits}A{bits}", "integer", dtype, True,
                    time_row(model, x_call, x_layer, args.repeats, True))
                torch._dynamo.reset()
            del model
        x_call["timestep"] = torch.full((1,), 0.5, dtype=dtype)
        ao = torchao_model(copy.deepcopy(base).to(dtype))
        if ao is not None:
            add("torchao_int8", "W8A8", "torchao", dtype, False,
                time_row(ao, x_call, x_layer, args.repeats, False))
            if not args.no_compile:
                add("torchao_int8", "W8A8", "torchao", dtype, True,
                    time_row(ao, x_call, x_layer, args.repeats, True))
                torch._dynamo.reset()
            del ao
    ref = {(r["path"], r["compiled"]): r for r in rows if r["method"] == "fp"}
    for r in rows:
        r["vs_bf16"] = ref[("bf16", False)]["call_ms"] / r["call_ms"]
        r["vs_fp32"] = ref[("fp32", False)]["call_ms"] / r["call_ms"]
    report = {"rows": rows,
              "breakdown": integer_breakdown((256, 1024, 4096), args.repeats),
              "generation": generation(10, args.repeats),
              "settings": {"double": args.double, "single": args.single, "tokens": args.tokens,
                           "text_tokens": TEXT_TOKENS, "layer": LAYER, "repeats": args.repeats,
                           "adatsq_steps": {str(k): v for k, v in ADATSQ_STEPS.items()}},
              "environment": environment(0)}
    write_json(report, args.out / "report.json")
    print(f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
