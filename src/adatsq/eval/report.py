"""Side-by-side evaluation of quantization configurations and the reports it writes.

Every row is produced the same way: a fresh pipeline, ``quantize_`` with the row's recipe (none for
``fp``), the evaluation prompts sampled with identical seeds, DigitEval, fidelity to the FP images
(PSNR, SSIM), Fréchet distance to the real held-out scenes of the same prompts, and the size of the
weights as stored. Outputs: ``report.json`` (schema below), ``report.md`` and ``samples.png``.

``report.json``: ``{"model", "steps", "num_prompts", "rows": [{"method", "w_bits", "a_bits",
"psnr", "ssim", "fd", "model_bytes", "eval": {category: score, ..., "total"}, "eval_se",
"seconds", "granularity", ...}]}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adatsq.config import Recipe
from adatsq.eval import digiteval, fidelity
from adatsq.eval.plots import sample_grid
from adatsq.quant.primitives import FULL_PRECISION
from adatsq.zoo import scenes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One configuration to evaluate.

    Attributes:
        label: shown in tables and grids, e.g. ``"gptq W4A4"``.
        recipe: what to run (``None`` = full precision).
        name: the row's ``method`` in report.json (default: the recipe's method, or ``fp``).
    """

    label: str
    recipe: Recipe | None = None
    name: str | None = None

    @property
    def method(self) -> str:
        return self.name or (self.recipe.method if self.recipe else "fp")


ABLATIONS = {
    "minmax": {"pareto": False, "calib": "none"},
    "+pareto": {"pareto": True, "calib": "none"},
    "+fisher_calib": {"pareto": False, "calib": "fisher"},
    "+pareto+avg_calib": {"pareto": True, "calib": "uniform"},
}
"""The ablation rows of the paper's Table 3, as AdaTSQ options (all with Hadamard rotation)."""


def make_rows(methods: list[str], bits: list[str]) -> list[Row]:
    """Rows for every method (or ablation name, or ``fp``) at every ``W4A4``-style setting."""
    from adatsq.config import ActivationSpec, WeightSpec

    rows = []
    for method in methods:
        if method == "fp":
            rows.append(Row("fp"))
            continue
        for label in bits:
            label = label.upper()
            w, _, a = label[1:].partition("A")
            if not (label.startswith("W") and w.isdigit() and a.isdigit()):
                raise ValueError(f"bit setting {label!r} is not of the form W4A4")
            options = ABLATIONS.get(method, {})
            recipe = Recipe(method="adatsq" if method in ABLATIONS else method,
                            weights=WeightSpec(bits=int(w)),
                            activations=ActivationSpec(bits=int(a)), options=options)
            rows.append(Row(f"{method} {label}", recipe, name=method))
    return rows


