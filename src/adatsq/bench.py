"""Side-by-side evaluation of quantization configurations and the reports it writes.

Every row is produced the same way: a fresh pipeline, ``quantize_`` with the row's recipe (none for
``fp``), the evaluation prompts sampled with identical seeds, DigitEval, fidelity to the FP images
(PSNR, SSIM), Fréchet distance to the real held-out scenes of the same prompts, and the size of the
weights as stored. Outputs: ``report.json`` (schema below), ``report.md`` and ``samples.png``.

``report.json``: ``{"model", "steps", "num_prompts", "seed", "environment": {"commit", "torch",
"diffusers", "threads", "seed"}, "validation": {"num_prompts", "seed", "strongest"}, "verdicts":
[{"method", "bits", "baseline", "metric", "diff", "lo", "hi", "verdict", "strongest"}], "rows":
[{"method", "label", "bits", "w_bits", "a_bits", "psnr", "ssim", "fd", "model_bytes", "bops",
"eval": {category: score, ..., "total"}, "eval_se", "seconds", "granularity", "paired",
"validation", ...}]}``. The per-prompt scores behind ``paired`` and ``verdicts`` are in
``per_sample.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

from adatsq import io
from adatsq.calib.capture import CaptureConfig, capture
from adatsq.config import ActivationSpec, Recipe, WeightSpec
from adatsq.eval.cost import bit_operations, layer_tokens, mac_weighted_bits
from adatsq.eval.figures import run_figures
from adatsq.eval.paired import VERDICTS, paired_difference, verdict
from adatsq.eval.plots import frame_strips, radar_chart, sample_grid
from adatsq.files import write_json, write_text
from adatsq.methods import get_method
from adatsq.pipeline import load_pipeline, quantize_, save
from adatsq.quant.primitives import FULL_PRECISION
from adatsq.quant.qlinear import cache_weights_

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
    "+pareto+avg_calib": {"pareto": True, "calib": "uniform", "calib_last_step": True},
}
"""The ablation rows of the paper's Table 3, as AdaTSQ options (all with Hadamard rotation;
average calibration is the plain uniform average over every step, as the paper's)."""

VARIANTS = {
    **{name: ("adatsq", options) for name, options in ABLATIONS.items()},
    "svdquant_r32": ("svdquant", {"rank": 32}),
    "adatsq_lr": ("adatsq", {"lowrank": True}),
    "adatsq_cb": ("adatsq", {"balance": 0.5}),
}
"""Row names that run a method with other options: name -> (method, options)."""

BASELINES = ("rtn", "svdquant", "gptq", "quarot", "vidit_q", "smoothquant", "q_dit")
"""The baselines AdaTSQ is compared with at equal size."""
EXTRA_BUDGET = ("svdquant_r32",)
"""Baselines compared with AdaTSQ too, but holding extra 16-bit parameters (not equal size)."""
OURS = ("adatsq", "adatsq_cb")
"""The rows that get paired verdicts against every baseline: AdaTSQ, and its opt-in
channel-balanced variant where a bench runs it."""


def parse_bits(label: str) -> tuple[int, int]:
    """``"W4A4"`` -> (4, 4); ``"W16A3"`` -> (16, 3); a one-line ValueError otherwise."""
    w, sep, a = label.upper().removeprefix("W").partition("A")
    if not (label.upper().startswith("W") and sep and w.isdigit() and a.isdigit()):
        raise ValueError(f"bit setting {label!r} is not of the form W4A4")
    return int(w), int(a)


def make_rows(methods: list[str], bits: list[str]) -> list[Row]:
    """Rows for every method (or variant name, or ``fp``) at every ``W4A4``-style setting."""

    rows = []
    for method in methods:
        if method == "fp":
            rows.append(Row("fp"))
            continue
        base, options = VARIANTS.get(method, (method, {}))
        for label in bits:
            w, a = parse_bits(label)
            recipe = Recipe(method=base, weights=WeightSpec(bits=w),
                            activations=ActivationSpec(bits=a), options=options)
            rows.append(Row(f"{method} {label.upper()}", recipe, name=method))
    return rows


def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float) and not np.isfinite(x):
        return "inf"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _interval(iv: dict | None) -> str:
    """``+0.012 [-0.004, +0.028]`` of a paired interval."""
    if iv is None:
        return "-"
    return f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"


VIDEO_COLUMNS = {"subject_consistency": "subj", "background_consistency": "bg",
                 "motion_smoothness": "smooth", "temporal_flicker": "flicker"}


