"""What each ``adatsq`` command does (the parser, which imports nothing heavy, is in
:mod:`adatsq.cli`).

Bad input (unknown model or method, bad bit width, missing or corrupt file, empty prompt list) ends
with a one-line error and exit code 2, checked in the order of the arguments. Outputs follow
:func:`adatsq.files.check_output`: checked before any work, never replaced without
``--overwrite``, never written inside an input.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adatsq import distributed, io
from adatsq.bench import compare, make_rows, markdown_table
from adatsq.config import ActivationSpec, CalibrationSpec, Recipe, WeightSpec
from adatsq.eval.plots import frame_strips, sample_grid
from adatsq.files import atomic_path, check_output
from adatsq.methods import get_method, method_names
from adatsq.models.sources import reference
from adatsq.pipeline import load, load_pipeline, quantize_, save
from adatsq.zoo import registry

CHECKPOINT = "checkpoint"
"""Where ``quantize`` keeps the progress of a run inside its ``--out`` folder until the artifact
replaces it."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RECIPE_FLAGS = {"method": "--method", "w_bits": "--w-bits", "a_bits": "--a-bits",
                "modulation": "--modulation", "calib_prompts": "--calib-prompts",
                "options": "--options"}
"""The quantize flags a recipe file also sets (given together: refused)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".gif",)


def _positive(args, *names: str) -> None:
    """One-line errors for count options given as zero or less (None: not given)."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def command_line(argv: list[str]) -> str:
    """``adatsq <argv>`` as a model card records it: absolute paths by their last part.

    Example:
        >>> command_line(["quantize", "/data/flux", "--out=/tmp/art", "--w-bits", "4"])
        'adatsq quantize flux --out=art --w-bits 4'
    """
    def portable(arg: str) -> str:
        flag, eq, value = arg.partition("=")
        return f"{flag}={reference(value)}" if eq and flag.startswith("--") else reference(arg)

    return " ".join(["adatsq", *(shlex.quote(portable(a)) for a in argv)])


def recipe_of(args) -> Recipe:
    """The recipe of a quantize command line: the ``--recipe`` file, or the flags (the parser's
    ``recipe_defaults`` for those not given); both at once are refused."""
    defaults = args.recipe_defaults
    given = [flag for key, flag in RECIPE_FLAGS.items() if getattr(args, key) not in (None, False)]
    if args.recipe:
        if given:
            raise ValueError(f"--recipe {args.recipe} and {given[0]} both set the recipe; put "
                             f"{given[0]} in the recipe file or drop --recipe")
        return Recipe.load(args.recipe)
    try:
        options = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--options is not valid JSON ({exc.msg} at character {exc.pos}); "
                         """e.g. --options '{"alpha": 0.5}'""") from None

    def flag(key):
        return defaults[key] if getattr(args, key) is None else getattr(args, key)

    return Recipe(method=flag("method"),
                  weights=WeightSpec(bits=flag("w_bits"), modulation=args.modulation),
                  activations=ActivationSpec(bits=flag("a_bits")),
                  calibration=CalibrationSpec(num_prompts=flag("calib_prompts"),
                                              steps=args.steps),
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


def _check_model(name: str) -> None:
    """A model argument that can name nothing is refused before any other argument."""
    if not (registry.is_zoo_name(name) or Path(name).exists() or "/" in name):
        raise ValueError(f"unknown model {name!r}: not a zoo model "
                         f"({', '.join(registry.ENTRIES)}), a local folder or a hub id; "
                         "see 'adatsq zoo'")


def _with_dtype(pipe, dtype: str | None):
    """A zoo pipeline's transformer cast to ``dtype`` (diffusers pipelines load in it)."""
    if dtype is not None and hasattr(pipe, "entry"):
        pipe.transformer.to(DTYPES[dtype])
    return pipe


def _load_for_dtype(model: str, dtype: str | None, **settings):
    if dtype is not None and not registry.is_zoo_name(model):
        settings["dtype"] = DTYPES[dtype]
    return _with_dtype(load_pipeline(model, **settings), dtype)


# -- samples ------------------------------------------------------------------------------------


def to_uint8(sample: np.ndarray) -> np.ndarray:
    """A sample in [-1, 1] (C, ..., H, W) as uint8 (..., H, W, C)."""
    x = np.clip((sample + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.moveaxis(x, 0, -1)


def sample_paths(out: str, n: int, video: bool) -> list[Path]:
    """Where ``generate`` writes ``n`` samples: files in a folder (``--out dir/`` or an
    existing folder), the file itself (one sample), or numbered files beside it."""
    suffix = VIDEO_SUFFIXES[0] if video else IMAGE_SUFFIXES[0]
    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        return [path / f"sample-{i:03d}{suffix}" for i in range(n)]
    allowed = VIDEO_SUFFIXES if video else IMAGE_SUFFIXES
    if path.suffix.lower() not in allowed:
        kind = "video" if video else "image"
        raise ValueError(f"--out {out}: {kind} samples are written as "
                         f"{' or '.join(allowed)}; name such a file or a folder ending in /")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i:03d}{path.suffix}") for i in range(n)]


def write_sample(sample: np.ndarray, path: Path) -> Path:
    """One sample at its own resolution: an image, or an animated GIF of a clip (C, F, H, W)."""
    pixels = to_uint8(sample)
    with atomic_path(path) as tmp:
        if pixels.ndim == 4:  # frames
            frames = [Image.fromarray(f) for f in pixels]
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                           duration=125, loop=0)
        else:
            Image.fromarray(pixels).save(tmp, format=Image.registered_extensions()[
                path.suffix.lower()])
    return path


# -- commands -----------------------------------------------------------------------------------


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


def cmd_methods(args) -> int:
    rows = []
    for name in method_names():  # the first line of each method module's docstring
        doc = (sys.modules[get_method(name).__module__].__doc__ or "").strip().splitlines()
        rows.append({"name": name, "summary": doc[0] if doc else ""})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['name']:<12} {r['summary']}")
    return 0