def write_json(data: Any, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "inf"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown_table(report: dict[str, Any]) -> str:
    """The rows of a report as a Markdown table."""
    cats = list(scenes.CATEGORIES)
    head = ["method", "W/A", *cats, "total", "±se", "PSNR", "SSIM", "FD", "MB", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        a = r["a_bits"]
        bits = f"{r['w_bits']}/{a:g}" if a == int(a) else f"{r['w_bits']}/{a:.2f}"
        cells = [r["method"], bits, *[_fmt(r["eval"][c], 2) for c in cats],
                 _fmt(r["eval"]["total"]),
                 _fmt(r["eval_se"]), _fmt(r["psnr"], 2), _fmt(r["ssim"]), _fmt(r["fd"], 2),
                 _fmt(r["model_bytes"] / 1e6, 2), _fmt(r["seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _showcase(n_per_category: int, per_category: int = 2) -> list[int]:
    return [c * n_per_category + i for c in range(len(scenes.CATEGORIES))
            for i in range(min(per_category, n_per_category))]


class _Calibrations:
    """Calibration statistics shared by the rows with the same calibration spec.

    Every method then sees the very same calibration data; each row's ``seconds`` still includes
    the capture time.
    """

    def __init__(self, progress: bool):
        self.cache: dict[Any, tuple[Any, float]] = {}
        self.progress = progress

    def get(self, pipe, recipe: Recipe):
        from adatsq.calib.capture import CaptureConfig, capture
        from adatsq.methods import get_method

        if get_method(recipe.method).capture is None:
            return None, 0.0
        c = recipe.calibration
        mode = get_method(recipe.method).capture  # what the method itself would capture
        key = (c.num_prompts, c.seed, c.steps, mode)
        if key not in self.cache:
            t0 = time.time()
            prompts = pipe.calibration_prompts(c.num_prompts, c.seed)
            stats = capture(pipe, prompts, seed=c.seed, steps=c.steps,
                            config=CaptureConfig(hessian=mode), progress=self.progress)
            self.cache[key] = (stats, time.time() - t0)
        stats, seconds = self.cache[key]
        # each row derives its own Fisher etc., so that its time to quantize is complete
        return dataclasses.replace(stats, derived={}), seconds


def compare(model: str, rows: list[Row], n_per_category: int, out_dir: str | Path,
            seed: int = 0, steps: int | None = None, progress: bool = True,
            artifacts_dir: str | Path | None = None, figures: bool = True,
            artifact_methods: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Evaluates ``rows`` on ``model`` and writes the reports to ``out_dir``.

    Args:
        model: a zoo name.
        n_per_category: evaluation prompts per GenEval category.
        seed: noise seed shared by every row.
        artifacts_dir: if given, the artifact of every quantized row is saved there (of the rows
            whose method is in ``artifact_methods``, when given).
        figures: write the figures of rows that have them (Fisher, bits, Pareto) to
            ``out_dir/figures``.
    """
    from adatsq import io
    from adatsq.eval.figures import run_figures
    from adatsq.pipeline import load_pipeline, quantize_

    calibrations = _Calibrations(progress)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = scenes.make_scenes(n_per_category, scenes.EVAL_SEED)
    prompts = [s.prompt for s in evaluation]
    specs = [s.spec for s in evaluation]
    real = np.stack([s.image for s in evaluation])
    fp_images = None
    steps_used = None
    report_rows, grid = [], {}
    show = _showcase(n_per_category)
    rows = sorted(rows, key=lambda r: r.recipe is not None)  # FP first: the fidelity reference
    for row in rows:
        pipe = load_pipeline(model)
        steps_used = steps or pipe.default_steps
        seconds = 0.0
        if row.recipe is not None:
            recipe = row.recipe
            if recipe.calibration.steps is None and steps is not None:
                recipe = dataclasses.replace(
                    recipe, calibration=dataclasses.replace(recipe.calibration, steps=steps))
            stats, capture_seconds = calibrations.get(pipe, recipe)
            t0 = time.time()
            policy = quantize_(pipe, recipe, progress=progress, stats=stats)
            seconds = time.time() - t0 + capture_seconds
            w_bits, a_bits = policy.weight_bits, policy.average_activation_bits
            settings = policy.settings
            if figures and ("fisher" in settings or "search" in settings):
                run_figures(policy, stats, load_pipeline(model).transformer, out_dir / "figures",
                            prefix=f"{row.label.replace(' ', '_')}_")
        else:
            policy, w_bits, a_bits, settings = None, FULL_PRECISION, float(FULL_PRECISION), {}
        images = pipe.generate(prompts, seed=seed, steps=steps_used,
                               progress=f"{row.label}: sampling" if progress else False)
        result = digiteval.evaluate(images, specs)
        if fp_images is None and row.recipe is None:
            fp_images = images
        entry = {
            "method": row.method,
            "label": row.label,
            "w_bits": int(w_bits),
            "a_bits": round(float(a_bits), 4),
            "psnr": None if row.recipe is None or fp_images is None
            else fidelity.psnr(images, fp_images),
            "ssim": None if row.recipe is None or fp_images is None
            else fidelity.ssim(images, fp_images),
            "fd": fidelity.frechet_distance(images, real),
            "model_bytes": io.model_bytes(pipe.transformer),
            "eval": {**result.category_scores, "total": result.total},
            "eval_se": result.total_se,
            "seconds": round(seconds, 2),
            "granularity": settings.get("granularity"),
        }
        if "search" in settings:
            keys = ("budget", "keep", "mean_bits", "total_loss", "truncated", "tried",
                    "selection_scores", "chosen")
            entry["search"] = {k: settings["search"][k] for k in keys}
        if "group_sizes" in settings:
            entry["group_sizes"] = settings["group_sizes"]
        if row.recipe is not None and row.recipe.options:
            entry["options"] = row.recipe.options
        report_rows.append(entry)
        grid[f"{row.label}"] = images[show].numpy()
        log.info("%s: total %.3f", row.label, result.total)
        if artifacts_dir is not None and policy is not None and (
                artifact_methods is None or row.method in artifact_methods):
            io.save(pipe.transformer, policy, Path(artifacts_dir) / row.label.replace(" ", "_"),
                    pipe.source())
        report = {"model": model, "steps": steps_used, "num_prompts": len(prompts),
                  "seed": seed, "rows": report_rows}
        _write(report, grid, [prompts[i] for i in show], out_dir)
    return report


def _write(report: dict[str, Any], grid: dict[str, np.ndarray], prompts: list[str], out_dir: Path):
    write_json(report, out_dir / "report.json")
    md = (f"# {report['model']}: {report['num_prompts']} prompts, {report['steps']} steps\n\n"
          f"{markdown_table(report)}\n\nDigitEval (GenEval analog) per category and total; "
          "PSNR/SSIM against the FP images (same seeds); FD: Fréchet distance to real held-out "
          "scenes in the classifier's feature space; MB: weights as stored; "
          "s: quantization time.\n")
    tmp = out_dir / "report.md.tmp"
    tmp.write_text(md)
    os.replace(tmp, out_dir / "report.md")
    sample_grid(grid, prompts, out_dir / "samples.png",
                title=f"{report['model']}: rows = methods, columns = prompts")


@torch.no_grad()
def activation_outliers(pipeline, prompts: list[str], steps: int | None = None,
                        seed: int = 0) -> dict[str, Any]:
    """Channel max / median channel max of every quantizable layer's input, per step."""
    from adatsq.calib.capture import CaptureConfig, capture

    stats = capture(pipeline, prompts, seed=seed, steps=steps,
                    config=CaptureConfig(hessian="none", samples_per_step=0), progress=False)
    ratio = {}
    for name in stats.layers:
        a = stats.absmax[name]  # (T, d_in)
        ratio[name] = (a.amax(1) / a.median(1).values.clamp_min(1e-8)).tolist()
    ranges = {n: (stats.minmax[n][:, 1] - stats.minmax[n][:, 0]).tolist() for n in stats.layers}
    return {"outlier_ratio": ratio, "range": ranges, "sigmas": stats.sigmas.tolist()}