def markdown_table(report: dict[str, Any]) -> str:
    """The rows of a report as a Markdown table (video metrics too, for a video model)."""
    first = report["rows"][0]
    cats = [c for c in first["eval"] if c != "total"]
    video = [k for k in VIDEO_COLUMNS if k in first.get("video", {})]
    faithful = ["faithful"] if any(r.get("faithful") is not None for r in report["rows"]) else []
    head = ["method", "W/A", *cats, *[VIDEO_COLUMNS[k] for k in video], "total", "±se",
            "Δ FP [95%]", "PSNR", "SSIM", *faithful, "FD", "MB", "GBOPs", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        a = r["a_bits"]
        bits = f"{r['w_bits']}/{a:g}" if a == int(a) else f"{r['w_bits']}/{a:.2f}"
        cells = [r["method"], bits, *[_fmt(r["eval"][c], 2) for c in cats],
                 *[_fmt(r["video"][k], 3) for k in video], _fmt(r["eval"]["total"]),
                 _fmt(r["eval_se"]), _interval(r.get("paired", {}).get("fp", {}).get("total")),
                 _fmt(r["psnr"], 2), _fmt(r["ssim"]),
                 *[_fmt(r.get("faithful")) for _ in faithful], _fmt(r["fd"], 2),
                 _fmt(r["model_bytes"] / 1e6, 2),
                 _fmt(r["bops"] / 1e9 if r.get("bops") is not None else None, 3),
                 _fmt(r["seconds"], 1)]
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


VALIDATION_SEED = 3
"""Seed of the validation prompts (calibration uses 1, AdaTSQ's selection 2; all disjoint from the
test prompts)."""


def environment(seed: int) -> dict[str, Any]:
    """What a report was produced with: code commit, library versions, threads, seed."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                               check=True, capture_output=True, text=True).stdout.strip()
        commit += "+uncommitted" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"commit": commit, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "threads": torch.get_num_threads(), "seed": seed}


def compare(model: str, rows: list[Row], n_per_category: int, out_dir: str | Path,
            seed: int = 0, steps: int | None = None, progress: bool = True,
            artifacts_dir: str | Path | None = None, figures: bool = True,
            artifact_methods: tuple[str, ...] | None = None,
            validation: int = 0) -> dict[str, Any]:
    """Evaluates ``rows`` on ``model`` and writes the reports to ``out_dir``.

    Args:
        model: a zoo name.
        n_per_category: evaluation (test) prompts per GenEval category.
        seed: noise seed shared by every row.
        artifacts_dir: if given, the artifact of every quantized row is saved there (of the rows
            whose method is in ``artifact_methods``, when given).
        figures: write the figures of rows that have them (Fisher, bits, Pareto) to
            ``out_dir/figures``.
        validation: validation prompts (disjoint from the test prompts) every row also samples;
            the strongest baseline is chosen on them (:func:`paired_analysis`).
    """

    calibrations = _Calibrations(progress)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = load_pipeline(model)
    task, tokens = first.task, layer_tokens(first)
    evaluation = task.evaluation_set(n_per_category)
    prompts, specs, real, show = evaluation.prompts, evaluation.specs, evaluation.real, \
        evaluation.showcase
    val_prompts, val_specs = task.calibration_set(validation, VALIDATION_SEED) if validation \
        else ([], [])
    samples = {"strata": task.strata(specs), "validation_strata": task.strata(val_specs),
               "rows": {}}
    fp_images = fp_val = None
    steps_used = None
    report_rows, grid = [], {}
    rows = sorted(rows, key=lambda r: r.recipe is not None)  # FP first: the fidelity reference
    for row in rows:
        pipe = load_pipeline(model)
        steps_used = steps or pipe.default_steps
        seconds = capture_seconds = 0.0
        if row.recipe is not None:
            recipe = row.recipe
            if recipe.calibration.steps is None and steps is not None:
                recipe = dataclasses.replace(
                    recipe, calibration=dataclasses.replace(recipe.calibration, steps=steps))
            stats, capture_seconds = calibrations.get(pipe, recipe)
            t0 = time.time()
            # the simulated reference: the numbers the methods are defined (and compared) by
            policy = quantize_(pipe, recipe, progress=progress, stats=stats,
                               execution="simulated")
            seconds = time.time() - t0 + capture_seconds
            cache_weights_(pipe.transformer)  # speed over memory for the evaluation
            w_bits, a_bits = policy.weight_bits, policy.average_activation_bits
            bits = recipe.label
            settings = policy.settings
            if figures and ("fisher" in settings or "search" in settings):
                run_figures(policy, stats, load_pipeline(model).transformer, out_dir / "figures",
                            prefix=f"{row.label.replace(' ', '_')}_")
        else:
            policy, w_bits, a_bits, settings = None, FULL_PRECISION, float(FULL_PRECISION), {}
            bits = f"W{FULL_PRECISION}A{FULL_PRECISION}"
        images = pipe.generate(prompts, seed=seed, steps=steps_used,
                               progress=f"{row.label}: sampling" if progress else False)
        scored = task.score(images, specs)
        per_sample = {"total": scored.pop("per_sample")}
        val = None
        if val_prompts:
            val_images = pipe.generate(val_prompts, seed=seed, steps=steps_used)
            val_scored = task.score(val_images, val_specs)
            val = {"total": val_scored["eval"]["total"], "num_prompts": len(val_prompts)}
            per_sample["validation"] = {"total": val_scored["per_sample"]}
        if row.recipe is None:
            fp_images = images if fp_images is None else fp_images
            fp_val = val_images if val_prompts and fp_val is None else fp_val
        close = {"psnr": None, "ssim": None, "faithful": None}
        if row.recipe is not None and fp_images is not None:
            close_per = task.fidelity_per_sample(images, fp_images)
            close = {k: float(v.mean()) for k, v in close_per.items()}
            per_sample.update({k: v.tolist() for k, v in close_per.items()})
            if val is not None and fp_val is not None:
                val_per = task.fidelity_per_sample(val_images, fp_val)
                val.update({k: float(v.mean()) for k, v in val_per.items()})
                per_sample["validation"].update({k: v.tolist() for k, v in val_per.items()})
        samples["rows"][row.label] = per_sample
        entry = {
            "method": row.method,
            "label": row.label,
            "bits": bits,
            "w_bits": int(w_bits),
            "a_bits": round(float(a_bits), 4),
            **close,
            "fd": task.frechet(images, real),
            "model_bytes": io.model_bytes(pipe.transformer),
            "bops": bit_operations(pipe.transformer, tokens),
            "a_bits_mac": round(mac_weighted_bits(pipe.transformer, tokens), 4),
            **scored,
            "seconds": round(seconds, 2),
            "granularity": settings.get("granularity"),
        }
        if val is not None:
            entry["validation"] = val
        if "search" in settings:
            keys = ("budget", "keep", "step_loss", "mean_bits", "total_loss", "truncated",
                    "tried", "selection_scores", "chosen")
            entry["search"] = {k: settings["search"][k] for k in keys}
        if "effective_steps" in settings:
            n_eff = np.array(list(settings["effective_steps"].values()))
            entry["effective_steps"] = {"min": float(n_eff.min()),
                                        "median": float(np.median(n_eff))}
        for key in ("group_sizes", "lowrank_ranks"):
            if key in settings:
                entry[key] = settings[key]
        if "phases" in settings:  # the shared capture is timed here, not inside quantize_
            entry["phases"] = {**settings["phases"], "capture": capture_seconds}
        if row.recipe is not None and row.recipe.options.changed():
            entry["options"] = row.recipe.options.changed()
        report_rows.append(entry)
        grid[row.label] = frame_strips(images[show].numpy())
        log.info("%s: total %.3f", row.label, scored["eval"]["total"])
        if artifacts_dir is not None and policy is not None and (
                artifact_methods is None or row.method in artifact_methods):
            save(pipe, policy, Path(artifacts_dir) / row.label.replace(" ", "_"))
        analysis = paired_analysis(report_rows, samples)
        report = {"model": model, "steps": steps_used, "num_prompts": len(prompts),
                  "seed": seed, "environment": environment(seed),
                  "validation": {"num_prompts": len(val_prompts), "seed": VALIDATION_SEED,
                                 "strongest": analysis["strongest"]},
                  "verdicts": analysis["verdicts"], "rows": report_rows}
        write_json(samples, out_dir / "per_sample.json", indent=None)
        _write(report, grid, [prompts[i] for i in show], out_dir, task.legend)
    return report


METRICS = ("total", "psnr", "ssim", "faithful")
"""What the paired verdicts compare: the task total, PSNR and SSIM to FP, and faithfulness to FP
(:meth:`adatsq.eval.tasks.Task.fidelity_per_sample`); a metric a report lacks is skipped."""

REFERENCE = "rtn"
"""Every quantized row is also compared, prompt by prompt, with this method at its bit width."""


def paired_analysis(rows: list[dict], samples: dict) -> dict[str, Any]:
    """Paired differences of every row (in place) and the verdicts of AdaTSQ (and of each other
    row of :data:`OURS`) against each baseline.

    Adds to each row ``"paired"``: ``{"fp": {"total": interval}, "rtn": {"total", "psnr",
    "ssim", "faithful"}}`` (the row minus FP, and minus RTN at the same bit width; intervals as
    :func:`adatsq.eval.paired.paired_difference`). Returns ``{"verdicts": [...], "strongest":
    {bits: {...}}}``: one verdict per (row of OURS, bit width, baseline, metric), that row minus
    the baseline with its 95% interval, and per bit width the strongest equal-size baseline
    chosen on the validation prompts (task total, then PSNR), never on the test prompts.
    """
    strata = samples["strata"]
    per = samples["rows"]
    quantized = [per[r["label"]] for r in rows if r["method"] != "fp"]
    metrics = [m for m in METRICS if all(m in x for x in quantized)]

    def interval(a: dict, b: dict, metric: str) -> dict[str, float]:
        x, y = per[a["label"]], per[b["label"]]
        return paired_difference(x[metric], y[metric], strata if metric == "total" else None)

    fp = next((r for r in rows if r["method"] == "fp"), None)
    by_bits: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_bits.setdefault(r["bits"], {})[r["method"]] = r
    for r in rows:
        if r is fp:
            continue
        paired = {}
        if fp is not None:
            paired["fp"] = {"total": interval(r, fp, "total")}
        ref = by_bits[r["bits"]].get(REFERENCE)
        if ref is not None and ref is not r:
            paired[REFERENCE] = {m: interval(r, ref, m) for m in metrics}
        r["paired"] = paired
    verdicts, strongest = [], {}
    for bits, at in by_bits.items():
        if not any(name in at for name in OURS):
            continue
        rivals = [at[m] for m in [*BASELINES, *EXTRA_BUDGET] if m in at]
        equal_size = [b for b in rivals if b["method"] in BASELINES and "validation" in b]
        if equal_size:
            best = max(equal_size, key=lambda b: (b["validation"]["total"],
                                                  b["validation"].get("psnr") or 0.0))
            strongest[bits] = {"baseline": best["method"], **best["validation"]}
        for ours in (at[name] for name in OURS if name in at):
            for b in rivals:
                for metric in metrics:
                    iv = interval(ours, b, metric)
                    verdicts.append({"method": ours["method"], "bits": bits,
                                     "baseline": b["method"], "metric": metric,
                                     "diff": iv["diff"], "lo": iv["lo"], "hi": iv["hi"],
                                     "verdict": verdict(iv),
                                     "strongest": strongest.get(bits, {}).get("baseline")
                                     == b["method"]})
    return {"verdicts": verdicts, "strongest": strongest}


def _write(report: dict[str, Any], grid: dict[str, np.ndarray], prompts: list[str], out_dir: Path,
           legend: str):
    write_json(report, out_dir / "report.json")
    md = (f"# {report['model']}: {report['num_prompts']} prompts, {report['steps']} steps\n\n"
          f"{markdown_table(report)}\n\n{legend}; Δ FP: paired difference of the total to FP "
          "(same prompts and seeds) with its 95% interval; PSNR/SSIM against the FP samples "
          "(same seeds); MB: weights as stored; GBOPs: bit-operations per sample and step of the "
          "quantized layers; s: quantization time.\n")
    write_text(md, out_dir / "report.md")
    sample_grid(grid, prompts, out_dir / "samples.png",
                title=f"{report['model']}: rows = methods, columns = prompts")


@torch.no_grad()
def activation_outliers(pipeline, prompts: list[str], steps: int | None = None,
                        seed: int = 0) -> dict[str, Any]:
    """Channel max / median channel max of every quantizable layer's input, per step, with each
    layer's input width."""

    stats = capture(pipeline, prompts, seed=seed, steps=steps,
                    config=CaptureConfig(hessian="none", samples_per_step=0), progress=False)
    ratio = {}
    for name in stats.layers:
        a = stats.absmax[name]  # (T, d_in)
        ratio[name] = (a.amax(1) / a.median(1).values.clamp_min(1e-8)).tolist()
    ranges = {n: (stats.minmax[n][:, 1] - stats.minmax[n][:, 0]).tolist() for n in stats.layers}
    width = {n: int(stats.absmax[n].shape[1]) for n in stats.layers}
    return {"outlier_ratio": ratio, "range": ranges, "width": width,
            "sigmas": stats.sigmas.tolist()}


def rows_at(rows: list[dict], bits: str) -> dict[str, dict]:
    """method -> its row at nominal ``bits`` (e.g. ``"W4A4"``)."""
    return {r["method"]: r for r in rows if r.get("bits") == bits}


def verdict_summary(report: dict, bits: str, metric: str = "total",
                    method: str = "adatsq") -> dict[str, Any] | None:
    """AdaTSQ (or the variant ``method`` of :data:`OURS`) at ``bits`` against every baseline on
    ``metric``: ``{"ours", "strongest", "beats", "ties", "loses", "verdicts"}`` (baseline names
    by verdict; ``strongest``: the strongest equal-size baseline chosen on validation prompts,
    with its verdict), or None."""
    found = [v for v in report.get("verdicts", []) if v["bits"] == bits
             and v["metric"] == metric and v.get("method", "adatsq") == method]
    if not found:
        return None
    out = {"ours": rows_at(report["rows"], bits)[method], "verdicts": found,
           **{k: [v["baseline"] for v in found if v["verdict"] == k] for k in VERDICTS}}
    strong = report.get("validation", {}).get("strongest", {}).get(bits)
    out["strongest"] = next((v for v in found if strong and v["baseline"] == strong["baseline"]),
                            None)
    return out


def verdict_line(summary: dict[str, Any]) -> str:
    """One sentence: which baselines AdaTSQ beats, ties or loses to at 95% (paired)."""
    parts = [f"{k} {', '.join(f'`{b}`' for b in summary[k])}" for k in VERDICTS if summary[k]]
    s = summary["strongest"]
    strongest = "" if s is None else (
        f"; against the strongest baseline on validation, `{s['baseline']}`: {s['verdict']} "
        f"({s['diff']:+.3f}, 95% interval {s['lo']:+.3f} to {s['hi']:+.3f})")
    return "; ".join(parts) + strongest


def combine(bench_dir: str | Path, models: list[str] | None = None,
            baselines: tuple[str, ...] = BASELINES) -> Path | None:
    """The combined ``report.md`` and ``radar.png`` over every ``<model>/report.json`` found in
    ``bench_dir`` (the paper's Tables 1-2 side by side and Fig. 2).

    Per model and bit width, states which baselines AdaTSQ's task total beats, ties or loses to
    (paired 95% intervals, :func:`paired_analysis`). Returns the report's path (None if no report
    exists).
    """

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
    methods = ["adatsq", *baselines, *EXTRA_BUDGET]
    verdicts, radar = [], {}
    for bits in ("W4A4", "W3A3"):
        for method in methods:
            cells = []
            for m in order:
                fp = next((r for r in reports[m]["rows"] if r["method"] == "fp"), None)
                row = rows_at(reports[m]["rows"], bits).get(method)
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
            summary = verdict_summary(reports[m], bits)
            if summary is not None:
                ours = summary["ours"]
                verdicts.append(f"- **{m} {bits}** (AdaTSQ {ours['eval']['total']:.3f}, A"
                                f"{ours['a_bits']:.2f}): {verdict_line(summary)}.")
                faithful = verdict_summary(reports[m], bits, "faithful")
                if faithful is not None:
                    verdicts.append(f"  On faithfulness ({ours['faithful']:.3f}): "
                                    f"{verdict_line(faithful)}.")
    lines += ["", "## Does AdaTSQ beat the baselines? (task total, and faithfulness to FP where "
              "measured; paired, 95%)", "",
              *verdicts, ""]
    axes = [(m, bits) for m in order for bits in ("W4A4", "W3A3")
            if any(m in radar.get(f"{method} {bits}", {}) for method in methods)]
    if len(axes) >= 3:  # a polygon needs three axes
        series = {method: [radar.get(f"{method} {bits}", {}).get(m, 0.0) for m, bits in axes]
                  for method in methods}
        radar_chart([f"{m} {bits}" for m, bits in axes], series, bench_dir / "radar.png",
                    title="Task total relative to FP per model and bit width (paper Fig. 2)")
        lines += ["![radar](radar.png)", ""]
    return write_text("\n".join(lines), bench_dir / "report.md")
