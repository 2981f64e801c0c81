"""Figures (PNG): sample grids, Fisher heatmaps, activation violins, Pareto frontiers, bit maps."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from adatsq.files import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return Path(path)


def to_display(image) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) in [0, 1]."""
    x = np.asarray(image, dtype=np.float32)
    return np.clip((x.transpose(1, 2, 0) + 1) / 2, 0, 1)


def frame_strips(samples: np.ndarray, gap: int = 1) -> np.ndarray:
    """Clips (K, C, F, H, W) as images (K, C, H, F*(W+gap)-gap) of their frames side by side
    (separated by ``gap`` columns of -1, black); images (K, C, H, W) pass unchanged."""
    if samples.ndim == 4:
        return samples
    k, c, f, h, w = samples.shape
    out = np.full((k, c, h, f * (w + gap) - gap), -1.0, samples.dtype)
    for i in range(f):
        out[..., i * (w + gap):i * (w + gap) + w] = samples[:, :, i]
    return out


def sample_grid(rows: dict[str, np.ndarray], prompts: list[str], path: str | Path,
                title: str = "") -> Path:
    """Rows = methods (label -> images (K, 3, H, W)), columns = prompts."""
    k = len(prompts)
    first = next(iter(rows.values()))
    aspect = first.shape[-1] / first.shape[-2]  # > 1 for frame strips
    side = 1.15 if aspect == 1 else 0.8
    # constrained layout keeps the title right above the grid (no blank band on tall sheets)
    fig, axes = plt.subplots(len(rows), k, squeeze=False, layout="constrained",
                             figsize=(side * aspect * k + 1.2, (side + 0.1) * len(rows) + 0.6))
    for r, (label, images) in enumerate(rows.items()):
        for c in range(k):
            ax = axes[r, c]
            ax.imshow(to_display(images[c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(prompts[c], int(16 * aspect)), fontsize=6.5)
            if c == 0:
                ax.set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _short(name: str) -> str:
    return (name.replace("single_transformer_blocks.", "S").replace("transformer_blocks.", "D")
            .replace(".attn.", ".").replace(".net.", "."))


def fisher_heatmap(layers: list[str], scores: np.ndarray, sigmas: np.ndarray,
                   path: str | Path, title: str = "Fisher sensitivity (Eq. 1)") -> Path:
    """Layers x timesteps heatmap of log10 Fisher normalized per layer (paper Fig. 4a)."""
    norm = scores / np.maximum(scores.mean(axis=1, keepdims=True), 1e-30)
    fig, ax = plt.subplots(figsize=(8, 0.16 * len(layers) + 1.5))
    im = ax.imshow(np.log10(np.maximum(norm, 1e-6)), aspect="auto", cmap="magma")
    ax.set_yticks(range(len(layers)), [_short(n) for n in layers], fontsize=5.5)
    ticks = np.linspace(0, len(sigmas) - 1, min(len(sigmas), 11)).astype(int)
    ax.set_xticks(ticks, [f"{i}\nσ={sigmas[i]:.2f}" for i in ticks], fontsize=6)
    ax.set_xlabel("sampling step (noise level)")
    fig.colorbar(im, ax=ax, label="log10 (Fisher / layer mean)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def activation_violins(samples: np.ndarray, sigmas: np.ndarray, path: str | Path,
                       title: str, max_steps: int = 10) -> Path:
    """Distribution of one layer's input values per timestep (paper Fig. 4b); samples (T, S)."""
    T = samples.shape[0]
    steps = np.unique(np.linspace(0, T - 1, min(T, max_steps)).astype(int))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.violinplot([samples[t] for t in steps], showextrema=True, widths=0.8)
    ax.set_xticks(range(1, len(steps) + 1), [f"{t}\nσ={sigmas[t]:.2f}" for t in steps],
                  fontsize=7)
    ax.set_ylabel("activation value")
    ax.set_xlabel("sampling step")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def bit_map(layers: list[str], bits: np.ndarray, path: str | Path, title: str) -> Path:
    """Activation bits per layer x timestep of a policy."""
    values = sorted(set(np.unique(bits).tolist()))
    colors = plt.get_cmap("viridis", len(values))
    index = np.searchsorted(values, bits)
    fig, ax = plt.subplots(figsize=(8, 0.16 * len(layers) + 1.5))
    im = ax.imshow(index, aspect="auto", cmap=colors, vmin=-0.5, vmax=len(values) - 0.5)
    ax.set_yticks(range(len(layers)), [_short(n) for n in layers], fontsize=5.5)
    ax.set_xlabel("sampling step")
    bar = fig.colorbar(im, ax=ax, ticks=range(len(values)))
    bar.ax.set_yticklabels([f"{v} bits" for v in values])
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def pareto_plot(search: dict, path: str | Path, title: str) -> Path:
    """The final beam (mean bits vs total step MSE), the paths tried end to end (the feasible
    survivors after spending what they left of the budget), the budget and the chosen path."""
    s = search["survivors"]
    bits, loss = np.array(s["mean_bits"]), np.array(s["total_loss"])
    feasible = np.array(s["feasible"], dtype=bool)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(bits[~feasible], loss[~feasible], c="0.6", s=18, label="over budget")
    ax.scatter(bits[feasible], loss[feasible], c="tab:blue", s=18, label="feasible survivors")
    tried_bits = np.array(search["tried"]["mean_bits"])
    tried_loss = np.array(search["tried"]["total_loss"])
    ax.scatter(tried_bits, tried_loss, facecolors="none", edgecolors="tab:orange", s=70,
               label="tried end to end (budget filled)")
    best = search["chosen"]
    ax.scatter([tried_bits[best]], [tried_loss[best]], marker="*", c="tab:red", s=200,
               label="chosen")
    ax.axvline(search["budget"], color="k", ls="--", lw=1, label=f"budget {search['budget']:g}")
    ax.set_xlabel("mean activation bits of the path")
    ax.set_ylabel("cumulative step MSE (Eq. 4)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def error_over_timesteps(curves: dict[str, np.ndarray], sigmas: np.ndarray, path: str | Path,
                         title: str, fisher: np.ndarray | None = None) -> Path:
    """One layer's reconstruction error per timestep under several calibrations (paper Fig. 5)."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, y in curves.items():
        ax.plot(range(len(y)), y, marker=".", label=label)
    ax.set_xlabel("sampling step")
    ax.set_ylabel("||W X_t - Q X_t||² / rows")
    ax.set_yscale("log")
    if fisher is not None:
        twin = ax.twinx()
        twin.fill_between(range(len(fisher)), fisher / fisher.max(), color="tab:pink", alpha=0.15)
        twin.set_ylabel("normalized Fisher", color="tab:pink")
        twin.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def outlier_plot(ratio: dict[str, list[float]], path: str | Path, title: str) -> Path:
    """Channel max / median channel max per layer (rows) and timestep (columns)."""
    layers = list(ratio)
    m = np.array([ratio[n] for n in layers])
    fig, ax = plt.subplots(figsize=(8, 0.16 * len(layers) + 1.5))
    im = ax.imshow(np.log10(m), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(layers)), [_short(n) for n in layers], fontsize=5.5)
    ax.set_xlabel("sampling step")
    fig.colorbar(im, ax=ax, label="log10 (channel max / median channel max)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def radar_chart(axes_labels: list[str], series: dict[str, list[float]], path: str | Path,
                title: str = "") -> Path:
    """One polygon per series over shared axes (the paper's Fig. 2); values in [0, 1]-ish,
    the radial axis starting just below the smallest."""
    n = len(axes_labels)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    closed = np.append(angles, angles[0])
    fig, ax = plt.subplots(figsize=(7.5, 7.5), subplot_kw={"polar": True})
    cmap = plt.get_cmap("tab10")
    for i, (label, values) in enumerate(series.items()):
        vals = np.append(np.asarray(values, float), values[0])
        bold = label.startswith("adatsq")
        ax.plot(closed, vals, color=cmap(i % 10), lw=2.6 if bold else 1.2, label=label)
        ax.fill(closed, vals, color=cmap(i % 10), alpha=0.12 if bold else 0.03)
    ax.set_xticks(angles, [textwrap.fill(a, 18) for a in axes_labels], fontsize=7.5)
    low = min(min(v) for v in series.values())
    ax.set_ylim(max(0.0, round(low - 0.05, 1)), 1.05)  # the differences live near 1
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper right", bbox_to_anchor=(1.32, 1.1), fontsize=8)
    if title:
        ax.set_title(title, fontsize=10, pad=22)
    return _save(fig, path)


def efficiency_plot(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Task total and PSNR (rows) against weight bytes and bit-operations (columns), one point
    per report row at W4A4, W3A3, W8A8 or FP: a method that buys quality with 16-bit parameters
    sits to the right."""
    from matplotlib.ticker import FuncFormatter

    markers = {"W4A4": "o", "W3A3": "s", "W8A8": "^", "W16A16": "*"}
    rows = [r for r in rows if r["bits"] in markers]  # weight-only / activation-only rows apart
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cmap = plt.get_cmap("tab20")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    panels = [("total", lambda r: r["eval"]["total"]), ("PSNR (dB)", lambda r: r["psnr"])]
    sizes = [("weights as stored (MB)", lambda r: r["model_bytes"] / 1e6),
             ("bit-operations per sample and step (G)", lambda r: r["bops"] / 1e9)]
    for i, (ylabel, y) in enumerate(panels):
        for j, (xlabel, x) in enumerate(sizes):
            ax = axes[i, j]
            for r in rows:
                if y(r) is None or r.get("bops") is None:
                    continue
                color = cmap(methods.index(r["method"]) % 20)
                ax.scatter(x(r), y(r), color=color, marker=markers.get(r["bits"], "D"),
                           s=70 if r["method"] == "adatsq" else 36, edgecolor="black",
                           linewidth=0.4, zorder=3)
                ax.annotate(f"{r['method']} {r['bits']}", (x(r), y(r)), fontsize=5.5,
                            xytext=(3, 2), textcoords="offset points")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            ax.tick_params(axis="x", which="minor", labelsize=6)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=cmap(k % 20), marker="o", ls="", label=m)
               for k, m in enumerate(methods)]
    handles += [plt.Line2D([], [], color="gray", marker=mk, ls="", label=b)
                for b, mk in markers.items()]
    fig.legend(handles=handles, loc="center right", fontsize=7, bbox_to_anchor=(1.08, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def strength_plot(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Task total, PSNR and (where measured) faithfulness (rows) against the massive-activation
    strength, one line per method, one column per bit width; the original model (strength None)
    is drawn at 1."""
    bit_widths = list(dict.fromkeys(r["bits"] for r in rows if r["method"] != "fp"))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "fp"))
    strengths = sorted({r["strength"] or 1 for r in rows})
    cmap = plt.get_cmap("tab10")
    panels = [("task total", "total"), ("PSNR (dB)", "psnr")]
    if any(r.get("faithful") is not None for r in rows):
        panels.append(("faithful to FP", "faithful"))
    fig, axes = plt.subplots(len(panels), len(bit_widths),
                             figsize=(5.5 * len(bit_widths), 3.75 * len(panels)), squeeze=False)
    for j, bits in enumerate(bit_widths):
        for i, (ylabel, key) in enumerate(panels):
            ax = axes[i, j]
            if key == "total":
                fp = sorted((r["strength"] or 1, r["eval"]["total"]) for r in rows
                            if r["method"] == "fp")
                ax.plot(*zip(*fp), color="black", ls="--", lw=1, label="fp")
            for k, m in enumerate(methods):
                pts = sorted((r["strength"] or 1, r["eval"]["total"] if key == "total"
                              else r[key]) for r in rows
                             if r["method"] == m and r["bits"] == bits)
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=cmap(k % 10),
                            lw=2.4 if m == "adatsq" else 1.2, label=m)
            ax.set_xscale("log")
            ax.set_xticks(strengths, ["none" if s == 1 else f"{s:g}" for s in strengths])
            ax.minorticks_off()
            ax.set_xlabel("massive-activation strength")
            ax.set_ylabel(ylabel)
            ax.set_title(bits, fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def calibration_error_plot(fig5: dict, sigmas: np.ndarray, path: str | Path) -> Path:
    """The paper's Fig. 5: one layer's output error per step (on held-out Hessians), GPTQ
    calibrated uniformly against Fisher-guided."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    steps = np.arange(len(sigmas))
    ax.plot(steps, fig5["uniform"], marker="o", ms=3, label="uniform calibration")
    ax.plot(steps, fig5["fisher"], marker="s", ms=3, label="Fisher-guided (Eq. 6, tau 1)")
    ax.set_yscale("log")
    ax.set_xlabel("sampling step (sigma 1 -> 0)")
    ax.set_ylabel("reconstruction error tr(E H_t E^T)")
    ax.set_title(f"{fig5['layer']}: per-step error of the calibrated weights", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def transfer_plot(bound: dict, sigmas: np.ndarray, path: str | Path) -> Path:
    """Per step: the most any reweighting could gain (step-only fit against uniform, held out)
    and the sampling noise of the Hessians (uniform fit on the other half against in-sample)."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    steps = np.arange(len(sigmas))
    ax.plot(steps, 100 * np.asarray(bound["gain"]), marker="o", ms=3,
            label="gain bound: all weight on step t (held out)")
    ax.plot(steps, 100 * np.asarray(bound["gap"]), marker="s", ms=3,
            label="Hessian sampling gap: other half vs in-sample")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("sampling step (sigma 1 -> 0)")
    ax.set_ylabel("% of the uniform fit's error")
    ax.set_title("What per-step reweighting can win, summed over layers", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def rotation_error_plot(report: dict, path: str | Path) -> Path:
    """Per-layer relative activation quantization error without rotation, with ``H`` and with
    ``DH``, one panel per (model, bits); layers sorted by the unrotated error."""
    models, bits = list(report["models"]), report["bits"]
    fig, axes = plt.subplots(len(bits), len(models), figsize=(3.6 * len(models), 3.0 * len(bits)),
                             squeeze=False)
    for j, model in enumerate(models):
        layers = report["models"][model]["layers"]
        for i, b in enumerate(bits):
            ax = axes[i, j]
            order = sorted(layers, key=lambda n: layers[n][f"none@{b}"])
            for rotation, style in (("none", "k-"), ("H", "C0-"), ("DH", "C3-")):
                ax.plot([layers[n][f"{rotation}@{b}"] for n in order], style, lw=1.2,
                        label=rotation)
            ax.set_yscale("log")
            ax.set_title(f"{model}, {b}-bit per token", fontsize=9)
            ax.set_xlabel("layer (sorted by unrotated error)", fontsize=8)
            if j == 0:
                ax.set_ylabel("||Q(xR)Rᵀ - x||² / ||x||²", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def step_damage_plot(report: dict, path: str | Path) -> Path:
    """The measured damage of quantizing one step at a time and the step losses that should rank
    the steps alike, each divided by its maximum, against the step index."""
    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    damage = np.asarray(report["damage"])
    ax.plot(damage / damage.max(), "k-", lw=2.0, label="damage (final-sample MSE)")
    for i, (name, values) in enumerate(report["losses"].items()):
        v = np.asarray(values)
        ax.plot(v / v.max(), color=f"C{i}", lw=1.2,
                label=f"{name} (Spearman {report['spearman'][name]:+.2f})")
    ax.set_xlabel("sampling step (0 = pure noise)")
    ax.set_ylabel("relative to its maximum")
    ax.set_title(f"{report['model']} {report['bits']}: step loss vs damage of one step",
                 fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def selection_plot(report: dict, path: str | Path) -> Path:
    """Every path the end-to-end selection tried: its score on the selection prompts against its
    score on the test prompts (PSNR, and the task total), the chosen path circled."""
    rows, chosen = report["rows"], report["chosen"]
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4))
    for ax, (sel, test, name) in zip(axes, (("selection_psnr", "test_psnr", "PSNR dB"),
                                            ("selection_task", "test_total", "task total"))):
        x, y = [r[sel] for r in rows], [r[test] for r in rows]
        ax.scatter(x, y, c=[f"C{i}" for i in range(len(rows))], s=30, zorder=2)
        for i, (xi, yi) in enumerate(zip(x, y)):
            ax.annotate(str(i), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.scatter([x[chosen]], [y[chosen]], s=160, facecolors="none", edgecolors="k",
                   label="chosen", zorder=3)
        ax.set_xlabel(f"selection prompts: {name}", fontsize=8)
        ax.set_ylabel(f"test prompts: {name}", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']} {report['bits']}: {len(rows)} paths tried by the selection",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
