"""Command line: ``adatsq zoo | generate | quantize | evaluate``.

Bad input (unknown model or method, bad bit width, missing or corrupt file, empty prompt list) ends
with a one-line error and exit code 2. Outputs follow :func:`adatsq.files.check_output`: checked
before any work, never replaced without ``--overwrite``, never written inside an input.

``quantize`` keeps its progress in ``--out``/checkpoint (:mod:`adatsq.checkpoint`) until the
finished artifact replaces the folder: the same command after a crash or a kill resumes
(``--overwrite`` starts over). Under ``torchrun --nproc-per-node N -m adatsq.cli quantize ...``
the work is split over the ranks (:mod:`adatsq.distributed`) and rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from adatsq import distributed, io
from adatsq.bench import compare, make_rows, markdown_table
from adatsq.config import ActivationSpec, CalibrationSpec, Recipe, WeightSpec
from adatsq.eval.plots import frame_strips, sample_grid
from adatsq.files import check_output
from adatsq.io import ArtifactError
from adatsq.pipeline import load, load_pipeline, quantize_, save
from adatsq.zoo import registry

EXIT_USAGE = 2
CHECKPOINT = "checkpoint"
"""Where ``quantize`` keeps the progress of a run inside its ``--out`` folder until the artifact
replaces it."""


def _positive(args, *names: str) -> None:
    """One-line errors for count options given as zero or less (None: not given)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def _recipe(args):
    if getattr(args, "recipe", None):
        return Recipe.load(args.recipe)
    try:
        options = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--options is not valid JSON ({exc.msg} at character {exc.pos}); "
                         """e.g. --options '{"alpha": 0.5}'""") from None
    return Recipe(method=args.method, weights=WeightSpec(bits=args.w_bits,
                                                        modulation=args.modulation),
                  activations=ActivationSpec(bits=args.a_bits),
                  calibration=CalibrationSpec(num_prompts=args.calib_prompts, steps=args.steps),
                  options=options)


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise ValueError(f"prompt file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"prompt file {path} is not UTF-8 text") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("no prompts given; pass --prompt TEXT or --prompts-file FILE")
    return prompts


def _settings(args, *names: str) -> dict:
    """The given (not None) diffusers pipeline settings among ``names``."""
    values = {n: getattr(args, n, None) for n in names}
    return {n: v for n, v in values.items() if v is not None}


def cmd_zoo(args) -> int:
    entries = [{"name": e.name, "model_class": e.model_class, "steps": e.steps,
                "guidance_scale": e.guidance_scale, "trained": e.weights_path().exists(),
                "description": e.description} for e in registry.ENTRIES.values()]
    if args.json:
        print(json.dumps(entries, indent=1))
    else:
        for e in entries:
            print(f"{e['name']:<22} {e['model_class']:<26} {e['steps']:>3} steps  "
                  f"{e['description']}")
    return 0


def cmd_generate(args) -> int:
    _positive(args, "steps", "height", "width", "frames")
    check_output(args.out, "file", args.overwrite,
                 inputs=(args.artifact, args.model, args.prompts_file))
    prompts = _read_prompts(args)
    settings = _settings(args, "height", "width", "frames")
    steps = args.steps
    if args.artifact:
        pipe, policy = load(args.artifact, **settings)
        steps = steps or policy.steps  # the steps its bits were chosen for
    elif args.model:
        pipe = load_pipeline(args.model, **settings)
    else:
        raise ValueError("name a model (zoo name, folder or hub id) or pass --artifact DIR")
    images = pipe.generate(prompts, seed=args.seed, steps=steps, progress=True)
    sample_grid({args.artifact or args.model: frame_strips(images.numpy())}, prompts, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_quantize(args) -> int:
    _positive(args, "steps", "calib_prompts", "height", "width", "frames")
    ranks = distributed.init_from_env()
    out = Path(args.out)
    checkpoint = out / CHECKPOINT
    resume = checkpoint.is_dir() and not (out / "manifest.json").exists()
    check_output(args.out, "dir", args.overwrite or resume,
                 inputs=(args.model, getattr(args, "recipe", None),
                         getattr(args, "calibration_file", None)))
    recipe = _recipe(args)
    pipe = load_pipeline(args.model, **_settings(args, "height", "width", "frames",
                                                 "calibration_file"))
    if args.overwrite and checkpoint.is_dir() and ranks.main:  # start over
        shutil.rmtree(checkpoint)
    ranks.barrier()
    policy = quantize_(pipe, recipe, checkpoint=checkpoint)
    if not ranks.main:
        return 0
    save(pipe, policy, args.out)  # replaces the folder, checkpoint included, at once
    size = io.model_bytes(pipe.transformer)
    a_bits = policy.average_activation_bits
    print(f"wrote {args.out}: {recipe.method} W{policy.weight_bits}A{a_bits:g}"
          f", {size / 1e6:.2f} MB, quantized in {policy.settings['seconds']:.1f}s"
          + (f" on {ranks.world} ranks" if ranks.world > 1 else "")
          + (", resumed from its checkpoint" if resume and not args.overwrite else ""))
    return 0


def cmd_evaluate(args) -> int:
    _positive(args, "per_category", "steps")
    if not registry.is_zoo_name(args.model):
        raise ValueError(f"unknown model {args.model!r}: evaluate compares methods on a zoo "
                         f"model ({', '.join(registry.ENTRIES)})")
    check_output(args.out, "dir", args.overwrite)
    rows = make_rows(args.methods.split(","), args.bits.split(","))
    report = compare(args.model, rows, args.per_category, args.out, seed=args.seed,
                     steps=args.steps, artifacts_dir=args.artifacts)
    print(markdown_table(report))
    print(f"wrote {args.out}/report.json, report.md, samples.png")
    return 0


def _size_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--height", type=int, help="image height (diffusers pipelines)")
    p.add_argument("--width", type=int, help="image width (diffusers pipelines)")
    p.add_argument("--frames", type=int, help="video frames (Wan pipelines)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adatsq", description="Post-training quantization of "
                                     "Diffusion Transformers: AdaTSQ and its baselines.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("zoo", help="list the embedded models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("generate", help="generate images from prompts")
    p.add_argument("model", nargs="?", help="zoo name, local diffusers folder or hub id")
    p.add_argument("--artifact", help="a quantized artifact directory instead of a model")
    p.add_argument("--prompt", action="append")
    p.add_argument("--prompts-file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _size_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("quantize", help="quantize a model and write an artifact directory")
    p.add_argument("model")
    p.add_argument("--method", default="rtn")
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--a-bits", type=int, default=4)
    p.add_argument("--modulation", action="store_true",
                   help="also quantize the timestep-modulation layers' weights (weight-only; "
                   "27%% of Flux-Dev's weights)")
    p.add_argument("--calib-prompts", type=int, default=32)
    p.add_argument("--steps", type=int)
    p.add_argument("--options", help="method options as JSON, e.g. '{\"alpha\": 0.5}'")
    p.add_argument("--recipe", help="a recipe file (JSON or YAML) instead of the flags")
    p.add_argument("--calib-prompts-file", dest="calibration_file",
                   help="calibration prompts, one per line (diffusers pipelines; default: "
                   "GenEval-style prompts shipped with adatsq)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _size_options(p)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("evaluate", help="compare methods side by side on a zoo model")
    p.add_argument("model")
    p.add_argument("--methods", default="fp,rtn")
    p.add_argument("--bits", default="W8A8,W4A4,W3A3")
    p.add_argument("--per-category", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--artifacts", help="save the artifact of every quantized row here")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="add to / replace an existing --out")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    try:
        return args.func(args)
    except (ValueError, KeyError, OSError, ArtifactError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"adatsq: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
