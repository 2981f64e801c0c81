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
from adatsq.eval.plots import frame_strips, sample_grid
from adatsq.quant.primitives import FULL_PRECISION

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


VIDEO_COLUMNS = {"subject_consistency": "subj", "background_consistency": "bg",
                 "motion_smoothness": "smooth", "temporal_flicker": "flicker"}


def markdown_table(report: dict[str, Any]) -> str:
    """The rows of a report as a Markdown table (video metrics too, for a video model)."""
    first = report["rows"][0]
    cats = [c for c in first["eval"] if c != "total"]
    video = [k for k in VIDEO_COLUMNS if k in first.get("video", {})]
    head = ["method", "W/A", *cats, *[VIDEO_COLUMNS[k] for k in video], "total", "±se", "PSNR",
            "SSIM", "FD", "MB", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        a = r["a_bits"]
        bits = f"{r['w_bits']}/{a:g}" if a == int(a) else f"{r['w_bits']}/{a:.2f}"
        cells = [r["method"], bits, *[_fmt(r["eval"][c], 2) for c in cats],
                 *[_fmt(r["video"][k], 3) for k in video], _fmt(r["eval"]["total"]),
                 _fmt(r["eval_se"]), _fmt(r["psnr"], 2), _fmt(r["ssim"]), _fmt(r["fd"], 2),
                 _fmt(r["model_bytes"] / 1e6, 2), _fmt(r["seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    task = load_pipeline(model).task
    evaluation = task.evaluation_set(n_per_category)
    prompts, specs, real, show = evaluation.prompts, evaluation.specs, evaluation.real, \
        evaluation.showcase
    fp_images = None
    steps_used = None
    report_rows, grid = [], {}
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
        scored = task.score(images, specs)
        if fp_images is None and row.recipe is None:
            fp_images = images
        close = (task.fidelity(images, fp_images) if row.recipe is not None
                 and fp_images is not None else {"psnr": None, "ssim": None})
        entry = {
            "method": row.method,
            "label": row.label,
            "w_bits": int(w_bits),
            "a_bits": round(float(a_bits), 4),
            **close,
            "fd": task.frechet(images, real),
            "model_bytes": io.model_bytes(pipe.transformer),
            **scored,
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
        grid[row.label] = frame_strips(images[show].numpy())
        log.info("%s: total %.3f", row.label, scored["eval"]["total"])
        if artifacts_dir is not None and policy is not None and (
                artifact_methods is None or row.method in artifact_methods):
            io.save(pipe.transformer, policy, Path(artifacts_dir) / row.label.replace(" ", "_"),
                    pipe.source())
        report = {"model": model, "steps": steps_used, "num_prompts": len(prompts),
                  "seed": seed, "rows": report_rows}
        _write(report, grid, [prompts[i] for i in show], out_dir, task.legend)
    return report


def _write(report: dict[str, Any], grid: dict[str, np.ndarray], prompts: list[str], out_dir: Path,
           legend: str):
    write_json(report, out_dir / "report.json")
    md = (f"# {report['model']}: {report['num_prompts']} prompts, {report['steps']} steps\n\n"
          f"{markdown_table(report)}\n\n{legend}; PSNR/SSIM against the FP samples (same "
          "seeds); MB: weights as stored; s: quantization time.\n")
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


def _rows_at(rows: list[dict], bits: str) -> dict[str, dict]:
    """method -> its row at nominal ``bits`` (e.g. ``"W4A4"``), rows of the bench layout."""
    w, a = int(bits[1]), int(bits[3])
    return {r["method"]: r for r in rows
            if r["w_bits"] == w and int(round(r["a_bits"] - 0.25)) == a}


BASELINES = ("rtn", "svdquant", "gptq", "quarot", "vidit_q", "smoothquant", "q_dit")


def adatsq_against_baselines(rows: list[dict], bits: str,
                             baselines: tuple[str, ...] = BASELINES) -> dict | None:
    """AdaTSQ's row at nominal ``bits`` against the baseline with the best task total:
    ``{"ours", "best", "gap", "se"}`` (``se``: standard error of the difference), or None."""
    at = _rows_at(rows, bits)
    others = [at[m] for m in baselines if m in at]
    if "adatsq" not in at or not others:
        return None
    ours, best = at["adatsq"], max(others, key=lambda r: r["eval"]["total"])
    se = ((ours["eval_se"] or 0.0) ** 2 + (best["eval_se"] or 0.0) ** 2) ** 0.5
    return {"ours": ours, "best": best, "gap": ours["eval"]["total"] - best["eval"]["total"],
            "se": se}


def combine(bench_dir: str | Path, models: list[str] | None = None,
            baselines: tuple[str, ...] = BASELINES) -> Path | None:
    """The combined ``report.md`` and ``radar.png`` over every ``<model>/report.json`` found in
    ``bench_dir`` (the paper's Tables 1-2 side by side and Fig. 2).

    Per model and bit width, states whether AdaTSQ's task total beats every baseline's, by how
    much and against the standard error. Returns the report's path (None if no report exists).
    """
    from adatsq.eval.plots import radar_chart

    bench_dir = Path(bench_dir)
    found = sorted(p.parent.name for p in bench_dir.glob("*/report.json"))
    order = [m for m in (models or []) if m in found] + [m for m in found
                                                          if m not in (models or [])]
    if not order:
        return None
    reports = {m: json.loads((bench_dir / m / "report.json").read_text()) for m in order}
    lines = ["# All models", "",
             "Task total relative to FP (DigitEval for images, the video total for wan-digits) "
             "and PSNR against FP, per method and bit width. Per-model tables: "
             + ", ".join(f"[{m}]({m}/report.md)" for m in order) + ".", ""]
    head = ["method", "bits", *order]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    methods = ["adatsq", *baselines]
    verdicts, radar = [], {}
    for bits in ("W4A4", "W3A3"):
        for method in methods:
            cells = []
            for m in order:
                fp = next((r for r in reports[m]["rows"] if r["method"] == "fp"), None)
                row = _rows_at(reports[m]["rows"], bits).get(method)
                if row is None or fp is None:
                    cells.append("-")
                    continue
                reference = fp["eval"]["total"]
                rel = row["eval"]["total"] / reference if reference > 0 else float("nan")
                cells.append(f"{rel:.3f} ({_fmt(row['psnr'], 1)} dB)" if np.isfinite(rel)
                             else f"n/a, FP scores 0 ({_fmt(row['psnr'], 1)} dB)")
                radar.setdefault(f"{method} {bits}", {})[m] = rel if np.isfinite(rel) else 0.0
            lines.append("| " + " | ".join([method, bits, *cells]) + " |")
        for m in order:
            v = adatsq_against_baselines(reports[m]["rows"], bits, baselines)
            if v is None:
                continue
            ours, best, gap = v["ours"], v["best"], v["gap"]
            verdict = ("beats every baseline" if gap > 0 else "does not beat every baseline")
            noise = (" (within 2 standard errors of the difference)" if abs(gap) <= 2 * v["se"]
                     else "")
            verdicts.append(f"- **{m} {bits}**: AdaTSQ {ours['eval']['total']:.3f} (A"
                            f"{ours['a_bits']:.2f}) {verdict}: best baseline {best['method']} "
                            f"{best['eval']['total']:.3f}, gap {gap:+.3f}{noise}; PSNR "
                            f"{_fmt(ours['psnr'], 1)} vs {_fmt(best['psnr'], 1)} dB.")
    lines += ["", "## Does AdaTSQ beat every baseline?", "", *verdicts, ""]
    axes = [(m, bits) for m in order for bits in ("W4A4", "W3A3")
            if any(m in radar.get(f"{method} {bits}", {}) for method in methods)]
    if len(axes) >= 3:  # a polygon needs three axes
        series = {method: [radar.get(f"{method} {bits}", {}).get(m, 0.0) for m, bits in axes]
                  for method in methods}
        radar_chart([f"{m} {bits}" for m, bits in axes], series, bench_dir / "radar.png",
                    title="Task total relative to FP per model and bit width (paper Fig. 2)")
        lines += ["![radar](radar.png)", ""]
    path = bench_dir / "report.md"
    tmp = path.with_name("report.md.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path
