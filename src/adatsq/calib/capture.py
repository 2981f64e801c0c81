"""Calibration capture: statistics of every quantizable layer's input at every sampling step.

The full-precision model samples the calibration prompts; forward hooks on the quantizable layers
stream what the methods need and nothing more:

* ``hessian``: per step, the sum of ``x xᵀ`` over all rows (tokens x samples) of the layer input,
  float32 of shape (T, d_in, d_in) (``"per_step"`` mode; ``"none"`` keeps none);
* ``absmax``: per step and input channel, the largest |x| (T, d_in);
* ``minmax``: per step, the smallest and largest value (T, 2);
* ``samples``: per step, a fixed-size random sample of input values (for plots);
* the latent trajectory (T, B, N, C) and the conditioning, to replay any step later.

Memory: ``"per_step"`` holds ``4 * T * sum_l d_in(l)^2`` bytes: Flux-Dev (57 blocks; inputs of
width 3072 and 12288, about 5.1e8 summed d_in^2) at 50 steps would need about 100 GB.
:func:`memory_estimate` tells before capturing; ``capture(..., only=names)`` records a
subset of layers, which is how :func:`adatsq.pipeline.quantize_` streams a large model through
calibration in groups that fit ``CalibrationSpec.memory_gb``. Statistics are kept on the CPU
whatever device the model runs on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from adatsq import distributed
from adatsq.models.base import Conditioning
from adatsq.quant.qlinear import StepTracker

log = logging.getLogger(__name__)

HESSIAN_MODES = ("per_step", "none")


@dataclass(frozen=True)
class CaptureConfig:
    """What to keep while capturing.

    Attributes:
        hessian: ``"per_step"`` or ``"none"``.
        samples_per_step: activation values kept per layer and step for plots.
        seed: seed of the value sampling.
    """

    hessian: str = "per_step"
    samples_per_step: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.hessian not in HESSIAN_MODES:
            raise ValueError(f"hessian must be one of {', '.join(HESSIAN_MODES)}, "
                             f"got {self.hessian!r}")
        if self.samples_per_step < 0:
            raise ValueError("samples_per_step must be >= 0")


@dataclass
class CalibrationStats:
    """What :func:`capture` returns (see the module docstring)."""

    layers: list[str]
    steps: int
    rows: dict[str, torch.Tensor]  # (T,) rows seen per step
    absmax: dict[str, torch.Tensor]  # (T, d_in)
    minmax: dict[str, torch.Tensor]  # (T, 2)
    samples: dict[str, torch.Tensor]  # (T, S)
    hessian: dict[str, torch.Tensor] = field(default_factory=dict)  # (T, d_in, d_in) per step
    latents: torch.Tensor | None = None  # (T, B, N, C) input latents of every step
    sigmas: torch.Tensor | None = None  # (T,)
    cond: Conditioning | None = None
    derived: dict = field(default_factory=dict)  # results computed from these stats, for reuse

    def hessian_sum(self, name: str, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_t w_t H_t`` for layer ``name`` (uniform ``w_t = 1/T`` by default), per row."""
        if name not in self.hessian:
            raise KeyError(f"no per-step Hessian captured for {name!r}; "
                           "capture with hessian='per_step'")
        H = self.hessian[name] / self.rows[name].clamp_min(1)[:, None, None]  # (T, d, d)
        w = torch.full((self.steps,), 1.0 / self.steps) if weights is None else weights
        return torch.einsum("t,tij->ij", w.to(H.dtype), H)

    def absorb(self, other: CalibrationStats) -> None:
        """Adds the per-layer statistics of ``other`` (other layers, same prompts and steps),
        except its Hessians: what streaming keeps of each group once it is quantized."""
        if other.steps != self.steps:
            raise ValueError("cannot merge statistics captured with different step counts")
        for name in other.layers:
            if name not in self.layers:
                self.layers.append(name)
        for field_name in ("rows", "absmax", "minmax", "samples"):
            getattr(self, field_name).update(getattr(other, field_name))

    def drop_hessians(self) -> None:
        """Frees the Hessians (once their layers are quantized)."""
        self.hessian.clear()

    def nbytes(self) -> int:
        tensors = [*self.hessian.values(), *self.absmax.values(), *self.samples.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def memory_estimate(layers: dict[str, nn.Linear], steps: int, mode: str = "per_step") -> int:
    """Bytes the Hessians of ``layers`` take in ``mode``."""
    per = sum(layer.in_features**2 for layer in layers.values()) * 4
    return {"per_step": per * steps, "none": 0}[mode]


def capture(pipeline, prompts: list[str], seed: int = 0, steps: int | None = None,
            config: CaptureConfig = CaptureConfig(),
            progress: bool = True, only: list[str] | None = None) -> CalibrationStats:
    """Samples ``prompts`` with the full-precision pipeline and records layer-input statistics.

    Args:
        pipeline: a pipeline exposing ``transformer``, ``adapter``, ``schedule(steps)`` and
            ``generate(prompts, seed, steps, callback=...)``.
        only: record these layers only (streaming a large model group by group).

    In a distributed run (:mod:`adatsq.distributed`) each rank samples its share of the prompts
    (with the noise those prompts get in a single process) and the statistics are reduced, so
    every rank returns the statistics of all prompts. Floats summed in another order make the
    Hessians differ from a single process's in the last bits; the value ``samples`` are each
    rank's own (they only feed plots).
    """
    ranks = distributed.current()
    if len(prompts) < ranks.world:
        raise ValueError(f"{len(prompts)} calibration prompts cannot be shared by {ranks.world} "
                         "ranks; use at least one prompt per rank")
    steps = steps or pipeline.default_steps
    model = pipeline.transformer
    layers = pipeline.adapter.quantizable_layers(model)
    if only is not None:
        unknown = sorted(set(only) - set(layers))
        if unknown:
            raise ValueError(f"not quantizable layers of this model: {', '.join(unknown[:3])}")
        layers = {n: layers[n] for n in only}
    tracker = StepTracker(pipeline.schedule(steps))
    gen = torch.Generator().manual_seed(config.seed)
    T = steps
    stats = CalibrationStats(
        layers=list(layers), steps=T,
        rows={n: torch.zeros(T) for n in layers},
        absmax={n: torch.zeros(T, m.in_features) for n, m in layers.items()},
        minmax={n: torch.stack([torch.full((T,), float("inf")), torch.full((T,), -float("inf"))], 1)
                for n in layers},
        samples={n: torch.zeros(T, config.samples_per_step) for n in layers})
    if config.hessian == "per_step":
        stats.hessian = {n: torch.zeros(T, m.in_features, m.in_features) for n, m in layers.items()}

    def make_hook(name: str):
        def hook(_module, inputs):
            t = tracker.index
            X = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).float()  # (rows, d_in)
            if not torch.isfinite(X).all():
                raise ValueError(f"non-finite activations reached {name} at step {t}; "
                                 "check the calibration prompts and the model weights")
            stats.rows[name][t] += X.shape[0]
            # statistics live on the CPU; the products are taken where the activations are
            stats.absmax[name][t] = torch.maximum(stats.absmax[name][t], X.abs().amax(0).cpu())
            mm = stats.minmax[name][t]
            mm[0], mm[1] = min(mm[0], X.min().cpu()), max(mm[1], X.max().cpu())
            if config.samples_per_step:
                idx = torch.randint(X.numel(), (config.samples_per_step,), generator=gen)
                stats.samples[name][t] = X.reshape(-1)[idx.to(X.device)].cpu()
            if config.hessian == "per_step":
                stats.hessian[name][t] += (X.T @ X).cpu()  # (d_in, d_in)
        return hook

    latents, step_sigmas = [], []

    def on_step(i, sigma, x):
        latents.append(x.clone())
        step_sigmas.append(float(sigma[0]))

    share = ranks.share(len(prompts))
    handles = [tracker.attach(model, pipeline.adapter.timestep_of)]
    handles += [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    try:
        pipeline.generate(prompts[share.start:share.stop], seed=seed, steps=steps,
                          callback=on_step, batch_size=len(share), first=share.start,
                          progress="calibration capture" if progress else False)
    finally:
        for h in handles:
            h.remove()
    stats.latents = torch.stack(latents)  # (T, b, N, C): this rank's share
    if ranks.world > 1:
        for name in layers:
            ranks.sum_(stats.rows[name])
            ranks.max_(stats.absmax[name])
            lo, hi = stats.minmax[name][:, 0].contiguous(), stats.minmax[name][:, 1].contiguous()
            stats.minmax[name][:, 0], stats.minmax[name][:, 1] = ranks.min_(lo), ranks.max_(hi)
            if name in stats.hessian:
                ranks.sum_(stats.hessian[name])
        # through the CPU: a pickled GPU tensor comes back on the sending rank's device
        device = stats.latents.device
        stats.latents = torch.cat(ranks.gather(stats.latents.cpu()), dim=1).to(device)
    stats.sigmas = torch.tensor(step_sigmas)
    stats.cond = pipeline.encode(prompts)
    log.info("captured %d layers x %d steps (%.1f MB)", len(layers), T, stats.nbytes() / 1e6)
    return stats
