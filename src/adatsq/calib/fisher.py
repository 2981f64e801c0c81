"""Fisher sensitivity of every quantizable layer at every sampling timestep (paper Eq. 1).

``I_{t,l} = E[(dL/dW_l)^2]``, summed over the entries of ``W_l``, with ``L`` the flow-matching
denoising loss at the noise level of step ``t``. No training data is needed: the data are the FP
model's own generations for the calibration prompts (``x0``), re-noised at every step's level,
``x_t = (1 - sigma_t) x0 + sigma_t eps``, with the velocity target ``eps - x0`` the model was
trained on. The expectation is the mean over samples of the squared per-sample gradient (the
empirical Fisher), one backward pass per sample by default. Larger micro-batches are cheaper but
biased: ``m ||mean g||^2 = mean ||g_i||^2 + (m - 1) ||E g||^2`` in expectation.

The empirical Fisher is dominated by what the model cannot predict: as ``sigma -> 0`` the target
``eps - x0`` holds noise that ``x_t`` no longer shows, the residual grows and so do the gradients
(30-40x a layer's mean on the last step of flux-digits), whatever the layer's own influence.
``target="output"`` measures that influence instead: the Fisher of a unit Gaussian output model
(the Gauss-Newton diagonal ``E ||J_W^T u||^2`` with ``u ~ N(0, I)``, one random projection per
sample), the squared gradient of ``<u, v(x_t)>``, which does not depend on the target at all.
``target="x0"`` keeps the data but scores the denoised estimate ``x0_hat = x_t - sigma v``
against ``x0``: its loss is ``sigma^2`` times the velocity loss, so its Fisher is ``sigma^4``
times the velocity Fisher, and the irreducible noise of the last steps no longer dominates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from adatsq import distributed
from adatsq.config import FISHER_TARGETS
from adatsq.models.sampling import sigmas as sigma_schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FisherResult:
    """Fisher scores (L, T) with their layer names and the noise levels (T,) of the steps."""

    layers: list[str]
    scores: np.ndarray
    sigmas: np.ndarray

    def normalized(self) -> np.ndarray:
        """Scores divided by each layer's mean over timesteps (the heatmap of Fig. 4a)."""
        return self.scores / np.maximum(self.scores.mean(axis=1, keepdims=True), 1e-30)

    def to_dict(self) -> dict:
        return {"layers": self.layers, "scores": self.scores.tolist(),
                "sigmas": self.sigmas.tolist()}


TARGETS = FISHER_TARGETS


