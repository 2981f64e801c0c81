"""Command line: ``adatsq zoo | methods | generate | quantize | evaluate``.

The parser imports nothing heavy, so ``adatsq --help`` answers at once; the command then runs
from :mod:`adatsq.commands`, loaded through the package's lazy loader (:func:`adatsq.lazy`, the
one place adatsq defers an import). Bad input ends with a one-line error and exit code 2.

``quantize`` keeps its progress in ``--out``/checkpoint (:mod:`adatsq.checkpoint`) until the
finished artifact replaces the folder: the same command after a crash or a kill resumes
(``--overwrite`` starts over). Under ``torchrun --nproc-per-node N -m adatsq.cli quantize ...``
the work is split over the ranks (:mod:`adatsq.distributed`) and rank 0 writes.
"""

from __future__ import annotations

import argparse
import logging
import sys

import adatsq

EXIT_USAGE = 2
QUANTIZE_DEFAULTS = {"method": "rtn", "w_bits": 4, "a_bits": 4, "calib_prompts": 32}
"""The recipe flags' values when neither they nor ``--recipe`` are given."""
DTYPES = ("float32", "bfloat16", "float16")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default."""


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=_Help)


def _size_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--height", type=int, help="image height in pixels (diffusers pipelines; "
                   "default: the pipeline's)")
    p.add_argument("--width", type=int, help="image width in pixels (diffusers pipelines; "
                   "default: the pipeline's)")
    p.add_argument("--frames", type=int, help="video frames (Wan pipelines; default: the "
                   "pipeline's)")
    p.add_argument("--dtype", choices=DTYPES, help="compute dtype of the transformer (default: "
                   "bfloat16 for diffusers pipelines on a GPU, else float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adatsq", formatter_class=_Help,
                                     description="Post-training quantization of Diffusion "
                                     "Transformers: AdaTSQ and its baselines.")
    parser.add_argument("--version", action="version", version=f"adatsq {adatsq.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _parser(sub, "zoo", "list the embedded models")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func="cmd_zoo")

    p = _parser(sub, "methods", "list the quantization methods, one line each")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func="cmd_methods")

    p = _parser(sub, "generate", "generate samples from prompts")
    p.add_argument("model", nargs="?", help="zoo name, local diffusers folder or hub id")
    p.add_argument("--artifact", help="a quantized artifact folder instead of a model")
    p.add_argument("--base", help="with --artifact: the diffusers pipeline (hub id or folder) "
                   "the text encoders, VAE and scheduler come from (default: the one the "
                   "artifact records)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--prompts-file", help="prompts, one per line")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample (sample i "
                   "gets its own noise from it, whatever the batch)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the artifact's policy, "
                   "else the model's)")
    p.add_argument("--out", default="samples/", help="a folder (ending in /) for one file per "
                   "prompt, an image file (.png, .jpg, .webp) or, for video, a .gif; several "
                   "prompts to one file name are numbered beside it")
    p.add_argument("--grid", action="store_true", help="write one labelled sheet of all "
                   "samples to --out instead")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _size_options(p)
    p.set_defaults(func="cmd_generate")

    p = _parser(sub, "quantize", "quantize a model and write an artifact folder")
    p.add_argument("model", help="zoo name, local diffusers folder or hub id")
    p.add_argument("--method", help=f"see 'adatsq methods' (default: "
                   f"{QUANTIZE_DEFAULTS['method']})")
    p.add_argument("--w-bits", type=int, help=f"weight bits, 2-8 or 16 (default: "
                   f"{QUANTIZE_DEFAULTS['w_bits']})")
    p.add_argument("--a-bits", type=int, help=f"activation bits, 2-8 or 16; AdaTSQ's average "
                   f"target (default: {QUANTIZE_DEFAULTS['a_bits']})")
    p.add_argument("--modulation", action="store_true",
                   help="also quantize the timestep-modulation layers' weights (weight-only; "
                   "27%% of Flux-Dev's weights)")
    p.add_argument("--calib-prompts", type=int, help=f"calibration prompts (default: "
                   f"{QUANTIZE_DEFAULTS['calib_prompts']})")
    p.add_argument("--steps", type=int, help="sampling steps the bits are chosen for (default: "
                   "the model's)")
    p.add_argument("--options", help="method options as JSON, e.g. '{\"alpha\": 0.5}'")
    p.add_argument("--recipe", help="a recipe file (JSON or YAML) instead of the recipe flags")
    p.add_argument("--calib-prompts-file", dest="calibration_file",
                   help="calibration prompts, one per line (diffusers pipelines; default: "
                   "GenEval-style prompts shipped with adatsq)")
    p.add_argument("--out", required=True, help="the artifact folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _size_options(p)
    p.set_defaults(func="cmd_quantize", recipe_defaults=QUANTIZE_DEFAULTS)

    p = _parser(sub, "evaluate", "compare methods side by side on a zoo model")
    p.add_argument("model", help="zoo name")
    p.add_argument("--methods", default="fp,rtn", help="comma-separated (see 'adatsq methods')")
    p.add_argument("--bits", default="W8A8,W4A4,W3A3", help="comma-separated WxAy")
    p.add_argument("--per-category", type=int, default=100, help="prompts per category")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    p.add_argument("--artifacts", help="save the artifact of every quantized row here")
    p.add_argument("--out", required=True, help="the report folder")
    p.add_argument("--overwrite", action="store_true", help="add to / replace an existing --out")
    p.set_defaults(func="cmd_evaluate")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the artifact's model card
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = adatsq.lazy("adatsq.commands")
    try:
        return getattr(commands, args.func)(args)
    except (ValueError, KeyError, OSError, adatsq.lazy("adatsq.io").ArtifactError,
            TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"adatsq: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