def cmd_generate(args) -> int:
    _positive(args, "steps", "height", "width", "frames")
    if args.model:
        _check_model(args.model)
    if args.artifact:
        io.read_manifest(args.artifact)  # exists and is an artifact, before anything else
    if args.base and not args.artifact:
        raise ValueError("--base names the pipeline of an --artifact; without one, name the "
                         "model itself")
    if not (args.model or args.artifact):
        raise ValueError("name a model (zoo name, folder or hub id) or pass --artifact DIR")
    prompts = _read_prompts(args)
    grid = args.grid
    kind = "file" if grid or not (args.out.endswith(("/", "\\")) or Path(args.out).is_dir()) \
        else "dir"
    if kind == "file" and not grid and \
            Path(args.out).suffix.lower() not in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise ValueError(f"--out {args.out}: samples are written as "
                         f"{', '.join(IMAGE_SUFFIXES)} images or {', '.join(VIDEO_SUFFIXES)} "
                         "clips; name such a file or a folder ending in /")
    check_output(args.out, kind, args.overwrite,
                 inputs=(args.artifact, args.model, args.base, args.prompts_file))
    settings = _settings(args, "height", "width", "frames")
    steps = args.steps
    if args.artifact:
        if args.dtype is not None and not registry.is_zoo_name(
                args.base or io.read_manifest(args.artifact)["model"]):
            settings["dtype"] = DTYPES[args.dtype]
        pipe, policy = load(args.artifact, base=args.base, **settings)
        pipe = _with_dtype(pipe, args.dtype)
        steps = steps or policy.steps  # the steps its bits were chosen for
    else:
        pipe = _load_for_dtype(args.model, args.dtype, **settings)
    samples = pipe.generate(prompts, seed=args.seed, steps=steps, progress=True).float().numpy()
    if grid:
        sample_grid({args.artifact or args.model: frame_strips(samples)}, prompts, args.out)
        print(f"wrote {args.out}")
        return 0
    paths = sample_paths(args.out, len(prompts), samples.ndim == 5)
    if kind == "dir":
        Path(args.out).mkdir(parents=True, exist_ok=True)
    for sample, path in zip(samples, paths):
        write_sample(sample, path)
    print(f"wrote {len(paths)} sample{'s' * (len(paths) > 1)}: {paths[0]}"
          + (f" ... {paths[-1].name}" if len(paths) > 1 else ""))
    return 0


def cmd_quantize(args) -> int:
    t0 = time.time()
    _positive(args, "steps", "calib_prompts", "height", "width", "frames")
    _check_model(args.model)
    recipe = recipe_of(args)
    get_method(recipe.method)(recipe)  # refuses an infeasible recipe before the model loads
    ranks = distributed.init_from_env()
    out = Path(args.out)
    checkpoint = out / CHECKPOINT
    resume = checkpoint.is_dir() and not (out / "manifest.json").exists()
    check_output(args.out, "dir", args.overwrite or resume,
                 inputs=(args.model, args.recipe, args.calibration_file))
    pipe = _load_for_dtype(args.model, args.dtype,
                           **_settings(args, "height", "width", "frames", "calibration_file"))
    if args.overwrite and checkpoint.is_dir() and ranks.main:  # start over
        shutil.rmtree(checkpoint)
    ranks.barrier()
    policy = quantize_(pipe, recipe, checkpoint=checkpoint)
    if not ranks.main:
        return 0
    # replaces the folder, checkpoint included, at once
    save(pipe, policy, args.out, command=command_line(args.argv))
    size = io.model_bytes(pipe.transformer)
    a_bits = policy.average_activation_bits
    print(f"wrote {args.out}: {recipe.method} W{policy.weight_bits}A{a_bits:g}"
          f", {size / 1e6:.2f} MB, in {time.time() - t0:.1f}s"
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
