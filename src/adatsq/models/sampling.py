"""A step-by-step flow-matching sampler driven by a diffusers scheduler.

It calls the transformer through its adapter, applies classifier-free guidance by batching the
unconditional and conditional halves, and reports every step to an optional callback, which is how
calibration records the trajectory. The scheduler is the pipeline's own solver, set as its
pipeline's ``__call__`` sets it: Euler (``FlowMatchEulerDiscreteScheduler``) for Flux and
Z-Image, UniPC (``UniPCMultistepScheduler``, a multistep solver) for Wan; every step gives the
transformer the scheduler's timestep ``t`` (as noise level ``t / 1000``) and hands its velocity
back to ``scheduler.step``, exactly as those pipelines do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from PIL import Image
from torch import nn
from tqdm import tqdm

from adatsq.models.base import Adapter, Conditioning

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]
"""``callback(step_index, sigma, latents)`` called before each transformer call."""


SPACINGS = ("train", "linear")
SOLVERS = ("euler", "unipc")


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


def unipc_scheduler(steps: int, shift: float = 1.0) -> UniPCMultistepScheduler:
    """Wan's solver with ``steps`` timesteps: UniPC (order 2, BH2) on flow sigmas, as
    ``WanPipeline`` ships it (``flow_shift`` = ``shift``)."""
    scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


def solver_scheduler(solver: str, steps: int, shift: float = 1.0,
                     spacing: str = "train") -> SchedulerMixin:
    """A fresh scheduler of ``solver`` (:data:`SOLVERS`) set to ``steps``."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    return unipc_scheduler(steps, shift) if solver == "unipc" else \
        make_scheduler(steps, shift, spacing)


def step_sigmas(scheduler: SchedulerMixin) -> torch.Tensor:
    """Noise levels (steps,) at which the transformer is called: Euler's sigmas; for another
    solver the level of its timestep (``t / 1000``, as its pipeline passes ``t``)."""
    n = len(scheduler.timesteps)
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return scheduler.sigmas[:n].clone()
    return (scheduler.timesteps.double() / 1000.0).float()


def sigmas(steps: int, shift: float = 1.0, spacing: str = "train") -> torch.Tensor:
    """Noise levels (steps,) at which the Euler sampler calls the transformer."""
    return step_sigmas(make_scheduler(steps, shift, spacing))


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
           progress: bool | str = False, spacing: str = "train",
           scheduler: SchedulerMixin | None = None) -> torch.Tensor:
    """Integrates from ``noise`` (B, ...) in the adapter's latent layout to clean latents.

    Args:
        uncond: conditioning of the empty prompt (batch 1 or B); needed unless
            ``guidance_scale == 1``.
        progress: show a bar per step (a string is used as its label).
        shift, spacing: the Euler noise schedule (see :func:`make_scheduler`).
        scheduler: a fresh scheduler set to its timesteps instead (a multistep solver keeps
            state: one per call); ``steps``, ``shift`` and ``spacing`` are then unused.
    """
    scheduler = scheduler or make_scheduler(steps, shift, spacing)
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


def seeded_noise(shape: tuple[int, ...], n: int, seed: int, first: int = 0) -> torch.Tensor:
    """Initial latents (n, *shape) of samples ``first .. first + n - 1``: sample ``i`` always
    gets the same noise for a given seed, whatever the batch (or the rank of a distributed run)
    it is drawn in (its own generator, seeded ``seed * 100003 + i``)."""
    gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(first, first + n)]
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


OUTPUT_TYPES = ("pil", "np", "pt")
"""What :meth:`SamplingPipeline.__call__` returns, in diffusers' conventions: PIL images, numpy
arrays (B, H, W, 3) or tensors (B, 3, H, W) in [0, 1]; for video, per clip its frames."""


@dataclass
class VideoOutput(BaseOutput):
    """The clips of a video pipeline call, as diffusers' video pipelines return them:
    ``frames`` is a list (per clip) of PIL frames, an array (B, F, H, W, 3) or a tensor
    (B, F, 3, H, W), in [0, 1]."""

    frames: Any


