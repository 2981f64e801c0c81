"""Writes BENCHMARKS.md from the results of the benchmark scripts (no number is typed in).

Reads runs/bench/<model>/ (make bench), runs/demo/ (make demo), the shipped model and classifier
descriptions, benchmarks/results/*.json (GPTQ timing, search, guidance), and renders them.

    python benchmarks/write_benchmarks.py
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from adatsq.bench import EXTRA_BUDGET as EXTRA
from adatsq.bench import markdown_table, rows_at, verdict_line, verdict_summary
from adatsq.eval.paired import paired_difference

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "adatsq"
BENCH = ROOT / "runs" / "bench"
MODELS = ["flux-digits", "flux-digits-schnell", "zimage-digits", "wan-digits"]
CALIBRATION_RUNS = ("calibration", "calibration-wan")
"""Folders under runs/ written by bench_calibration.py (the default's, then one per other model)."""


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _row(report, method, label=None):
    for r in report["rows"]:
        if r["method"] == method and (label is None or r["label"].endswith(label)):
            return r
    return None


def training_section(model: str) -> list[str]:
    from adatsq.zoo import registry

    entry = registry.get(model)
    meta = _load(PKG / "zoo" / "weights" / f"{entry.weights}.json")
    out = [f"## The embedded model: {model}", "", entry.description + ".", "",
           f"Command: `python -m adatsq.zoo.train {model} --out runs/train/{model} "
           "--threads 2 --export` (seeded; resumes from its checkpoints).", ""]
    if meta is None:
        return out + ["(not trained yet)", ""]
    cfg, tr = meta["train_config"], meta.get("training")
    n_params = sum(p.numel() for p in entry.build_model().parameters())
    out.append(f"- `{entry.model_class}`, {n_params / 1e6:.2f} M parameters, config "
               f"`{json.dumps(meta['transformer_config'])}`")
    out.append(f"- AdamW lr {cfg['lr']:g} (warmup {cfg['warmup']}, cosine to "
               f"{cfg['min_lr_ratio']:g}), batch {cfg['batch_size']}, EMA {cfg['ema_decay']}, "
               f"condition dropout {cfg['cond_dropout']}, {cfg['steps']} steps")
    before = meta.get("init", {}).get("training")
    if before:
        out.append(f"- first trained {before['steps']} steps in "
                   f"{before['wall_seconds'] / 60:.1f} min (final training loss "
                   f"{before['final_loss']:.4f}), then trained on from those weights with "
                   f"a fresh optimizer and schedule (`python -m adatsq.zoo.train {model} --out "
                   f"runs/train/{model}-on --init <the earlier weights> --steps {cfg['steps']} "
                   f"--threads 2 --export`):")
    if tr:
        out.append(f"- trained {tr['steps']} steps in {tr['wall_seconds'] / 60:.1f} min on 2 CPU "
                   f"cores (2 threads); final training loss {tr['final_loss']:.4f}")
    return out + [""]


def classifier_section(bench: Path) -> list[str]:
    meta = _load(PKG / "eval" / "weights" / "digit_classifier.json")
    ceil = _load(bench / "ceiling.json")
    out = ["## DigitEval, the GenEval analog", "",
           "Command for the classifier: `python -m adatsq.eval.classifier` (trained on the "
           "training digits only); the ceiling is computed by `make bench`.", ""]
    if meta:
        out.append(f"- digit classifier held-out accuracy: {meta['held_out_accuracy']:.4f}")
    if ceil:
        cats = ", ".join(f"{k} {v:.3f}" for k, v in ceil["eval"].items() if k != "total")
        out.append(f"- ceiling (real held-out scenes of the evaluation prompts): total "
                   f"{ceil['eval']['total']:.4f} ± {ceil['eval_se']:.4f} ({cats})")
    return out + [""]


def outlier_section(bench: Path) -> list[str]:
    res = _load(bench / "outliers.json")
    if res is None:
        return []
    ratio = {k: np.array(v) for k, v in res["outlier_ratio"].items()}
    rng = {k: np.array(v) for k, v in res["range"].items()}
    peak = np.array([r.max() for r in ratio.values()])
    median = np.array([np.median(r) for r in ratio.values()])
    shift = np.array([r.max() / max(r.min(), 1e-12) for r in rng.values()])
    top = sorted(ratio, key=lambda k: -ratio[k].max())[:5]
    model = bench.name
    steps = len(next(iter(ratio.values())))
    out = [f"### Activation outliers and temporal shifts ({model})", "",
           f"Command: `make bench MODELS={model}` (writes `runs/bench/{model}/outliers.json` and "
           f"`outliers.png`), 32 calibration prompts, {steps} steps.", "",
           f"- channel max / median channel max, per layer (max over steps): median over layers "
           f"{np.median(peak):.1f}×, largest {peak.max():.1f}×; per layer and step: median "
           f"{np.median(median):.1f}×",
           f"- input range (max - min) across the {steps} steps, largest / smallest step, per "
           "layer: "
           f"median {np.median(shift):.1f}×, largest {shift.max():.1f}×",
           "- layers with the largest outliers: " + ", ".join(
               f"`{k}` {ratio[k].max():.0f}×" for k in top), "",
           f"![outliers](runs/bench/{model}/outliers.png)", ""]
    return out


def table_section(model: str) -> list[str]:
    bench = BENCH / model
    report = _load(bench / "report.json")
    timing = _load(bench / "timing.json")
    if report is None:
        return [f"## Methods side by side ({model})", "",
                f"(run `make bench MODELS={model}`)", ""]
    video = "video" in report["rows"][0]
    ceil = _load(bench / "ceiling.json")
    size = (f"{report['num_prompts']} evaluation clips" if video else
            f"{report['num_prompts']} evaluation prompts, {report['num_prompts'] // 6} per "
            "category")
    legend = ("Video metrics (VBench analog, `adatsq.eval.video`): per_frame is per-frame "
              "DigitEval, dynamic_degree whether the digit moves as asked, subj/bg subject and "
              "background consistency, smooth motion smoothness, flicker the temporal flicker "
              "score (1 = no flicker); "
              "total is their task summary (± its standard error); PSNR/SSIM frame-wise against "
              "the FP clips under identical seeds"
              if video else
              "DigitEval per category and total (± its standard error); PSNR/SSIM against the FP "
              "images under identical seeds; FD: Fréchet distance to real held-out scenes in the "
              "classifier's feature space (lower is better)")
    out = [f"## Methods side by side ({model})", "",
           f"Command: `make bench MODELS={model}` ({size}, {report['steps']} steps, seed "
           f"{report['seed']}"
           + (f"; wall time {timing['wall_seconds'] / 60:.1f} min" if timing else "") + ").", "",
           legend + "; MB: weights as stored (packed codes, FP16 scales and everything left in "
           "16 bits); s: time to quantize, calibration included. W/A gives the average "
           "activation bits over layers × timesteps.", ""]
    if ceil:
        out += [f"Evaluator ceiling (real held-out samples of the same prompts): total "
                f"{ceil['eval']['total']:.3f} ± {ceil['eval_se']:.3f}.", ""]
    out += [markdown_table(report), "", "Granularity of each row:", ""]
    for r in report["rows"]:
        if r.get("granularity"):
            g = r["granularity"]
            out.append(f"- {r['label']}: weights {g['weights']}; activations {g['activations']}")
    out += ["", f"![samples](runs/bench/{model}/samples.png)", ""]
    if (bench / "efficiency.png").exists():
        out += ["Quality against size (weights as stored) and compute (bit-operations per sample "
                "and step of the quantized layers): a method that buys quality with 16-bit "
                "parameters sits to the right.", "",
                f"![efficiency](runs/bench/{model}/efficiency.png)", ""]
    return out + verdict(report) + decomposition(report)


def decomposition(report) -> list[str]:
    """Weight-only and activation-only rows: which of the two dominates the error."""
    methods = [m for m in ("rtn", "quarot", "svdquant", "adatsq")
               if rows_at(report["rows"], "W4A16").get(m)]
    if not methods:
        return []
    out = ["### Where the error comes from (weights or activations)", "",
           "The same methods with 16-bit activations (W*b*A16: the weights' error alone) or "
           "16-bit weights (W16A*b*: the activations' error alone); PSNR in dB against FP, task "
           "total in brackets.", "",
           "| method | W4A16 | W16A4 | W4A4 | W3A16 | W16A3 | W3A3 |", "|" + "---|" * 7]
    verdicts = []
    for m in methods:
        cells = []
        for bits in ("W4A16", "W16A4", "W4A4", "W3A16", "W16A3", "W3A3"):
            r = rows_at(report["rows"], bits).get(m)
            cells.append("-" if r is None else f"{r['psnr']:.2f} ({r['eval']['total']:.3f})")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
        for b in (4, 3):
            w = rows_at(report["rows"], f"W{b}A16").get(m)
            a = rows_at(report["rows"], f"W16A{b}").get(m)
            if w and a:
                side = "activations" if a["psnr"] < w["psnr"] else "weights"
                verdicts.append(f"{m} at {b} bits: {side} ({w['psnr']:.1f} dB with only weights "
                                f"quantized, {a['psnr']:.1f} dB with only activations)")
    return out + ["", "Which dominates (lower PSNR alone): " + "; ".join(verdicts) + ".", ""]


def verdict(report) -> list[str]:
    out = ["### Does AdaTSQ beat the baselines?", "",
           "AdaTSQ minus each baseline, paired on the same test prompts and seeds, with the 95% "
           "interval (`report.json` `verdicts`): *beats* when the interval lies above 0, *loses* "
           "when below, else *ties*. The strongest baseline (★) is chosen on the "
           f"{report.get('validation', {}).get('num_prompts', 0)} validation prompts (task "
           "total, then PSNR), never on the test prompts; `svdquant_r32` holds extra 16-bit "
           "parameters and is not an equal-size baseline.", ""]
    for label in ("W4A4", "W3A3"):
        summary = verdict_summary(report, label)
        if summary is None:
            continue
        ours = summary["ours"]
        other = {(v["metric"], v["baseline"]): v for v in report["verdicts"]
                 if v["bits"] == label and v["metric"] in ("psnr", "faithful")}
        faithful = any(m == "faithful" for m, _ in other)
        lines = [f"**{label}** (AdaTSQ A{ours['a_bits']:.3f}, total {ours['eval']['total']:.3f}, "
                 f"PSNR {ours['psnr']:.2f} dB"
                 + (f", faithful {ours['faithful']:.3f}" if faithful else "")
                 + f"): {verdict_line(summary)}."]
        if faithful:
            lines.append("On faithfulness: " + verdict_line(verdict_summary(report, label,
                                                                            "faithful")) + ".")
        head = "| baseline | MB | total diff [95%] | verdict | PSNR diff dB [95%] | verdict |"
        if faithful:
            head += " faithful diff [95%] | verdict |"
        out += [" ".join(lines), "", head, "|---" * head.count(" | ") + "|---|"]
        at = rows_at(report["rows"], label)
        for v in summary["verdicts"]:
            q = other[("psnr", v["baseline"])]
            star = " ★" if v["strongest"] else ""
            cells = (f"| {v['baseline']}{star} | {at[v['baseline']]['model_bytes'] / 1e6:.2f} | "
                     f"{v['diff']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] | {v['verdict']} | "
                     f"{q['diff']:+.2f} [{q['lo']:+.2f}, {q['hi']:+.2f}] | {q['verdict']} |")
            f = other.get(("faithful", v["baseline"]))
            if f is not None:
                cells += (f" {f['diff']:+.3f} [{f['lo']:+.3f}, {f['hi']:+.3f}] | "
                          f"{f['verdict']} |")
            out.append(cells)
        out.append("")
    fp = _row(report, "fp")
    search = _load(ROOT / "benchmarks" / "results" / "search.json")
    for label in ("W4A4", "W3A3"):
        ada = _row(report, "adatsq", label)
        if ada is None or fp is None:
            continue
        mb, fp_mb = ada["model_bytes"] / 1e6, fp["model_bytes"] / 1e6
        line = (f"- Efficiency (Table 4 analog), AdaTSQ {label}: weights {mb:.2f} MB vs "
                f"{fp_mb:.2f} MB in FP16 ({fp_mb / mb:.2f}×; embedders, norms and adaLN stay in "
                "16 bits and weigh much more in a 2 M-parameter model than in Flux-Dev), "
                f"average activation bits {ada['a_bits']:.3f}, quantized in "
                f"{ada['seconds']:.0f} s")
        if search:
            beam = max(r["beam_ms"] for r in search["summary"]) / 1000
            share = 100 * beam / ada["seconds"]
            line += f"; the beam search's own bookkeeping takes {share:.3f}% of it"
        out.append(line + ".")
    ablation = TABLE3_ROWS
    rows = [_row(report, m, "W3A3") for m in ablation]
    if all(rows):
        out += ["", "### Table 3 (ablation, W3A3)", "",
                "| row | A bits | total | ±se | PSNR |", "|---|---|---|---|---|"]
        for m, r in zip(ablation, rows):
            out.append(f"| {m} | {r['a_bits']:.3f} | {r['eval']['total']:.3f} | "
                       f"{r['eval_se']:.3f} | {r['psnr']:.2f} |")
        out += table3_ordering(report["model"], ablation, rows)
    return out + [""]


def massive_section() -> list[str]:
    res = _load(ROOT / "runs" / "bench-ma" / "report.json")
    out = ["## The massive-activation regime (make bench-ma)", ""]
    if res is None or "configs" not in res:
        return out + ["(run `make bench-ma`)", ""]
    configs = res["configs"]

    def name(c):
        return "none" if c["strength"] is None else f"{c['variant']} {c['strength']:g}"

    out += [f"Command: `make bench-ma` ({res['model']}, {res['num_prompts']} test prompts, "
            f"{res['steps']} steps, seed {res['seed']}; wall time "
            f"{res['wall_seconds'] / 60:.1f} min). Two function-preserving variants "
            "(`adatsq.models.massive`): *absorbable* (`@ma<k>`) scales two hidden channels of "
            "the adaLN shift and scale by k and divides the consumers' input columns by k, which "
            "SmoothQuant's channel factor undoes exactly; *bias* (`@mb<k>`) adds a constant "
            "offset of k medians to the same channels on every token and absorbs it in the "
            "consumers' biases, which no channel rescaling removes. `adatsq_cb` (opt-in, "
            "beyond the paper) is AdaTSQ with ViDiT-Q's channel balancing (SmoothQuant factors, "
            "alpha 0.5) before its rotation.", "",
            "Measured outlier ratio (channel max / median channel max, max over steps; median "
            "and largest over layers; largest after a Hadamard rotation of the layer's input, "
            "÷√width, for comparison with Flux-Dev's width 3072): " + "; ".join(
                f"{name(c)}: {o['median']:.1f}× / {o['max']:.0f}× / {o.get('max_rotated', 0):.1f}×"
                for c, o in zip(configs, res["outlier_ratio"].values())) + ".", ""]
    for bits in ("W4A4", "W3A3"):
        out += [f"**{bits}**: task total (PSNR dB, faithfulness) per variant and strength", "",
                "| method | " + " | ".join(name(c) for c in configs) + " |",
                "|---|" + "---|" * len(configs)]
        methods = list(dict.fromkeys(r["method"] for r in res["rows"] if r["bits"] == bits))
        fp = {r["name"]: r for r in res["rows"] if r["method"] == "fp"}
        out.append("| fp | " + " | ".join(f"{fp[c['name']]['eval']['total']:.3f}"
                                          if c["name"] in fp else "-" for c in configs) + " |")
        for m in methods:
            at = {r["name"]: r for r in res["rows"] if r["method"] == m and r["bits"] == bits}
            out.append(f"| {m} | " + " | ".join(
                f"{at[c['name']]['eval']['total']:.3f} ({at[c['name']]['psnr']:.1f}, "
                f"{at[c['name']]['faithful']:.2f})" if c["name"] in at else "-"
                for c in configs) + " |")
        out.append("")
        ours = list(dict.fromkeys(v.get("method", "adatsq") for v in res["verdicts"]))
        for c in configs:
            for method in ours:
                for metric in ("psnr", "faithful", "total"):
                    found = [v for v in res["verdicts"] if v["name"] == c["name"]
                             and v["bits"] == bits and v["metric"] == metric
                             and v.get("method", "adatsq") == method]
                    if found:
                        groups = {k: [v["baseline"] for v in found if v["verdict"] == k]
                                  for k in ("beats", "ties", "loses")}
                        out.append(f"- {name(c)}, {metric}: `{method}` " + "; ".join(
                            f"{k} {', '.join(v)}" for k, v in groups.items() if v)
                            + " (paired 95%)")
        out.append("")
    kinds = list(dict.fromkeys(c["variant"] for c in configs if c["variant"]))
    return out + [f"![strength {k}](runs/bench-ma/strength_{k}.png)" for k in kinds] + [""]


def demo_section() -> list[str]:
    timing = _load(ROOT / "runs" / "demo" / "timing.json")
    report = _load(ROOT / "runs" / "demo" / "report.json")
    out = ["## make demo", "", "Command: `make demo` (AdaTSQ W4A4 against FP, RTN and SVDQuant, "
           "10 prompts per category).", ""]
    if timing:
        out.append(f"- wall time: {timing['wall_seconds'] / 60:.1f} min on 2 cores")
    if report:
        out += ["", markdown_table(report)]
    return out + [""]


def gptq_section() -> list[str]:
    res = _load(ROOT / "benchmarks" / "results" / "gptq_timing.json")
    out = ["## GPTQ against the IST-DASLab reference", "",
           "Command: `python benchmarks/bench_gptq.py --reference <clone of IST-DASLab/gptq>`.", ""]
    if res is None:
        return out + ["(not run)", ""]
    out += ["| shape (out×in) | bits | groups | act-order | ours s | reference s | ratio | "
            "error ours | error reference | error RTN |", "|" + "---|" * 10]
    for r in res["results"]:
        o, i = r["shape"]
        out.append(f"| {o}×{i} | {r['bits']} | {r['group_size'] or 'channel'} | "
                   f"{r['act_order']} | {r['time_ours_s']:.3f} | {r['time_reference_s']:.3f} | "
                   f"{r['time_ratio']:.2f} | {r['error_ours']:.4g} | {r['error_reference']:.4g} | "
                   f"{r['error_rtn']:.4g} |")
    env = res["environment"]
    out += ["", f"Median of {res['settings']['repeats']} runs each, alternating order; torch "
            f"{env['torch']}, {env['threads']} threads."]
    return out + [""]


def sweeps_section() -> list[str]:
    out = []
    g = _load(ROOT / "benchmarks" / "results" / "guidance.json")
    if g:
        out += ["## Classifier-free guidance of flux-digits (FP)", "",
                f"Command: `python benchmarks/bench_guidance.py` ({g['per_category']} evaluation "
                "prompts per category, 50 steps).", "", "| guidance scale | total | ±se |",
                "|---|---|---|"]
        out += [f"| {r['guidance_scale']:g} | {r['total']:.3f} | {r['total_se']:.3f} |"
                for r in g["rows"]]
        out.append("")
    for model in MODELS:
        r = _load(ROOT / "benchmarks" / "results" / f"sampling_{model}.json")
        if not r:
            continue
        chosen = r["chosen"]
        out += [f"## Sampling recipe of {model} (FP, validation split)", "",
                f"Command: `python benchmarks/bench_sampling.py --model {model}` ({r['prompts']} "
                f"validation prompts, {r['steps']} steps; the test prompts never see it). Chosen: "
                f"CFG {chosen['guidance_scale']:g}, flow shift {chosen['shift']:g}.", "",
                "| guidance scale | flow shift | total | ±se |", "|---|---|---|---|"]
        out += [f"| {x['guidance_scale']:g} | {x['shift']:g} | {x['total']:.3f} | "
                f"{x['total_se']:.3f} |" for x in r["rows"]]
        out.append("")
    return out + [line for run in CALIBRATION_RUNS for line in calibration_section(run)]


def calibration_section(run: str = "calibration") -> list[str]:
    c = _load(ROOT / "runs" / run / "report.json")
    if not c:
        return []
    out_flag = "" if run == "calibration" else f" --out runs/{run}"
    b = c["transfer_bound"]
    out = [f"## Which per-step weights should GPTQ get? ({c['model']}, paper Eqs. 6-8)", "",
           f"Command: `python benchmarks/bench_calibration.py --model {c['model']} --prompts "
           f"{c['n_prompts']}{out_flag}` ({c['bits']}, uniform activation bits, {c['n_prompts']} "
           f"validation prompts, {c['steps']} steps; {c['seconds'] / 60:.0f} min). Each row: "
           "GPTQ on Σ_t α_t H_t with α from the named weighting (Fisher rows: Eq. 6 on "
           "per-layer mean-normalized scores, no uniform mix; `default`: the default before "
           "this sweep, velocity Fisher, tau 10, mix 0.5; `delta_sigma`: α_t ∝ σ_t − σ_t+1; "
           "`damage`: α_t ∝ the measured damage of quantizing step t alone), with or without "
           "the last step. ΔPSNR and Δfaithful: "
           "paired per-prompt differences to uniform calibration with the last step (QuaRot's "
           "GPTQ) and their 95% intervals.", "",
           "| weighting | last step | tau | mix | N_eff median | PSNR | ΔPSNR [95%] | faithful | "
           "Δfaithful [95%] |", "|---|---|---|---|---|---|---|---|---|"]
    for r in c["rows"]:
        n = r.get("n_eff_median")
        out.append(f"| {r['weighting']} | {'yes' if r['last_step'] else 'no'} | "
                   f"{r['tau'] if r['tau'] is not None else '-'} | "
                   f"{r['mix'] if r['mix'] is not None else '-'} | "
                   f"{'-' if n is None else f'{n:.1f}'} | {r['psnr']:.2f} | "
                   f"{r['psnr_diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}] | "
                   f"{r['faithful']:.3f} | {r['faithful_diff']:+.3f} "
                   f"[{r['faithful_lo']:+.3f}, {r['faithful_hi']:+.3f}] |")
    def names(rows):
        return ", ".join(f"`{r['weighting']}`{'' if r['last_step'] else ' without the last step'}"
                         + (f" (tau {r['tau']:g})" if r["tau"] is not None else "")
                         for r in rows) or "none"

    best = max(c["rows"], key=lambda r: r["psnr_diff"])
    fig5 = b["fig5"]
    ratio = np.asarray(fig5["fisher"]) / np.asarray(fig5["uniform"])
    out += ["", "Beats uniform at 95%: on PSNR " + names([r for r in c["rows"] if r["lo"] > 0])
            + "; on faithfulness " + names([r for r in c["rows"] if r["faithful_lo"] > 0])
            + ". Loses to it at 95% on PSNR: " + names([r for r in c["rows"] if r["hi"] < 0])
            + f". Best point estimate: {names([best])}, {best['psnr_diff']:+.2f} dB "
            f"[{best['lo']:+.2f}, {best['hi']:+.2f}].", "",
        f"*Transfer bound* (GPTQ fitted on half the calibration prompts, its error measured on "
        f"the other half's per-step Hessians, summed over layers): putting all the weight on step "
        f"t lowers that step's held-out error by {100 * b['mean_gain']:.0f}% on average over the "
        f"steps (at most {100 * b['max_gain']:.0f}%) against the uniform fit, while the uniform "
        f"fit's error on held-out Hessians exceeds the in-sample fit's by "
        f"{100 * b['mean_gap']:.0f}% on average (the Hessians' sampling noise). Any reweighting "
        "trades these per-step gains against one another.", "",
        f"![transfer](runs/{run}/transfer.png)", "", _calibration_default(best, c["rows"]), "",
        f"Fig. 5 analog (`{fig5['layer']}`, held-out per-step error, uniform against "
        f"Fisher-guided at tau 1): the Fisher-guided weights lower the error at "
        f"{int((ratio < 1).sum())} of {len(ratio)} steps (by up to {100 * (1 - ratio.min()):.0f}%) "
        f"and raise it at the others (up to {ratio.max():.1f}x): reweighting moves error between "
        f"steps rather than removing it. ![fig5](runs/{run}/fig5.png)", ""]
    return out


def _calibration_default(best: dict, rows: list[dict]) -> str:
    """Whether AdaTSQ's default calibration is the sweep's validation-best row (else where its
    row stands)."""
    from adatsq.config import AdaTSQOptions

    o = AdaTSQOptions()

    def is_default(r: dict) -> bool:
        return (o.calib == "fisher" and r["weighting"] == f"fisher_{o.fisher_target}"
                and r["tau"] == o.tau and (r["mix"] or 0.0) == o.mix
                and r["last_step"] == o.calib_last_step)

    chosen = is_default(best)
    default = (f"{o.fisher_target} Fisher, tau {o.tau:g}, mix {o.mix:g}, "
               f"{'with' if o.calib_last_step else 'without'} the last step")
    if chosen:
        return (f"AdaTSQ's default calibration is the best point estimate on these validation "
                f"prompts ({default}), a tie with uniform at 95%. It keeps the paper's idea "
                "(sensitivity-weighted Hessians, Eqs. 6-8) and deviates from it twice: the "
                "Fisher of the denoised estimate x̂0 = x_t − σv instead of the velocity loss "
                "of Eq. 1 (σ_t⁴ times it, so the last steps, where the velocity target is "
                "almost pure noise, no longer dominate), and no weight on the last step.")
    row = next((r for r in rows if is_default(r)), None)
    where = "" if row is None else (
        f": {row['psnr_diff']:+.2f} dB [{row['lo']:+.2f}, {row['hi']:+.2f}] against uniform, "
        + ("a loss" if row["hi"] < 0 else "a win" if row["lo"] > 0 else "a tie") + " at 95%")
    return f"AdaTSQ's default calibration ({default}) is not the best point estimate here{where}."


def rotation_section() -> list[str]:
    r = _load(ROOT / "runs" / "rotation" / "report.json")
    if not r:
        return []
    out = ["## Rotation: none, Hadamard H, randomized Hadamard DH", "",
           "Command: `python benchmarks/rotation_error.py` (inputs of every quantizable layer "
           f"during the FP generation of {r['prompts']} calibration prompts, every step; "
           "per-token asymmetric MinMax; error ||Q(xR)Rᵀ - x||² / ||x||², median over layers; "
           "best: layers where that rotation has the least error).", "",
           "| model | bits | none | H | DH | best none / H / DH |", "|---|---|---|---|---|---|"]
    for model, res in r["models"].items():
        for b in r["bits"]:
            m = {k: res["summary"][f"{k}@{b}"] for k in ("none", "H", "DH")}
            out.append(f"| {model} | {b} | {m['none']['median']:.4f} | {m['H']['median']:.4f} | "
                       f"{m['DH']['median']:.4f} | {m['none']['best_layers']} / "
                       f"{m['H']['best_layers']} / {m['DH']['best_layers']} |")
    return out + ["", "![rotation error](runs/rotation/rotation_error.png)", ""]


def step_damage_section() -> list[str]:
    r = _load(ROOT / "runs" / "step_damage" / "report.json")
    if not r:
        return []
    out = ["## Step loss against the damage of quantizing one step", "",
           f"Command: `python benchmarks/step_damage.py --model {r['model']}` ({r['bits']}, "
           f"{r['prompts']} prompts, CFG {r['cfg_scale']:g}). Damage of step t: final-sample MSE "
           "to FP when only step t is quantized; Spearman rank correlation over the steps of "
           "each step loss with it.", "", "| step loss | Spearman with damage |", "|---|---|"]
    out += [f"| {k} | {v:+.3f} |" for k, v in r["spearman"].items()]
    return out + ["", "![step damage](runs/step_damage/step_damage.png)", ""]


def selection_section() -> list[str]:
    files = sorted((ROOT / "runs" / "selection").glob("*.json"))
    if not files:
        return []
    out = ["## End-to-end selection against the test set", "",
           "Command: `python benchmarks/selection_check.py --model <model> --bits <bits>`: every "
           "path the selection tried, scored on the selection prompts and on test prompts; "
           "Spearman rank correlation over the paths, and the test rank of the chosen path "
           "(1 = best).", "",
           "| model | bits | paths | test prompts | selection task ~ test total | "
           "selection PSNR ~ test PSNR | chosen: rank by test total | by test PSNR |",
           "|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = _load(f)
        rho = r["spearman"]

        def cell(k: str) -> str:  # None: a constant column (a saturated metric)
            return f"{rho[k]:+.2f}" if rho.get(k) is not None else "n/a (constant)"

        out.append(f"| {r['model']} | {r['bits']} | {len(r['rows'])} | {r['test_prompts']} | "
                   f"{cell('selection_task ~ test_total')} | "
                   f"{cell('selection_psnr ~ test_psnr')} | "
                   f"{r['chosen_test_rank']['test_total']} | "
                   f"{r['chosen_test_rank']['test_psnr']} |")
    out.append("")
    for f in files:
        if f.with_suffix(".png").exists():
            out.append(f"![selection {f.stem}](runs/selection/{f.stem}.png)")
    return out + [""]


TABLE3_ROWS = ["minmax", "+pareto", "+fisher_calib", "+pareto+avg_calib", "adatsq"]
"""The rows of the paper's Table 3 (the ablation), in its order."""
TABLE3_PAIRS = ((0, 1), (0, 2), (1, 3), (3, 4))
"""The paper's Table 3 ordering as pairs of ablation rows (earlier < later): MinMax below
+Pareto and below +Fisher calibration, +Pareto below +average calibration below AdaTSQ."""
ORDER_METRICS = ("total", "psnr", "faithful")


def table3_pairs(model: str, names: list[str], rows: list[dict]) -> list[dict] | None:
    """Each pair of :data:`TABLE3_PAIRS`, later row minus earlier row paired on the test
    prompts, per metric of :data:`ORDER_METRICS` that both rows measured."""
    per_sample = _load(BENCH / model / "per_sample.json")
    if per_sample is None:
        return None
    pairs = []
    for a, b in TABLE3_PAIRS:
        x, y = (per_sample["rows"][rows[i]["label"]] for i in (a, b))
        found = {m: paired_difference(np.array(y[m]), np.array(x[m]),
                                      per_sample["strata"] if m == "total" else None)
                 for m in ORDER_METRICS if m in x and m in y}
        pairs.append({"pair": f"{names[a]} < {names[b]}", **found})
    return pairs


def _holds(d: dict) -> str:
    return "yes (95%)" if d["lo"] > 0 else ("no (95%)" if d["hi"] < 0 else
                                            "in the mean" if d["diff"] > 0 else "no")


def table3_ordering(model: str, names: list[str], rows: list[dict]) -> list[str]:
    """The paper's Table 3 ordering, pair by pair, paired on the test prompts."""
    pairs = table3_pairs(model, names, rows)
    if pairs is None:
        return []
    metrics = [m for m in ORDER_METRICS if all(m in p for p in pairs)]
    fmt = {"total": ".3f", "psnr": ".2f", "faithful": ".3f"}
    out = ["", "The paper's ordering, pair by pair (later row minus earlier row, paired on the "
           "test prompts, 95% intervals):", "",
           "| pair | " + " | ".join(f"{m} diff [95%] | holds" for m in metrics) + " |",
           "|---|" + "---|---|" * len(metrics)]
    for p in pairs:
        out.append(f"| {p['pair']} | " + " | ".join(
            f"{p[m]['diff']:+{fmt[m]}} [{p[m]['lo']:+{fmt[m]}}, {p[m]['hi']:+{fmt[m]}}] | "
            f"{_holds(p[m])}" for m in metrics) + " |")
    held = ", ".join(f"{sum(p[m]['lo'] > 0 for p in pairs)} on {m}" for m in metrics)
    return out + ["", f"The paper's ordering holds at 95% for {held} of its 4 pairs here."]


def _by_baseline(report: dict, bits: str, metric: str, method: str = "adatsq") -> dict:
    """Equal-size baseline -> verdict of ``method`` against it at ``bits`` on ``metric``."""
    from adatsq.bench import BASELINES

    return {v["baseline"]: v["verdict"] for v in report.get("verdicts", [])
            if v["bits"] == bits and v["metric"] == metric and v["baseline"] in BASELINES
            and v.get("method", "adatsq") == method}


def _names(items) -> str:
    return ", ".join(f"`{x}`" for x in items) or "none"


def claims_section() -> list[str]:
    """The paper's claims and the goals of the benchmark, one by one: what holds at 95%."""
    reports = {m: _load(BENCH / m / "report.json") for m in MODELS}
    reports = {m: r for m, r in reports.items() if r}
    if not reports:
        return []
    out = ["## The paper's claims, one by one (paired, 95%)", "",
           "Rendered from the reports below; *beats* and *loses* mean that the paired 95% "
           "interval of the difference lies above or below 0 (equal-size baselines only). "
           "Each model's report records the commit it was run at: " + ", ".join(
               f"{m} {r['environment']['commit'][:7]}" for m, r in reports.items()) + ".", "",
           "**1. AdaTSQ beats every equal-size baseline (Tables 1-2).** Baselines beaten / tied "
           "/ lost to, per model, bit width and metric:", "",
           "| model | bits | total | PSNR | faithful |", "|---|---|---|---|---|"]
    goal = []
    for m, r in reports.items():
        for bits in ("W4A4", "W3A3"):
            cells = []
            for metric in ORDER_METRICS:
                v = _by_baseline(r, bits, metric)
                cells.append("-" if not v else "/".join(
                    str(sum(x == k for x in v.values())) for k in ("beats", "ties", "loses")))
            out.append(f"| {m} | {bits} | " + " | ".join(cells) + " |")
        total, faithful = (_by_baseline(r, "W3A3", k) for k in ("total", "faithful"))
        if faithful:
            missed = [b for b in total if "beats" not in (total[b], faithful.get(b))]
            goal.append(f"{m}: {'holds' if not missed else 'not beaten: ' + _names(missed)}")
        else:
            goal.append(f"{m}: faithfulness not measured")
    ties = _load(ROOT / "runs" / "ties" / "report.json")
    out += ["", "At W3A3, beating every equal-size baseline on faithfulness or on task total: "
            + "; ".join(goal) + ".", "", *([*ties_goal(ties), ""] if ties else []),
            "**2. The ablation ordering (Table 3):** MinMax < +Pareto, MinMax < +Fisher "
            "calibration, +Pareto < +average calibration < AdaTSQ. Pairs that hold at 95%, of "
            "4, per model:", "", "| model | total | PSNR | faithful |", "|---|---|---|---|"]
    ablation = TABLE3_ROWS
    for m, r in reports.items():
        rows = [_row(r, a, "W3A3") for a in ablation]
        pairs = table3_pairs(m, ablation, rows) if all(rows) else None
        if pairs:
            out.append(f"| {m} | " + " | ".join(
                str(sum(p[k]["lo"] > 0 for p in pairs)) if all(k in p for p in pairs) else "-"
                for k in ORDER_METRICS) + " |")
    calibrations = [c for c in (_load(ROOT / "runs" / run / "report.json")
                                for run in CALIBRATION_RUNS) if c]
    parts = []
    for c in calibrations:
        wins = [x for x in c["rows"] if x["lo"] > 0 or x["faithful_lo"] > 0]
        b = c["transfer_bound"]
        parts.append(f"{c['model']}: of {len(c['rows']) - 1} weightings on {c['n_prompts']} "
                     f"validation prompts ({c['bits']}), {len(wins)} beat uniform at 95% on PSNR "
                     f"or faithfulness; the transfer bound: one step's held-out error falls by "
                     f"{100 * b['mean_gain']:.0f}% on average (at most "
                     f"{100 * b['max_gain']:.0f}%) when all the weight goes to it, against a "
                     f"{100 * b['mean_gap']:.0f}% sampling gap, and every other step pays for it.")
    if parts:
        out += ["", "**3. Fisher-guided calibration beats uniform (Eqs. 6-8, Fig. 5).** "
                + " ".join(parts) + " (Sections below.)"]
    out += ["", *massive_goal(), ""]
    return out


def ties_section() -> list[str]:
    """Goal 1's ties, measured again on a larger validation sample (benchmarks/bench_ties.py)."""
    t = _load(ROOT / "runs" / "ties" / "report.json")
    if not t:
        return []
    first = t["models"][0]
    out = ["## Where AdaTSQ ties at W3A3: a larger validation sample", "",
           f"Command: `python benchmarks/bench_ties.py --models "
           f"\"{' '.join(m['model'] for m in t['models'])}\" --prompts {first['n_prompts']}` "
           f"({t['seconds'] / 60:.0f} min; commit {(t['environment']['commit'] or '?')[:7]}). "
           "Validation prompts only, disjoint from the test set; every row exactly as `make "
           "bench` runs it. Each line: the paired per-prompt difference (ours minus baseline) "
           "with its 95% interval; `n to resolve`: the prompts at which a difference of this "
           "mean would clear its 95% interval (1.96 sd / diff)².", "",
           "| model | ours | baseline | metric | diff [95%] | verdict | sd | n to resolve |",
           "|---|---|---|---|---|---|---|---|"]
    for m in t["models"]:
        for p in m["pairs"]:
            out.append(f"| {m['model']} | {p['method']} | {p['baseline']} | {p['metric']} | "
                       f"{p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}] | {p['verdict']} | "
                       f"{p['sd']:.3f} | {p['n_resolve'] if p['n_resolve'] else '-'} |")
    out += ["", "Means on these prompts: " + "; ".join(
        f"{m['model']} (FP total {m['fp_total']:.3f}) " + ", ".join(
            f"{name} {v['total']:.3f} / {v['psnr']:.1f} dB / {v['faithful']:.3f}"
            for name, v in m["means"].items()) for m in t["models"])
        + " (total / PSNR / faithful).", "", *ties_goal(t), ""]
    return out


def ties_goal(t: dict) -> list[str]:
    """Per model and row of ours: the baselines it beats at 95% on total or faithfulness."""
    parts = []
    for m in t["models"]:
        for ours in dict.fromkeys(p["method"] for p in m["pairs"]):
            pairs = [p for p in m["pairs"] if p["method"] == ours]
            bases = list(dict.fromkeys(p["baseline"] for p in pairs))
            beaten = [b for b in bases if any(p["baseline"] == b and p["verdict"] == "beats"
                                              and p["metric"] in ("total", "faithful")
                                              for p in pairs)]
            rest = [b for b in bases if b not in beaten]
            parts.append(f"{m['model']} `{ours}` " + (
                f"beats {_names(beaten)}" + (f", not {_names(rest)}" if rest else "")
                if beaten else f"beats none of {_names(rest)}"))
    return [f"On {t['models'][0]['n_prompts']} validation prompts, at 95% on task total or "
            "faithfulness: " + "; ".join(parts) + "."]


def massive_goal() -> list[str]:
    """The massive-activation goal: in the bias-compensated regime, up to 10x after rotation,
    AdaTSQ or adatsq_cb ties or beats every equal-size baseline at W4A4 and beats them at W3A3,
    on PSNR and faithfulness."""
    res = _load(ROOT / "runs" / "bench-ma" / "report.json")
    if res is None or "configs" not in res:
        return []
    out = ["**4. Massive activations (bias-compensated, up to 10x after rotation).** AdaTSQ "
           "(or `adatsq_cb`, beyond the paper) ties or beats every equal-size baseline at W4A4 "
           "and beats them at W3A3, on PSNR and faithfulness:", ""]
    for c in res["configs"]:
        ratio = res["outlier_ratio"][c["name"]].get("max_rotated")
        if c["variant"] != "bias" or ratio is None or ratio > 10:
            continue
        verdicts = [v for v in res["verdicts"] if v["name"] == c["name"]]
        parts = []
        for method in ("adatsq", "adatsq_cb"):
            if not any(v.get("method", "adatsq") == method for v in verdicts):
                parts.append(f"`{method}` not run")
                continue
            short = []
            for bits, ok in (("W4A4", ("beats", "ties")), ("W3A3", ("beats",))):
                for metric in ("psnr", "faithful"):
                    bad = [v["baseline"] for v in verdicts if v.get("method", "adatsq") == method
                           and v["bits"] == bits and v["metric"] == metric
                           and v["baseline"] not in EXTRA and v["verdict"] not in ok]
                    short += [f"{b} ({bits} {metric})" for b in bad]
            parts.append(f"`{method}` " + ("holds" if not short else "misses: " + ", ".join(
                short)))
        out.append(f"- bias {c['strength']:g} ({ratio:.1f}x after rotation): "
                   + "; ".join(parts) + ".")
    return out


def cost_section() -> list[str]:
    out = ["## Cost of AdaTSQ by phase", "",
           "From `make bench` (the `phases` of each AdaTSQ row, seconds on 2 cores; the FP "
           "generation of the calibration set is the unit of the last column).", "",
           "| model | row | capture | Fisher | FP velocity | step losses | selection FP | "
           "selection | total s | × FP generation |", "|---|---|---|---|---|---|---|---|---|---|"]
    found = False
    for model in MODELS:
        report = _load(BENCH / model / "report.json")
        timing = _load(BENCH / model / "timing.json") or {}
        unit = timing.get("fp_calibration_seconds")
        for row in (report or {}).get("rows", []):
            if row["method"] != "adatsq" or "phases" not in row:
                continue
            found = True
            p = row["phases"]
            cells = [f"{p.get(k, 0.0):.1f}" for k in ("capture", "fisher", "fp_velocity",
                                                     "step_losses", "selection_fp", "selection")]
            ratio = f"{row['seconds'] / unit:.1f}" if unit else "-"
            out.append(f"| {model} | {row['label']} | " + " | ".join(cells) +
                       f" | {row['seconds']:.1f} | {ratio} |")
    return out + [""] if found else []


def _results_section(name: str, title: str, command: str) -> tuple[dict | None, list[str]]:
    """The results file ``benchmarks/results/<name>.json`` (None if not run) and the section's
    title and command lines."""
    return (_load(ROOT / "benchmarks" / "results" / f"{name}.json"),
            [f"## {title}", "", f"Command: {command}", ""])


def memory_section() -> list[str]:
    res, out = _results_section(
        "memory", "Memory at Flux-Dev's width (paper Table 4)",
        "`python benchmarks/bench_memory.py` (a random-weight `FluxTransformer2DModel` of "
        "Flux-Dev's width, 3072 = 24 heads x 128, with a few blocks, in bfloat16; every phase in "
        "a process of its own; peak resident memory, `VmHWM`).")
    if res is None:
        return out + ["(not run)", ""]
    GB = 1e9
    cfg, bf16, over = res["config"], res["bf16_bytes"], res["overhead_bytes"]
    out += [f"Model: {cfg['num_layers']} double + {cfg['num_single_layers']} single blocks, "
            f"{res['params'] / 1e9:.2f} B parameters, {bf16 / GB:.2f} GB in bf16. Fixed "
            f"overhead (Python, torch, diffusers, the tiny encoders and VAE, sampling a tiny "
            f"transformer): {over / GB:.2f} GB.", "",
            "| phase | peak RSS GB | above overhead, × bf16 model | seconds |",
            "|---|---|---|---|"]
    names = {"fp_generate": "bf16 model: load + generate", "quantize": "quantize RTN W4A4 + save",
             "quantize_w3": "quantize RTN W3A3 + save",
             "quantize_adatsq": "quantize AdaTSQ W4A4 + save",
             "load_w4": "load W4 artifact", "generate_w4": "load W4 artifact + generate"}
    for key, label in names.items():
        if key in res["peak_rss_bytes"]:
            out.append(f"| {label} | {res['peak_rss_bytes'][key] / GB:.2f} | "
                       f"{res['peak_over_overhead_per_bf16'][key]:.3f} | "
                       f"{res['phases'][key]['seconds']:.0f} |")
    out += ["", "| artifact | bytes GB | bf16 / artifact |", "|---|---|---|"]
    for key, size in res["artifact_bytes"].items():
        out.append(f"| {key} | {size / GB:.3f} | {res['bf16_over_artifact'][key]:.2f}× |")
    dev = res["flux_dev"]
    goal = res["goal"]
    yes = {True: "met", False: "not met"}
    ratio = res["peak_over_overhead_per_bf16"]
    ratio_q = ratio["quantize"]
    w3 = res["bf16_over_artifact"]["W3"]
    out += ["", f"Goals: loading and generating with the W4 artifact below "
            f"{goal['load_and_generate_w4_below']}× the bf16 model above the overhead: "
            f"**{yes[goal['memory_met']]}**; the W3 artifact at least "
            f"{goal['w3_smaller_by_at_least']:g}× smaller: **{yes[goal['w3_met']]}** on this "
            f"model ({w3:.2f}×: the 16-bit rest, embedders and output modulation, is a larger "
            f"share of {cfg['num_layers'] + cfg['num_single_layers']} blocks than of Flux-Dev's "
            f"57), **{yes[goal['w3_met_flux_dev']]}** extrapolated to "
            "Flux-Dev (below).", "",
            f"Extrapolated to Flux-Dev ({dev['params'] / 1e9:.1f} B parameters, "
            f"{dev['bf16_bytes'] / GB:.1f} GB in bf16; blocks scale with their count, the rest "
            f"is fixed; this gives {dev['bf16_bytes_extrapolated'] / GB:.2f} GB for the bf16 "
            f"model, its real size): W4 artifact {dev['artifact_bytes']['W4'] / GB:.1f} GB "
            f"({dev['bf16_bytes'] / dev['artifact_bytes']['W4']:.2f}× smaller), W3 "
            f"{dev['artifact_bytes']['W3'] / GB:.1f} GB "
            f"({dev['bf16_bytes'] / dev['artifact_bytes']['W3']:.2f}× smaller); loading the W4 "
            "artifact needs (peaks scaled with the artifact) "
            f"{dev['load_w4_bytes_above_overhead'] / GB:.1f} GB and generating "
            f"{dev['generate_w4_bytes_above_overhead'] / GB:.1f} GB above the overhead (plus "
            "the real text encoders and VAE: T5-XXL alone is 9.5 GB in bf16).", "",
            "The transformer's memory per phase for the paper's other models, scaled from the "
            "measured multiples of the bf16 size (their published parameter counts; a rough "
            "guide, as the 16-bit rest is a different share of each; Flux-Dev above, quantizing "
            f"it needs about {ratio_q:.2f}× its 23.8 GB):", "",
            "| model | parameters | bf16 GB | quantize GB | load W4 GB | generate W4 GB |",
            "|---|---|---|---|---|---|"]
    for name, params in PAPER_MODELS.items():
        size = 2 * params
        out.append(f"| {name} | {params / 1e9:.1f} B | {size / GB:.1f} | "
                   f"{ratio['quantize'] * size / GB:.1f} | {ratio['load_w4'] * size / GB:.1f} | "
                   f"{ratio['generate_w4'] * size / GB:.1f} |")
    return out + [""]


PAPER_MODELS = {"Z-Image": 6.15e9, "Wan2.1-T2V-14B": 14.0e9}
"""Transformer parameters as published."""


def distributed_section() -> list[str]:
    res, out = _results_section(
        "distributed", "Calibration on two ranks",
        "`python benchmarks/bench_distributed.py` (the same `adatsq quantize flux-digits "
        "--method adatsq` as one process with 2 threads and under `torchrun --nproc-per-node 2`, "
        "gloo, 1 thread per rank, on the same 2 cores; both artifacts then sample the test "
        "prompts).")
    if res is None:
        return out + ["(not run)", ""]
    runs, d = res["runs"], res["digiteval_2_minus_1"]
    out += ["| | wall s | capture s | Fisher s | step losses s | selection s | mean bits | "
            "DigitEval | PSNR to FP dB |", "|---|---|---|---|---|---|---|---|---|"]
    for k, label in (("1", "1 process"), ("2", "2 ranks")):
        r, ph = runs[k], runs[k]["phases"]
        out.append(f"| {label} | {r['wall_seconds']:.1f} | {ph['capture']:.1f} | "
                   f"{ph['fisher']:.1f} | {ph['step_losses']:.1f} | {ph['selection']:.1f} | "
                   f"{r['mean_bits']:.3f} | {res['digiteval'][f'ranks{k}']:.3f} | "
                   f"{res['psnr_to_fp'][f'ranks{k}']:.2f} |")
    out += ["", f"Speedup of 2 ranks: {res['speedup']:.2f}× (wall time, process start to "
            "artifact; on this machine the two ranks share the 2 cores the single process "
            "uses with 2 threads, so the gain is what splitting the work saves over "
            f"multi-threaded kernels, not a second device). Fisher scores differ by "
            f"{res['fisher_max_rel_diff']:.1e} (largest, relative) and "
            f"{100 * res['codes_differ']:.3f}% of the weight codes differ: each rank sums its "
            "share of x xᵀ and the shares are added, another order of float32 additions than "
            "one product over all rows, and a GPTQ rounding decision that sat within that "
            "difference of its boundary flips; the search then compares candidates on those "
            "weights and may keep another path of the same budget. On the "
            f"{res['eval_prompts']} test prompts the DigitEval difference (2 ranks - 1 "
            f"process) is {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (paired, 95%).",
            ""]
    return out


def search_section() -> list[str]:
    res = _load(ROOT / "benchmarks" / "results" / "search.json")
    out = ["## Beam search against the exact optimum", "",
           "Command: `python benchmarks/bench_search.py` (random instances shaped like "
           f"flux-digits: T = {res['T'] if res else '?'} steps, candidates from Fisher-like "
           "scores).", ""]
    if res is None:
        return out + ["(not run)", ""]
    out += ["| M | budget | keep | beam ms | DP ms | mean gap to optimum | worst gap |",
            "|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        out.append(f"| {r['M']} | {r['budget']:g} | {r['keep']} | {r['beam_ms']:.2f} | "
                   f"{r['dp_ms']:.2f} | {100 * r['gap']:.2f}% | {100 * r['max_gap']:.2f}% |")
    out += ["", "The paper keeps the M paths of the frontier closest to the origin of the "
            "normalized (bits, loss) plane (`keep=\"origin\"`); that rule ignores the budget, and "
            "its gap to the optimum is the first row of each pair. `keep=\"lagrangian\"` prices "
            "bits with the budget's dual price, and is AdaTSQ's default here.", ""]
    return out


def combined_section() -> list[str]:
    from adatsq.bench import combine

    path = combine(BENCH, MODELS)
    if path is None:
        return []
    text = path.read_text().replace("# All models", "## All models (paper Tables 1-2, Fig. 2)")
    text = text.replace("](", "](runs/bench/").replace("## Does", "### Does")
    timings = [(m, _load(BENCH / m / "timing.json")) for m in MODELS]
    spent = [f"{m} {t['wall_seconds'] / 60:.1f} min" for m, t in timings if t]
    return [text, "", "Time of `make bench` per model: " + ", ".join(spent) + ".", ""]


def speed_rows(res: dict) -> list[str]:
    """The speed table (BENCHMARKS.md and the README)."""
    out = ["| method | bits | path | dtype | compiled | layer ms | call ms | × bf16 | × fp32 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        layer = f"{r['layer_ms']:.2f}" if "layer_ms" in r else "-"
        out.append(f"| {r['method']} | {r['bits']} | {r['path']} | {r['dtype']} | "
                   f"{'yes' if r['compiled'] else 'no'} | {layer} | {r['call_ms']:.1f} | "
                   f"{r['vs_bf16']:.2f} | {r['vs_fp32']:.2f} |")
    return out


def speed_goals(res: dict) -> list[str]:
    """Each goal of the speed issue, met or not, from the report's rows."""
    rows = res["rows"]

    def find(method, bits, path, dtype, compiled=False):
        for r in rows:
            if (r["method"], r["bits"], r["path"], r["dtype"], r["compiled"]) == \
                    (method, bits, path, dtype, compiled):
                return r
        return None

    yes = {True: "**met**", False: "**not met**"}
    out = []
    ada = [r for r in rows if r["method"] == "adatsq" and r["bits"] == "W4A4"
           and r["path"] == "integer"]
    if ada:
        best = max(ada, key=lambda r: r["vs_bf16"])
        fp32 = find("adatsq", "W4A4", "integer", "float32")
        how = best["dtype"] + (" compiled" if best["compiled"] else " eager")
        out.append(f"- AdaTSQ W4A4 call at least 1.3× faster than bf16: "
                   f"{yes[best['vs_bf16'] >= 1.3]} (best: {how}, "
                   f"{best['vs_bf16']:.2f}×); at least 2.5× faster than fp32: "
                   f"{yes[fp32 is not None and fp32['vs_fp32'] >= 2.5]} (float32 eager, "
                   f"{fp32['vs_fp32'] if fp32 else float('nan'):.2f}×; best "
                   f"{max(r['vs_fp32'] for r in ada):.2f}×).")
    pairs = []
    for dtype in ("float32", "bfloat16"):
        for compiled in (False, True):
            ours = find("rtn", "W8A8", "integer", dtype, compiled)
            peer = find("torchao_int8", "W8A8", "torchao", dtype, compiled)
            if ours and peer:
                pairs.append((dtype, compiled, peer["call_ms"] / ours["call_ms"]))
    if pairs:
        out.append("- RTN W8A8 at least as fast as torchao's int8 path: " + "; ".join(
            f"{d}{' compiled' if c else ' eager'} {yes[x >= 1.0]} ({x:.2f}× torchao's speed)"
            for d, c, x in pairs) + ".")
    ratios = []
    for r in rows:
        if r["path"] == "simulated":
            i = find(r["method"], r["bits"], "integer", r["dtype"])
            if i:
                ratios.append((f"{r['method']} {r['bits']} {r['dtype']}",
                               r["call_ms"] / i["call_ms"], r["layer_ms"] / i["layer_ms"]))
    if ratios:
        out.append(f"- integer at least 3× faster than simulated for every method: "
                   f"{yes[all(c >= 3 for _, c, _ in ratios)]} per call, "
                   f"{yes[all(lay >= 3 for _, _, lay in ratios)]} per layer (" + "; ".join(
                       f"{n}: call {c:.1f}×, layer {lay:.1f}×" for n, c, lay in ratios) + ").")
    gen = {(r["method"], r["path"]): r for r in res.get("generation", [])}
    if ("adatsq", "integer") in gen:
        r = gen[("adatsq", "integer")]
        out.append(f"- flux-digits generation with the AdaTSQ W4A4 artifact no slower than full "
                   f"precision: {yes[r['vs_fp32'] >= 1.0]} ({r['vs_fp32']:.2f}× FP's speed).")
    return out


def speed_section() -> list[str]:
    res = _load(ROOT / "runs" / "speed" / "report.json")
    out = ["## Speed: integer execution at Flux-Dev's width", "",
           "Command: `make bench-speed` (`python benchmarks/bench_speed.py`; writes "
           "runs/speed/report.json). A random-weight `FluxTransformer2DModel` of Flux-Dev's width "
           "with each method's layer structure (see the script's docstring); one layer and one "
           "transformer call, median of the repeats, all rows measured in one run on an idle "
           "machine with 2 threads; × bf16 and × fp32 are speed ratios against the unquantized "
           "eager model of that dtype (above 1: faster).", ""]
    if res is None:
        return out + ["(not run)", ""]
    st = res["settings"]
    out += [f"Model: {st['double']} double + {st['single']} single blocks, {st['tokens']} image "
            f"+ {st['text_tokens']} text tokens; layer: `{st['layer']}` (3072 → 3072) on the "
            f"image tokens; {st['repeats']} repeats.", ""]
    out += speed_rows(res) + ["", "Goals:", ""] + speed_goals(res) + [""]
    out += ["Where the integer layer's time goes (a rotated 4-bit 3072 → 3072 layer, float32 "
            "input, each operation timed alone, ms; the last columns: the whole layer with the "
            "weight codes unpacked per call, the default, and with the int8 operand cached):", "",
            "| tokens | rotation | activation codes | unpack weights | int8 GEMM | rescale | "
            "bf16 GEMM | layer (packed) | layer (cached) | unpack share | rotation / GEMM | "
            "rotation / GEMM at 12288 → 3072 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in res["breakdown"]:
        o = b["ops_ms"]
        out.append(f"| {b['tokens']} | {o['rotation']:.2f} | {o['activation_codes']:.2f} | "
                   f"{o['unpack_weights']:.2f} | {o['int8_gemm']:.2f} | {o['rescale']:.2f} | "
                   f"{o['bf16_gemm']:.2f} | {b['layer_uncached_ms']:.2f} | "
                   f"{b['layer_cached_ms']:.2f} | {b['unpack_share']:.0%} | "
                   f"{b['rotation_vs_gemm']:.0%} | {b['rotation_vs_gemm_12288']:.0%} |")
    gen = res.get("generation", [])
    if gen:
        out += ["", "flux-digits (width 128), 8 prompts, the real artifact of each method "
                "(`quantize_`), generation wall time; PSNR against FP and between the two paths "
                "(float32):", "",
                "| method | bits | path | generate ms | × fp32 | PSNR vs FP | PSNR integer vs "
                "simulated |", "|---|---|---|---|---|---|---|"]
        for r in gen:
            fp_psnr = f"{r['psnr_vs_fp']:.1f}" if "psnr_vs_fp" in r else "-"
            pair = f"{r['psnr_integer_vs_simulated']:.1f}" \
                if "psnr_integer_vs_simulated" in r else "-"
            out.append(f"| {r['method']} | {r['bits']} | {r['path']} | {r['generate_ms']:.0f} | "
                       f"{r.get('vs_fp32', 1.0):.2f} | {fp_psnr} | {pair} |")
    return out + ["", _environment(res["environment"]), ""]


def _environment(env: dict) -> str:
    return f"Environment: torch {env['torch']}, {env['threads']} threads, commit {env['commit']}."


def search_execution_section() -> list[str]:
    res = _load(ROOT / "runs" / "speed" / "search.json")
    out = ["## AdaTSQ's search on the integer path", "",
           "Command: `python benchmarks/bench_search_execution.py` (writes "
           "runs/speed/search.json). AdaTSQ with the default recipe on flux-digits, its search "
           "(step losses and end-to-end selection) sampling on the simulated reference "
           "(`search_execution=\"simulated\"`) or on the integer path (the default); seconds on "
           "2 threads, one run per row, and as a multiple of one FP generation of the "
           "calibration set measured in the same run. The quantized models then generate test "
           "prompts (integer execution): PSNR against FP, and the paired difference integer "
           "search − simulated search.", ""]
    if res is None:
        return out + ["(not run)", ""]
    out += ["| bits | search on | total s | × FP generation | Fisher | step losses | selection "
            "| search speed-up | steps whose bits differ | PSNR vs FP | Δ PSNR [95%] |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        ph, d = r["phases"], r.get("psnr_diff")
        diff = f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]" if d else "-"
        speed = f"{r['speedup']:.2f}×" if "speedup" in r else "-"
        out.append(f"| {r['bits']} | {r['search_execution']} | {r['seconds']:.1f} | "
                   f"{r['x_fp_generation']:.1f} | {ph['fisher']:.1f} | {ph['step_losses']:.1f} | "
                   f"{ph['selection']:.1f} | {speed} | {r.get('steps_changed', '-')} | "
                   f"{r['psnr']:.2f} | {diff} |")
    return out + ["", f"{res['test_prompts']} test prompts; one FP generation of the "
                  f"calibration set: {res['fp_calibration_seconds']:.2f} s. "
                  + _environment(res["environment"]), ""]


def cli_section() -> list[str]:
    res = _load(ROOT / "runs" / "cli" / "report.json")
    out = ["## Command line start-up", "",
           "Command: `python benchmarks/bench_cli.py` (writes runs/cli/report.json): wall time "
           "of `adatsq --help` and `adatsq methods` in a fresh process, median of the repeats, "
           "beside `python -c pass` and `python -c 'import torch'` measured in the same run.", ""]
    if res is None:
        return out + ["(not run)", ""]
    out += ["| command | median s |", "|---|---|"]
    out += [f"| `{r['command']}` | {r['seconds']:.2f} |" for r in res["rows"]]
    return out + ["", f"Goal: `adatsq --help` under {res['goal_seconds']:g} s: "
                  f"{'met' if res['help_seconds'] < res['goal_seconds'] else 'not met'}.", ""]


def readme_speed_block() -> None:
    """Replaces the README's speed table (between its markers) with the report's."""
    res = _load(ROOT / "runs" / "speed" / "report.json")
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- speed table (benchmarks/write_benchmarks.py) -->", "<!-- /speed table -->"
    if res is None or start not in text:
        return
    rows = [r for r in res["rows"] if not (r["path"] == "simulated" and r["dtype"] == "bfloat16")]
    table = speed_rows({"rows": rows})
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(head + start + "\n" + "\n".join(table) + "\n" + end + tail)


def main() -> int:
    lines = ["# Benchmarks", "",
             "Every number below is produced by a script in `benchmarks/` and rendered by "
             "`python benchmarks/write_benchmarks.py`; each section names its command. Machine: "
             f"{platform.machine()}, 2 CPU cores, torch {torch.__version__}.", ""]
    sections = [claims_section(), ties_section(), combined_section()]
    for model in ("flux-digits", "zimage-digits", "wan-digits"):
        sections.append(training_section(model))
    sections.append(classifier_section(BENCH / "flux-digits"))
    for model in MODELS:
        sections += [table_section(model), outlier_section(BENCH / model)]
    sections += [massive_section(), demo_section(), sweeps_section(), rotation_section(),
                 step_damage_section(), selection_section(), cost_section(),
                 search_execution_section(), speed_section(), cli_section(),
                 memory_section(),
                 distributed_section(),
                 gptq_section(),
                 search_section()]
    for section in sections:
        lines += section
    notes = ROOT / "benchmarks" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines).rstrip() + "\n")
    readme_speed_block()
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
