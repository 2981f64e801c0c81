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
   configurations from that step's Fisher within reach of the budget, each with its step MSE
   (Eq. 2) between the FP and the quantized model's velocity at ``z_t``: the guided velocity
   ``v_u + s (v_c - v_u)`` that sampling integrates (``step_loss="guided"``, with the
   pipeline's CFG scale ``s``) or the conditional one (``"conditional"``, Eq. 2 literally);
5. *beam search* (Eqs. 3-5, :mod:`adatsq.search.pareto`) under ``B_target = bits + extra_bits``,
   once per step weighting ``(Δσ_t)^γ`` of the losses (``loss_weights``; γ = 0 is Eq. 3 as
   printed, γ = 2 the squared error a step adds to the latent); every surviving path then
   spends what it leaves of the budget (:func:`fill_budget`), and the distinct ones of all
   weightings are pooled, so that the selection chooses among diverse paths;
6. *selection* (Sec. 3.2.4): the surviving paths generate a batch of selection prompts (disjoint
   from evaluation); among the paths whose task metric (DigitEval for the embedded models, or a
   user's metric passed to :func:`adatsq.pipeline.quantize_`) is not significantly below the
   best one's (paired, 95%), the most faithful to the FP samples (PSNR) wins
   (:func:`adatsq.search.selection.select_path`).

``pareto=False`` keeps the nominal bit width everywhere: with ``calib="none"`` that is the "MinMax,
naive rotation" baseline of the paper's Table 3.

Beyond the paper (opt-in): ``lowrank`` adds SVDQuant's 16-bit branch (``adatsq_lr``), ``balance``
divides every layer's input by SmoothQuant factors before the rotation, as ViDiT-Q does
(``adatsq_cb``), for massive activations that rotation alone spreads over every channel.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import numpy as np
import torch

from adatsq.calib.fisher import (
    FisherResult,
    effective_steps,
    fisher_information,
    temporal_weights,
)
from adatsq.checkpoint import digest
from adatsq.methods.base import Method, register, rotated_layer
from adatsq.models.sampling import guidance_batch, guided_velocity
from adatsq.quant.lowrank import proportional_rank
from adatsq.quant.primitives import FULL_PRECISION
from adatsq.quant.smoothing import smooth_layer
from adatsq.search.candidates import generate_candidates
from adatsq.search.pareto import beam_search, fill_budget
from adatsq.search.selection import select_path

log = logging.getLogger(__name__)

def _path_bits(candidates, path) -> np.ndarray:
    """Activation bits (L, T) of a path (candidate index per step; padded indices clamp)."""
    return np.stack([c.bits[min(k, len(c.bits) - 1)] for c, k in zip(candidates, path)], axis=1)


@register
class AdaTSQ(Method):
    name = "adatsq"
    source = "AdaTSQ (Sec. 3): Fisher, Pareto beam search over timestep bits, Fisher-guided GPTQ"
    capture = "per_step"
    metric = None  # a user's ``metric(images, prompts) -> float`` for the final selection
    #: ``fidelity(samples, reference) -> (N,)`` per-sample fidelity (PSNR) of the selection; set
    #: by :func:`adatsq.pipeline.quantize_`
    fidelity = None

    @property
    def search_execution(self) -> str:
        return self.options.search_execution

    def __init__(self, recipe):
        super().__init__(recipe)
        self.phases: dict[str, float] = {}  # seconds of each phase (report and BENCHMARKS.md)
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
        balanced = "" if self.options.balance is None else (
            f"smoothed (alpha {self.options.balance:g}) then ")
        g["activations"] = f"{g['activations']}, {balanced}Hadamard-rotated" + (
            ", timestep-dynamic bits" if self.search else "")
        if self.options.lowrank:
            g["weights"] = f"{g['weights']}, 16-bit low-rank branch (proportional)"
        return g

    # -- 2/3: Fisher and weights -------------------------------------------------------------
    def prepare(self, pipeline, stats):
        o = self.options
        model, adapter = pipeline.transformer, pipeline.adapter
        self.fisher: FisherResult | None = None
        seed = self.recipe.calibration.seed
        if self.search or o.calib == "fisher":
            # shared by every run on the same stats
            key = ("fisher", o.fisher_prompts, seed, stats.steps, o.fisher_target)
            if key not in stats.derived:
                prompts = pipeline.calibration_prompts(o.fisher_prompts, seed)
                done, save = self.resumable(f"fisher_{digest(list(key))}", "Fisher steps")
                with self._phase("fisher"):
                    stats.derived[key] = fisher_information(
                        pipeline, prompts, steps=stats.steps, seed=seed, sigmas=stats.sigmas,
                        target=o.fisher_target, progress=self.progress, done=done, on_step=save)
            self.fisher = stats.derived[key]
            if self.fisher.layers != list(adapter.quantizable_layers(model)):
                raise ValueError("the Fisher scores were computed for other layers than this "
                                 "model's; compute them on the model being quantized")
        self.alpha = None
        layers = list(adapter.quantizable_layers(model))
        alpha = None
        if o.calib == "fisher":
            alpha = temporal_weights(self.fisher.scores, o.tau, o.mix)
        elif o.calib == "steps":
            if len(o.step_weights) != stats.steps:
                raise ValueError(f"{len(o.step_weights)} step_weights given for "
                                 f"{stats.steps} calibration steps")
            alpha = np.tile(np.asarray(o.step_weights, dtype=np.float64), (len(layers), 1))
        elif o.calib == "uniform" and not o.calib_last_step:
            alpha = np.ones((len(layers), stats.steps))
        if alpha is not None:
            if not o.calib_last_step:
                if stats.steps < 2:
                    raise ValueError("calib_last_step=False needs at least two steps")
                alpha = alpha.copy()
                alpha[:, -1] = 0.0
            alpha = alpha / alpha.sum(axis=1, keepdims=True)
            self.alpha = dict(zip(layers, alpha))
        # FP velocities along the calibration trajectory, for the step losses of Eq. 2
        self.fp_out = None
        self._batch = None
        if self.search:
            self.cfg = float(pipeline.cfg_scale)  # the guidance sampling uses (1: none)
            key = ("fp_out", self.cfg, o.step_loss, o.step_prompts)
            if key not in stats.derived:
                with self._phase("fp_velocity"):
                    stats.derived[key] = torch.stack([self._velocity(pipeline, stats, t)
                                                      for t in range(stats.steps)])  # (T, B, ...)
            self.fp_out = stats.derived[key]
            self.selection = self._selection_set(pipeline)
            key = ("selection_fp", tuple(self.selection[0]), seed + 1)
            if key not in stats.derived:
                with self._phase("selection_fp"):
                    stats.derived[key] = pipeline.generate(self.selection[0], steps=stats.steps,
                                                           seed=seed + 1)
            self.selection_fp = stats.derived[key]

    def quantize_layer(self, name, linear, stats, tracker):
        o = self.options
        rank = proportional_rank(*linear.weight.shape) if o.lowrank else None
        smooth = None
        if o.balance is not None:
            smooth = smooth_layer(linear.weight, stats.absmax[name], o.balance)[0]
        if o.calib == "none":
            return rotated_layer(self, name, linear, None, tracker, None, rank, smooth)
        alpha = self.alpha
        weights = None if alpha is None else torch.tensor(alpha[name], dtype=torch.float32)
        return rotated_layer(self, name, linear, stats.hessian_sum(name, weights), tracker,
                             o.gptq, rank, smooth)

    # -- 4/5/6: candidates, search, selection --------------------------------------------------
    def finalize(self, pipeline, stats, tracker, layers, policy):
        o = self.options
        self._model, self._policy = pipeline.transformer, policy
        settings = {"options": dict(vars(o))}
        if self.fisher is not None:
            settings["fisher"] = self.fisher.to_dict()
        if self.alpha is not None:
            settings["alpha"] = {n: a.tolist() for n, a in self.alpha.items()}
            settings["effective_steps"] = {
                n: float(x) for n, x in zip(self.alpha, effective_steps(np.stack(
                    list(self.alpha.values()))))}
        if not self.search:
            return policy.with_settings(**settings)
        fisher = self.fisher.scores  # (L, T), layers in the same order as ``layers``
        budget = self.recipe.activations.bits + o.extra_bits
        config = o.candidate_config
        candidates = [generate_candidates(fisher[:, t], config, budget=budget)
                      for t in range(stats.steps)]
        with self._phase("step_losses"):
            losses = self._step_losses(pipeline, stats, layers, candidates)
        M = max(len(c.avg_bits) for c in candidates)
        avg_bits = np.stack([np.pad(c.avg_bits, (0, M - len(c.avg_bits)), mode="edge")
                             for c in candidates])  # (T, M)
        loss_tm = np.stack([np.pad(x, (0, M - len(x)), mode="edge") for x in losses])  # (T, M)
        steps = np.arange(stats.steps)
        sizes = np.array([len(c.avg_bits) for c in candidates])  # (T,) before padding
        pooled, results = {}, []
        for g, weight in zip(o.loss_weights, step_weights(stats.sigmas, o.loss_weights)):
            weighted = loss_tm * weight[:, None]
            result = beam_search(avg_bits, weighted, beam_width=o.num_candidates, budget=budget,
                                 keep=o.keep)
            results.append(result)
            # every feasible survivor spends what it leaves of the budget (padded copies and
            # fills that meet are one path), least weighted loss first
            filled = {}
            for i in np.flatnonzero(result.feasible):
                path = np.minimum(fill_budget(result.paths[i], avg_bits, weighted, budget),
                                  sizes - 1)
                filled.setdefault(tuple(path.tolist()), path)
            ranked = sorted(filled.values(), key=lambda p: weighted[steps, p].sum())
            for rank, path in enumerate(ranked):
                pooled.setdefault(tuple(path.tolist()), (rank, len(results) - 1, g, path))
        # the best of every weighting first, then the second best of each, ...
        order = sorted(pooled.values(), key=lambda x: x[:2])[: o.select_paths]
        paths = [x[3] for x in order]
        result = results[0]
        with self._phase("selection"):
            scores = self._select(pipeline, stats, layers, candidates, paths)
        chosen = select_path([s[0] for s in scores], [s[1] for s in scores])
        path = paths[chosen]
        mean_bits = [float(avg_bits[steps, p].mean()) for p in paths]
        settings["search"] = {
            "budget": budget, "keep": o.keep, "step_loss": o.step_loss, "cfg_scale": self.cfg,
            "mean_bits": mean_bits[chosen], "total_loss": float(loss_tm[steps, path].sum()),
            "truncated": result.truncated,
            "candidate_bits": avg_bits.tolist(), "candidate_losses": loss_tm.tolist(),
            "survivors": {"mean_bits": result.mean_bits.tolist(),
                          "total_loss": result.total_loss.tolist(),
                          "feasible": result.feasible.tolist()},
            "tried": {"paths": [p.tolist() for p in paths], "mean_bits": mean_bits,
                      "loss_weight": [x[2] for x in order],
                      "total_loss": [float(loss_tm[steps, p].sum()) for p in paths]},
            "selection_scores": [[float(np.mean(t)), float(np.mean(f))] for t, f in scores],
            "chosen": chosen, "path": path.tolist()}
        return policy.with_activation_bits(_path_bits(candidates, path)).with_settings(**settings)

    def apply_bits(self, bits) -> None:
        """Tries activation bits on the model, per layer (L,) or per layer and step (L, T),
        through the policy (the one way bits reach a model)."""
        bits = np.asarray(bits)
        if bits.ndim == 1:
            bits = np.repeat(bits[:, None], self._policy.steps, axis=1)
        self._policy.with_activation_bits(bits).apply_(self._model)

    @contextmanager
    def _phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t0

    def _velocity(self, pipeline, stats, t: int) -> torch.Tensor:
        """The velocity at step ``t`` of the calibration trajectory that the step loss compares:
        the guided one (CFG) or the conditional one, per ``step_loss``."""
        B = min(self.options.step_prompts, stats.latents.shape[1])
        scale = self.cfg if self.options.step_loss == "guided" else 1.0
        if self._batch is None:  # built once for every step and candidate
            cond = {k: v[:B] for k, v in stats.cond.items()}
            self._batch = guidance_batch(cond, pipeline.null_conditioning() if scale != 1.0
                                         else None, scale)
        sigma = torch.full((B,), float(stats.sigmas[t]))
        with torch.no_grad():
            return guided_velocity(pipeline.adapter, pipeline.transformer, stats.latents[t, :B],
                                   self._batch, sigma, scale)

    def _step_losses(self, pipeline, stats, layers, candidates) -> list[np.ndarray]:
        """Eq. 2 for every candidate of every step: MSE of the quantized vs FP velocity at
        ``z_t`` (steps spread over the ranks; resumable)."""
        def losses_at(t: int) -> list[float]:
            row = []
            for bits in candidates[t].bits:
                self.apply_bits(bits)
                v = self._velocity(pipeline, stats, t)
                row.append(float((v - self.fp_out[t]).square().mean()))
            return row

        return [np.array(row) for row in self.map_items("step_losses", stats.steps, losses_at,
                                                         "step losses")]

    def _selection_set(self, pipeline):
        """Selection prompts and their task metric (None: fidelity only)."""
        n, seed = self.options.select_prompts, self.recipe.calibration.seed + 1
        prompts, task = pipeline.selection_set(n, seed)
        if self.metric is not None:
            user = self.metric
            task = lambda images: float(user(images, prompts))  # noqa: E731
        return prompts, task

    def _select(self, pipeline, stats, layers, candidates, paths):
        """(task metric, PSNR to FP) of each path's samples of the selection prompts; each is
        per prompt (N,) where the metric gives one score per sample, else a float (paths spread
        over the ranks; resumable)."""
        prompts, task = self.selection

        def score(k: int) -> list:
            self.apply_bits(_path_bits(candidates, paths[k]))
            images = pipeline.generate(prompts, seed=self.recipe.calibration.seed + 1,
                                       steps=stats.steps)
            fidelity = np.asarray(self.fidelity(images, self.selection_fp)).reshape(
                len(prompts), -1).mean(1)
            metric = task(images) if task is not None else fidelity
            return [np.asarray(metric, dtype=np.float64).tolist(), fidelity.tolist()]

        # the paths are part of the key: a resumed run whose search found others starts over
        name = f"selection_{digest([p.tolist() for p in paths])}"
        return [(np.asarray(m, dtype=np.float64), np.asarray(f, dtype=np.float64))
                for m, f in self.map_items(name, len(paths), score, "selection")]


def step_weights(sigmas, exponents) -> np.ndarray:
    """Step-loss weights ``(Δσ_t / mean Δσ)^γ`` per exponent ``γ``: (G, T).

    ``Δσ_t = σ_t - σ_{t+1}`` (``σ_T = 0``) is the size of step ``t`` of the Euler sampler, so
    ``Δσ_t² · MSE_t`` is the squared error a quantized velocity adds to the latent at that step.

    Example:
        >>> step_weights([1.0, 0.75, 0.25], [0.0, 2.0]).tolist()
        [[1.0, 1.0, 1.0], [0.5625, 2.25, 0.5625]]
    """
    s = np.asarray(sigmas, dtype=np.float64)
    d = s - np.append(s[1:], 0.0)
    if (d <= 0).any():
        raise ValueError("the step sigmas must decrease to above 0")
    d = d / d.mean()
    return np.stack([d ** float(g) for g in exponents])
