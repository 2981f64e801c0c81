"""A step-by-step flow-matching sampler (Euler, diffusers' ``FlowMatchEulerDiscreteScheduler``).

It calls the transformer through its adapter, applies classifier-free guidance by batching the
unconditional and conditional halves, and reports every step to an optional callback, which is how
calibration records the trajectory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn
from tqdm import tqdm

from adatsq.models.base import Adapter, Conditioning

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""``callback(step_index, sigma, latents)`` called before each transformer call."""


SPACINGS = ("train", "linear")


def make_scheduler(steps: int, shift: float = 1.0,
                   spacing: str = "train") -> FlowMatchEulerDiscreteScheduler:
    """The scheduler with ``steps`` timesteps.

    Args:
        shift: ``sigma -> shift sigma / (1 + (shift - 1) sigma)`` (a dynamic shift ``mu`` is
            ``shift = exp(mu)``).
        spacing: noise levels before the shift: ``"train"``, diffusers' default (from 1 down to
            the smallest training level); ``"linear"``, ``1, (n-1)/n, ..., 1/n`` (the sigmas the
            Flux, Z-Image and, to 1e-3, Wan pipelines pass).
    """
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    if spacing == "linear":
        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1.0 / steps, steps).tolist())
    else:
        scheduler.set_timesteps(steps)
    return scheduler


def sigmas(steps: int, shift: float = 1.0, spacing: str = "train") -> torch.Tensor:
    """Noise levels (steps,) at which the transformer is called."""
    return make_scheduler(steps, shift, spacing).sigmas[:steps].clone()


def _cat(a: Conditioning, b: Conditioning) -> Conditioning:
    return {k: torch.cat([a[k], b[k]]) for k in b}


def guidance_batch(cond: Conditioning, uncond: Conditioning | None,
                   guidance_scale: float) -> Conditioning:
    """The conditioning :func:`guided_velocity` takes: ``cond`` (B) itself without guidance,
    else the empty prompt's (batch 1 or B, broadcast to B) stacked on it (2B). Built once per
    batch, not per step."""
    if guidance_scale == 1.0:
        return cond
    if uncond is None:
        raise ValueError("classifier-free guidance needs the unconditional conditioning")
    b = next(iter(cond.values())).shape[0]
    return _cat({k: v.expand(b, *v.shape[1:]) for k, v in uncond.items()}, cond)


def guided_velocity(adapter: Adapter, model: nn.Module, x: torch.Tensor, batch: Conditioning,
                    sigma: torch.Tensor, guidance_scale: float = 1.0) -> torch.Tensor:
    """The velocity sampling integrates at ``x`` (B, ...): ``v_u + s (v_c - v_u)`` with
    classifier-free guidance (one batched call), the conditional ``v_c`` when ``s == 1``.

    Args:
        batch: :func:`guidance_batch` of the conditioning for this ``guidance_scale``.
        sigma: (B,) noise level of every sample.
    """
    if guidance_scale == 1.0:
        return adapter.denoise(model, x, batch, sigma)
    v = adapter.denoise(model, torch.cat([x, x]), batch, torch.cat([sigma, sigma]))
    v_uncond, v_cond = v.chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample(adapter: Adapter, model: nn.Module, noise: torch.Tensor, cond: Conditioning,
           uncond: Conditioning | None, steps: int, guidance_scale: float = 1.0,
           shift: float = 1.0, callback: StepCallback | None = None,
           progress: bool | str = False, spacing: str = "train") -> torch.Tensor:
    """Integrates from ``noise`` (B, ...) in the adapter's latent layout to clean latents.

    Args:
        uncond: conditioning of the empty prompt (batch 1 or B); needed unless
            ``guidance_scale == 1``.
        progress: show a bar per step (a string is used as its label).
        shift, spacing: the noise schedule (see :func:`make_scheduler`).
    """
    scheduler = make_scheduler(steps, shift, spacing)
    x = noise
    b = x.shape[0]
    batch = guidance_batch(cond, uncond, guidance_scale)
    label = progress if isinstance(progress, str) else "sampling"
    for i, t in enumerate(tqdm(scheduler.timesteps, desc=label, disable=not progress, leave=False)):
        sigma = torch.full((b,), float(t) / 1000.0)
        if callback is not None:
            callback(i, sigma, x)
        v = guided_velocity(adapter, model, x, batch, sigma, guidance_scale)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x