def to_output(samples: torch.Tensor, output_type: str = "pil"):
    """Samples in [-1, 1] (B, 3, H, W) or clips (B, 3, F, H, W) as diffusers returns them."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got "
                         f"{output_type!r}")
    unit = ((samples.float().cpu() + 1) / 2).clamp(0, 1)
    if samples.ndim == 5:
        frames = unit.permute(0, 2, 1, 3, 4)  # (B, F, 3, H, W)
        if output_type == "pt":
            return VideoOutput(frames=frames)
        arrays = frames.permute(0, 1, 3, 4, 2).numpy()  # (B, F, H, W, 3)
        if output_type == "np":
            return VideoOutput(frames=arrays)
        return VideoOutput(frames=[[Image.fromarray(_bytes(f)) for f in clip]
                                   for clip in arrays])
    if output_type == "pt":
        return ImagePipelineOutput(images=unit)
    arrays = unit.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    if output_type == "np":
        return ImagePipelineOutput(images=arrays)
    return ImagePipelineOutput(images=[Image.fromarray(_bytes(a)) for a in arrays])


def _bytes(unit: np.ndarray) -> np.ndarray:
    return (unit * 255).round().astype(np.uint8)


class SamplingPipeline(ABC):
    """What every :class:`~adatsq.models.base.Pipeline` shares: the seeding rule, the empty
    prompt's conditioning (computed once), the noise schedule and the sampling loop.

    Subclasses say how prompts become conditioning, what shape the latents have, how latents
    become samples, and their sampling defaults.
    """

    transformer: nn.Module
    adapter: Adapter
    #: noise levels before the shift (see :func:`make_scheduler`).
    spacing: ClassVar[str] = "train"
    #: the solver (:data:`SOLVERS`) of :meth:`scheduler`.
    solver: ClassVar[str] = "euler"
    #: prompts sampled at once when ``generate`` is not told.
    batch_size: ClassVar[int] = 256

    @property
    @abstractmethod
    def default_steps(self) -> int:
        """Sampling steps when none are given."""

    @property
    @abstractmethod
    def shift(self) -> float:
        """The flow shift of the noise schedule."""

    @abstractmethod
    def encode(self, prompts: list[str]) -> Conditioning:
        """The conditioning of ``prompts``."""

    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latents."""

    @abstractmethod
    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, ...) to samples in [-1, 1] (float32, CPU)."""

    @abstractmethod
    def guidance(self, guidance_scale: float | None) -> float:
        """The sampler's classifier-free guidance scale for a guidance setting in the
        pipeline's own convention (None: its default)."""

    def conditioning(self, prompts: list[str], guidance_scale: float | None) -> Conditioning:
        """The conditioning :meth:`generate` samples with (a guidance that is a model input,
        as Flux-Dev's, enters here)."""
        return self.encode(prompts)

    @property
    def cfg_scale(self) -> float:
        """The classifier-free guidance scale sampling uses (1: unguided)."""
        return float(self.guidance(None))

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype."""
        return self.transformer.dtype

    def null_conditioning(self) -> Conditioning:
        """The conditioning of the empty prompt (computed once per transformer dtype)."""
        null = getattr(self, "_null", None)
        if null is None or any(v.is_floating_point() and v.dtype != self.dtype
                               for v in null.values()):
            self._null = self.encode([""])
        return self._null

    def scheduler(self, steps: int) -> SchedulerMixin:
        """A fresh scheduler set to ``steps``: the solver this pipeline samples with."""
        return solver_scheduler(self.solver, steps, self.shift, self.spacing)

    def schedule(self, steps: int | None = None) -> torch.Tensor:
        """Timestep values (T,) the transformer receives at each step."""
        return self.adapter.model_timestep(step_sigmas(self.scheduler(steps or
                                                                      self.default_steps)))

    def noise(self, n: int, seed: int, first: int = 0) -> torch.Tensor:
        """Initial latents (see :func:`seeded_noise`) on the transformer's device and dtype."""
        return seeded_noise(self.latent_shape(), n, seed, first).to(self.device, self.dtype)

    def __call__(self, prompt: str | list[str], num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int = 0,
                 output_type: str = "pil", return_dict: bool = True):
        """Samples ``prompt`` as a diffusers pipeline call does: ``.images`` (a list of PIL
        images by default), or ``.frames`` of a video model (see :data:`OUTPUT_TYPES`); a
        tuple holding that list when ``return_dict`` is False. Deterministic given ``seed``
        (:meth:`generate`, which returns the samples as one tensor in [-1, 1]).

        Example:
            >>> pipe = load_pipeline("flux-digits")  # doctest: +SKIP
            >>> pipe("a red 3").images[0].save("three.png")  # doctest: +SKIP
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if output_type not in OUTPUT_TYPES:  # before sampling
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got "
                             f"{output_type!r}")
        out = to_output(self.generate(prompts, seed, num_inference_steps, guidance_scale),
                        output_type)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int | None = None,
                 callback: StepCallback | None = None,
                 progress: bool | str = False, first: int = 0) -> torch.Tensor:
        """Samples (B, 3, H, W), or clips (B, 3, F, H, W) for a video model, in [-1, 1]
        (float32, CPU) for ``prompts``; deterministic given ``seed``.

        Args:
            guidance_scale: in the pipeline's own convention (None: its default).
            batch_size: prompts sampled at once (None: the pipeline's).
            callback: ``callback(step, sigma, latents)`` before every transformer call.
            progress: a bar per step (a string is its label).
            first: index of ``prompts[0]`` in a larger prompt list whose share this is (its
                samples get that list's noise: a distributed run splits prompts over ranks).
        """
        if not prompts:
            raise ValueError("no prompts to generate")
        if steps is not None and steps <= 0:
            raise ValueError(f"sampling steps must be positive, got {steps}")
        steps = steps or self.default_steps
        scale = self.guidance(guidance_scale)
        uncond = self.null_conditioning() if scale != 1.0 else None
        noise = self.noise(len(prompts), seed, first)
        size = batch_size or self.batch_size
        out = []
        for i in range(0, len(prompts), size):
            chunk = prompts[i:i + size]
            latents = sample(self.adapter, self.transformer, noise[i:i + size],
                             self.conditioning(chunk, guidance_scale), uncond, steps, scale,
                             callback=callback, progress=progress,
                             scheduler=self.scheduler(steps))
            out.append(self.from_latents(latents))
        return torch.cat(out)
