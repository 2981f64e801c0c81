"""AdaTSQ: Pareto-aware timestep-dynamic activation bits and Fisher-guided temporal calibration.

Source: the AdaTSQ paper (Sec. 3). The flow, one step each:

1. *capture* (shared driver): per-step Hessians ``X_t X_tᵀ`` and the FP trajectory ``z_t`` of the
   calibration prompts;
2. *Fisher* (Eq. 1, :mod:`adatsq.calib.fisher`): ``I_{t,l}`` on the FP model's own generations;
3. *weights* (Eqs. 6-8): inputs Hadamard-rotated online, weights ``W H_had`` solved by GPTQ on
   ``H' = sum_t alpha_{t,l} H_t`` with ``alpha`` the temperature softmax of the Fisher over steps
   (``calib="fisher"``), on the uniform average (``"uniform"``, plain GPTQ) or rounded to nearest
   (``"none"``, MinMax);
4. *candidates* (Sec. 3.2.2, :mod:`adatsq.search.candidates`): per step, ``M`` per-layer bit
   configurations from that step's Fisher, each with its step MSE (Eq. 2) between the FP and the
   quantized model's outputs at ``z_t``;
5. *beam search* (Eqs. 3-5, :mod:`adatsq.search.pareto`) under ``B_target = bits + extra_bits``;
6. *selection* (Sec. 3.2.4): the surviving feasible paths generate a small batch of selection
   prompts (disjoint from evaluation); the best by the task metric (DigitEval for the embedded
   models), then fidelity to the FP images, wins. A user's own metric can be passed to
   :func:`adatsq.pipeline.quantize_`.

``pareto=False`` keeps the nominal bit width everywhere: with ``calib="none"`` that is the "MinMax,
naive rotation" baseline of the paper's Table 3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm import tqdm

from adatsq.calib.fisher import FisherResult, fisher_information, temporal_weights
from adatsq.config import MethodOptions
from adatsq.eval.fidelity import psnr
from adatsq.methods.base import GPTQOptions, Method, register, rotated_layer
from adatsq.quant.primitives import FULL_PRECISION
from adatsq.search.candidates import CandidateConfig, generate_candidates
from adatsq.search.pareto import beam_search

log = logging.getLogger(__name__)

CALIBRATIONS = ("fisher", "uniform", "none")


@dataclass(frozen=True)
class AdaTSQOptions(MethodOptions):
    """Options of AdaTSQ (defaults justified in BENCHMARKS.md).

    Attributes:
        pareto: timestep-dynamic activation bits by the Pareto beam search (else uniform bits).
        calib: weight calibration, ``"fisher"``, ``"uniform"`` or ``"none"`` (round to nearest).
        tau: softmax temperature of Eq. 6 on per-layer mean-normalized Fisher scores.
        extra_bits: ``B_target - bits`` (the paper's W3A3.1 has 0.1).
        bit_choices: per-layer activation widths the candidates use.
        num_candidates: ``M`` candidates per step (also the beam width).
        num_clusters: sensitivity groups per step.
        keep: frontier truncation rule, ``"origin"`` (the paper's) or ``"lagrangian"``.
        fisher_prompts: calibration prompts of the Fisher estimate.
        select_prompts: prompts generated per surviving path in the final selection.
        select_paths: most surviving paths tried (least-loss first).
        random_signs: randomized Hadamard rotation (seeded random signs, as QuaRot); False: the
            plain Sylvester/Paley matrix.
        block_size, damp, act_order: GPTQ settings.
    """

    pareto: bool = True
    calib: str = "fisher"
    tau: float = 1.0
    extra_bits: float = 0.1
    bit_choices: tuple[int, ...] = (3, 4, 8)
    num_candidates: int = 8
    num_clusters: int = 8
    keep: str = "lagrangian"
    fisher_prompts: int = 16
    select_prompts: int = 24
    select_paths: int = 8
    random_signs: bool = True
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = False

    def __post_init__(self):
        object.__setattr__(self, "bit_choices", tuple(self.bit_choices))
        if self.calib not in CALIBRATIONS:
            raise ValueError(f"calib must be one of {', '.join(CALIBRATIONS)}, got {self.calib!r}")
        if self.keep not in ("origin", "lagrangian"):
            raise ValueError(f"keep must be 'origin' or 'lagrangian', got {self.keep!r}")
        if not self.tau > 0 or self.extra_bits < 0:
            raise ValueError("tau must be positive and extra_bits non-negative")
        for n in ("num_candidates", "fisher_prompts", "select_prompts", "select_paths"):
            if getattr(self, n) <= 0:
                raise ValueError(f"{n} must be positive")

    @property
    def gptq(self) -> GPTQOptions:
        return GPTQOptions(self.block_size, self.damp, self.act_order)


def _set_bits(layers: dict, bits) -> None:
    """Gives every layer its activation width (ints, or per-step tuples)."""
    for (_, layer), b in zip(layers.items(), bits):
        b = int(b) if np.isscalar(b) else tuple(int(x) for x in b)
        layer.activation = replace(layer.activation, bits=b)


def _path_bits(candidates, path) -> np.ndarray:
    """Activation bits (L, T) of a path (candidate index per step; padded indices clamp)."""
    return np.stack([c.bits[min(k, len(c.bits) - 1)] for c, k in zip(candidates, path)], axis=1)


@register
class AdaTSQ(Method):
    name = "adatsq"
    source = "AdaTSQ (Sec. 3): Fisher, Pareto beam search over timestep bits, Fisher-guided GPTQ"
    options_class = AdaTSQOptions
    capture = "per_step"
    metric = None  # a user's ``metric(images, prompts) -> float`` for the final selection

    def __init__(self, recipe):
        super().__init__(recipe)
        # 16-bit activations (a weight-only row) leave no activation bits to search
        self.search = self.options.pareto and recipe.activations.bits != FULL_PRECISION
        budget = recipe.activations.bits + self.options.extra_bits
        lowest = min(self.options.bit_choices)
        if self.search and budget < lowest:
            raise ValueError(f"infeasible bit target: A{recipe.activations.bits} plus "
                             f"{self.options.extra_bits:g} is below the smallest bit choice "
                             f"{lowest}; raise --a-bits or add a lower width to bit_choices")

    def granularity(self):
        g = super().granularity()
        g["activations"] = f"{g['activations']}, Hadamard-rotated" + (
            ", timestep-dynamic bits" if self.search else "")
        return g

    # -- 2/3: Fisher and weights -------------------------------------------------------------
    def prepare(self, pipeline, stats):
        o = self.options
        model, adapter = pipeline.transformer, pipeline.adapter
        self.fisher: FisherResult | None = None
        seed = self.recipe.calibration.seed
        if self.search or o.calib == "fisher":
            key = ("fisher", o.fisher_prompts, seed, stats.steps)  # shared on the same stats
            if key not in stats.derived:
                prompts = pipeline.calibration_prompts(o.fisher_prompts, seed)
                stats.derived[key] = fisher_information(pipeline, prompts, steps=stats.steps,
                                                        seed=seed, sigmas=stats.sigmas)
            self.fisher = stats.derived[key]
            if self.fisher.layers != list(adapter.quantizable_layers(model)):
                raise ValueError("the Fisher scores were computed for other layers than this "
                                 "model's; compute them on the model being quantized")
        self.alpha = None
        if o.calib == "fisher":
            self.alpha = dict(zip(self.fisher.layers, temporal_weights(self.fisher.scores, o.tau)))
        # FP outputs along the calibration trajectory, for the step losses of Eq. 2
        self.fp_out = None
        if self.search:
            if "fp_out" not in stats.derived:
                with torch.no_grad():
                    B = stats.latents.shape[1]
                    stats.derived["fp_out"] = torch.stack([
                        adapter.denoise(model, stats.latents[t], stats.cond,
                                        torch.full((B,), float(stats.sigmas[t])))
                        for t in range(stats.steps)])  # (T, B, N, C)
            self.fp_out = stats.derived["fp_out"]
            self.selection = self._selection_set(pipeline)
            key = ("selection_fp", tuple(self.selection[0]), seed + 1)
            if key not in stats.derived:
                stats.derived[key] = pipeline.generate(self.selection[0], steps=stats.steps,
                                                       seed=seed + 1)
            self.selection_fp = stats.derived[key]

    def quantize_layer(self, name, linear, stats, tracker):
        o = self.options
        if o.calib == "none":
            return rotated_layer(self, name, linear, None, tracker, None)
        alpha = self.alpha
        weights = None if alpha is None else torch.tensor(alpha[name], dtype=torch.float32)
        return rotated_layer(self, name, linear, stats.hessian_sum(name, weights), tracker,
                             o.gptq)

    # -- 4/5/6: candidates, search, selection --------------------------------------------------
    def finalize(self, pipeline, stats, tracker, layers):
        o = self.options
        settings = {"options": dict(vars(o))}
        if self.fisher is not None:
            settings["fisher"] = self.fisher.to_dict()
        if self.alpha is not None:
            settings["alpha"] = {n: a.tolist() for n, a in self.alpha.items()}
        if not self.search:
            return settings
        fisher = self.fisher.scores  # (L, T), layers in the same order as ``layers``
        budget = self.recipe.activations.bits + o.extra_bits
        config = CandidateConfig(bit_choices=o.bit_choices, num_candidates=o.num_candidates,
                                 num_clusters=o.num_clusters)
        candidates = [generate_candidates(fisher[:, t], config) for t in range(stats.steps)]
        losses = self._step_losses(pipeline, stats, layers, candidates)
        M = max(len(c.avg_bits) for c in candidates)
        avg_bits = np.stack([np.pad(c.avg_bits, (0, M - len(c.avg_bits)), mode="edge")
                             for c in candidates])  # (T, M)
        loss_tm = np.stack([np.pad(x, (0, M - len(x)), mode="edge") for x in losses])  # (T, M)
        result = beam_search(avg_bits, loss_tm, beam_width=o.num_candidates, budget=budget,
                             keep=o.keep)
        feasible = np.flatnonzero(result.feasible)
        order = feasible[np.argsort(result.total_loss[feasible])][: o.select_paths]
        scores = self._select(pipeline, stats, layers, candidates, result.paths[order])
        best = int(order[max(range(len(order)), key=lambda i: scores[i])])
        path = result.paths[best]
        _set_bits(layers, _path_bits(candidates, path))
        settings["search"] = {
            "budget": budget, "keep": o.keep, "mean_bits": float(result.mean_bits[best]),
            "total_loss": float(result.total_loss[best]), "truncated": result.truncated,
            "candidate_bits": avg_bits.tolist(), "candidate_losses": loss_tm.tolist(),
            "survivors": {"mean_bits": result.mean_bits.tolist(),
                          "total_loss": result.total_loss.tolist(),
                          "feasible": result.feasible.tolist()},
            "tried": order.tolist(), "selection_scores": [list(s) for s in scores],
            "chosen": best, "path": path.tolist()}
        return settings

    @torch.no_grad()
    def _step_losses(self, pipeline, stats, layers, candidates) -> list[np.ndarray]:
        """Eq. 2 for every candidate of every step: MSE of the quantized vs FP output at ``z_t``."""
        adapter, model = pipeline.adapter, pipeline.transformer
        out = []
        for t in tqdm(range(stats.steps), desc="step losses", leave=False):
            sigma = torch.full((stats.latents.shape[1],), float(stats.sigmas[t]))
            row = []
            for bits in candidates[t].bits:
                _set_bits(layers, bits)
                v = adapter.denoise(model, stats.latents[t], stats.cond, sigma)
                row.append(float((v - self.fp_out[t]).square().mean()))
            out.append(np.array(row))
        return out

    def _selection_set(self, pipeline):
        """Selection prompts and their task metric (None: fidelity only)."""
        n, seed = self.options.select_prompts, self.recipe.calibration.seed + 1
        if hasattr(pipeline, "selection_set"):
            prompts, task = pipeline.selection_set(n, seed)
        else:
            prompts, task = pipeline.calibration_prompts(n, seed), None
        if self.metric is not None:
            user = self.metric
            task = lambda images: float(user(images, prompts))  # noqa: E731
        return prompts, task

    def _select(self, pipeline, stats, layers, candidates, paths) -> list[tuple[float, float]]:
        """(task metric, PSNR to FP) of each path's generations on the selection prompts."""
        prompts, task = self.selection
        scores = []
        for path in tqdm(paths, desc="selection", leave=False):
            _set_bits(layers, _path_bits(candidates, path))
            images = pipeline.generate(prompts, seed=self.recipe.calibration.seed + 1,
                                       steps=stats.steps)
            fidelity = psnr(images, self.selection_fp)
            scores.append((task(images) if task is not None else fidelity, fidelity))
        return scores