def temporal_weights(scores: np.ndarray, tau: float, mix: float = 0.0) -> np.ndarray:
    """Eq. 6: ``alpha_{t,l} = softmax_t(I_{t,l} / tau)`` per layer, on scores normalized per layer.

    Each layer's scores are divided by their mean over timesteps first, so ``tau`` is free of the
    Fisher's units and means the same for every layer and model: ``tau -> inf`` gives uniform
    calibration, small ``tau`` concentrates a layer on its most sensitive steps. ``mix`` blends in
    the uniform weights, ``(1 - mix) alpha + mix / T``, which keeps every step in the calibration
    (:func:`effective_steps` at least ``1 / ((1 - mix)^2 + (2 - mix) mix / T)``).

    Args:
        scores: (L, T) Fisher scores.
        tau: temperature (> 0).
        mix: weight of the uniform calibration, in [0, 1].

    Returns:
        (L, T) weights, each row summing to one.

    Example:
        >>> temporal_weights(np.array([[1.0, 1.0]]), tau=1.0).tolist()
        [[0.5, 0.5]]
    """
    if not tau > 0:
        raise ValueError(f"temperature tau must be positive, got {tau}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    z = scores / np.maximum(scores.mean(axis=1, keepdims=True), 1e-30) / tau  # (L, T)
    z = z - z.max(axis=1, keepdims=True)
    w = np.exp(z)
    w = w / w.sum(axis=1, keepdims=True)
    return (1.0 - mix) * w + mix / scores.shape[1]


def effective_steps(alpha: np.ndarray) -> np.ndarray:
    """``N_eff = 1 / sum_t alpha_t^2`` of each row of ``alpha`` (L, T): how many timesteps the
    calibration effectively weighs (T for uniform weights, 1 when one step has all the weight).

    Example:
        >>> effective_steps(np.array([[0.25] * 4, [1.0, 0, 0, 0]])).tolist()
        [4.0, 1.0]
    """
    return 1.0 / np.square(alpha).sum(axis=-1)


def fisher_information(pipeline, prompts: list[str], steps: int | None = None, seed: int = 0,
                       micro_batch: int = 1, progress: bool = True,
                       sigmas: torch.Tensor | None = None,
                       target: str = "velocity", done: dict[int, list[float]] | None = None,
                       on_step: Callable[[int, list[float]], None] | None = None
                       ) -> FisherResult:
    """Eq. 1 for every quantizable layer of ``pipeline.transformer`` at every sampling step.

    Args:
        pipeline: a pipeline exposing ``transformer``, ``adapter``, ``generate``, ``encode`` and
            ``schedule``.
        prompts: calibration prompts (their FP generations are the data).
        steps: sampling steps (default: the pipeline's).
        seed: seed of the generations and of the re-noising.
        micro_batch: samples per backward pass (1: exact empirical Fisher; see above).
        progress: a bar over timesteps.
        sigmas: noise levels (T,) of the sampling steps (default: the pipeline sampler's).
        target: ``"velocity"`` (Eq. 1: the training loss against ``eps - x0``), ``"output"``
            (the target-free output sensitivity) or ``"x0"`` (the loss on the denoised
            estimate); see the module docstring.
        done: the scores (L,) of steps an interrupted run finished, by step: kept, not computed
            again (their random numbers are still drawn, so later steps get the same ones).
        on_step: called with each newly computed step and its scores (L,) (a checkpoint).
    """
    if not prompts:
        raise ValueError("Fisher estimation needs at least one calibration prompt")
    if target not in TARGETS:
        raise ValueError(f"unknown Fisher target {target!r}; use one of {', '.join(TARGETS)}")
    steps = steps or pipeline.default_steps
    model, adapter = pipeline.transformer, pipeline.adapter
    layers = adapter.quantizable_layers(model)
    names = list(layers)
    # a distributed run splits the micro-batches over the ranks, each drawing every random
    # number a single process draws (same noise per sample) and using its own share
    ranks = distributed.current()
    done = dict(done or {})  # the same on every rank (Method.resumable checks)
    sig = sigma_schedule(steps) if sigmas is None else torch.as_tensor(sigmas).float()  # (T,)
    if len(sig) != steps:
        raise ValueError(f"{len(sig)} noise levels given for {steps} steps")
    if all(t in done for t in range(steps)):  # resumed after the last step
        scores = np.array([done[t] for t in range(steps)]).T  # (L, T)
        return FisherResult(names, scores, sig.numpy())
    B = len(prompts)
    if -(-B // micro_batch) < ranks.world:  # the same answer on every rank
        raise ValueError(f"{B} Fisher prompts in micro-batches of {micro_batch} cannot be shared "
                         f"by {ranks.world} ranks; use more prompts")
    mine = ranks.share(-(-B // micro_batch))  # micro-batch indices
    lo, hi = mine.start * micro_batch, min(mine.stop * micro_batch, B)
    images = pipeline.generate(prompts[lo:hi], seed=seed, steps=steps, first=lo)
    x0 = pipeline.to_latents(images)  # (b, N, C): this rank's share
    cond = pipeline.encode(prompts[lo:hi])
    shape = x0.shape[1:]  # (N, C)
    gen = torch.Generator().manual_seed(seed + 7)
    scores = np.zeros((len(names), steps))
    weights = [layers[n].weight for n in names]
    previous = [w.requires_grad for w in weights]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for w in weights:
        w.requires_grad_(True)
    try:
        with torch.enable_grad():
            for t in tqdm(range(steps), desc="fisher", disable=not progress or not ranks.main,
                          leave=False):
                s = float(sig[t])
                eps = torch.randn((B, *shape), generator=gen)  # (B, N, C)
                for i in range(0, B, micro_batch):
                    j = min(i + micro_batch, B)
                    u = torch.randn((j - i, *shape), generator=gen) if target == "output" \
                        else None
                    if t in done or not lo <= i < hi:
                        continue
                    x = x0[i - lo:j - lo]
                    e = eps[i:j].to(x.device, x.dtype)
                    xt = (1 - s) * x + s * e
                    sub = {k: v[i - lo:j - lo] for k, v in cond.items()}
                    v = adapter.denoise(model, xt, sub, torch.full((j - i,), s, device=x.device))
                    if target == "velocity":
                        loss = (v - (e - x)).square().mean()
                    elif target == "x0":  # x0_hat = x_t - sigma v against x0
                        loss = (xt - s * v - x).square().mean()
                    else:  # <u, v> / n with u ~ N(0, I): the residual of a sampled target
                        loss = 2.0 * (v * u.to(v.device, v.dtype)).mean()
                    grads = torch.autograd.grad(loss, weights)
                    for li, g in enumerate(grads):
                        scores[li, t] += float(g.double().square().sum()) * (j - i) ** 2 / B
                if t in done:
                    scores[:, t] = done[t]
                    continue
                column = torch.from_numpy(scores[:, t].copy())
                scores[:, t] = ranks.sum_(column).numpy()  # (L,) over the ranks' shares
                if on_step is not None:
                    on_step(t, scores[:, t].tolist())
    finally:
        for w, req in zip(weights, previous):
            w.requires_grad_(req)
        for p in frozen:
            p.requires_grad_(True)
    if not np.isfinite(scores).all():
        raise ValueError("the Fisher scores are not finite; check the model and the prompts")
    log.info("fisher: %d layers x %d steps", len(names), steps)
    return FisherResult(names, scores, sig.numpy())
