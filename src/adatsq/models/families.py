"""The conventions of each diffusers pipeline class: how it samples, encodes and decodes.

What differs between pipeline classes (encoder arguments, latent layout, VAE scaling, guidance,
noise spacing and solver, defaults) is one small :class:`Family` each, registered by its pipeline
class name (:func:`register_family`) in the file of its transformer class, beside that class's
adapter (``models/flux.py``, ``zimage.py``, ``wan.py``). A family states every convention; none
has a default.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from adatsq.models.base import Conditioning
from adatsq.models.sampling import make_scheduler


@dataclass(frozen=True)
class Sampling:
    """How a diffusers pipeline samples.

    Attributes:
        steps: sampling steps.
        guidance_scale: guidance in the pipeline's own convention (the number one would pass to
            the diffusers pipeline: Flux-Dev's embedded guidance, Z-Image's ``pos + g (pos -
            neg)``, Wan's ``neg + g (pos - neg)``).
        height, width: image size in pixels.
        frames: frames of a video (Wan), ``None`` for images.
        max_sequence_length: text tokens per prompt.
    """

    steps: int
    guidance_scale: float
    height: int
    width: int
    frames: int | None = None
    max_sequence_length: int = 512

    def __post_init__(self):
        for name in ("steps", "height", "width", "max_sequence_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.frames is not None and self.frames <= 0:
            raise ValueError(f"frames must be positive, got {self.frames}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _dynamic_shift(config, image_tokens: int) -> float:
    """The static shift equal to a scheduler's resolution-dependent one (diffusers'
    ``calculate_shift``: ``mu`` linear in the number of image tokens; shift ``exp(mu)``)."""
    base_len = config.get("base_image_seq_len", 256)
    max_len = config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    mu = base + (top - base) * (image_tokens - base_len) / (max_len - base_len)
    return math.exp(mu) if config.get("time_shift_type", "exponential") == "exponential" else mu


def scheduler_shift(config, image_tokens: int) -> float:
    """The shift of ``sigma -> s sigma / (1 + (s - 1) sigma)`` a pipeline's scheduler applies."""
    if config.get("use_dynamic_shifting", False):
        return _dynamic_shift(config, image_tokens)
    if config.get("use_flow_sigmas", False):  # UniPC / DPM-Solver in flow mode (Wan)
        return float(config.get("flow_shift", 1.0))
    return float(config.get("shift", 1.0))


def _vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


class Family(ABC):
    """The conventions of one diffusers pipeline class (subclasses fill them in).

    Latents are in the layout the adapter's ``denoise`` takes; ``decode`` turns them into pixels
    in [-1, 1] with the pipeline's VAE, ``encode_pixels`` is its inverse (up to the VAE).
    """

    pipeline_class: ClassVar[str]
    transformer_class: ClassVar[str]

    @abstractmethod
    def defaults(self, pipe) -> Sampling:
        """Default sampling of this pipeline."""

    def check(self, pipe, sampling: Sampling) -> None:
        """Raises ValueError for settings or pipeline variants that are not supported."""

    @abstractmethod
    def cfg_scale(self, guidance_scale: float) -> float:
        """The classifier-free guidance scale of our sampler for the pipeline's guidance
        setting (1: no unconditional pass; a guidance that is a model input enters through
        ``encode`` instead)."""

    @abstractmethod
    def scheduler(self, pipe, steps: int, shift: float) -> SchedulerMixin:
        """A fresh scheduler set to ``steps`` exactly as the pipeline's ``__call__`` sets its
        own (``shift``: :func:`scheduler_shift` of its config at this resolution); sampling
        with it reproduces the pipeline (tests/integration)."""

    @abstractmethod
    def encode(self, pipe, prompts: list[str], sampling: Sampling, device) -> Conditioning:
        """The conditioning of ``prompts`` through the pipeline's ``encode_prompt``."""

    @abstractmethod
    def latent_shape(self, pipe, sampling: Sampling) -> tuple[int, ...]:
        """Shape of one sample's latents."""

    @abstractmethod
    def image_tokens(self, pipe, sampling: Sampling) -> int:
        """Image tokens per sample (a dynamic scheduler shift depends on them)."""

    @abstractmethod
    def decode(self, pipe, latents: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """Latents (B, ...) to pixels in [-1, 1] with the pipeline's VAE."""

    @abstractmethod
    def encode_pixels(self, pipe, pixels: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """Pixels to latents with the pipeline's VAE (the mode of its posterior)."""


class KLFamily(Family):
    """Image pipelines with an ``AutoencoderKL`` (latents ``(z - shift) * scale``), 2x2 patches,
    sampled by Euler on the sigmas ``1 .. 1/n`` under the scheduler's shift (as the Flux and
    Z-Image pipelines pass them)."""

    def scheduler(self, pipe, steps, shift):
        return make_scheduler(steps, shift, "linear")

    def check(self, pipe, sampling):
        multiple = 2 * _vae_factor(pipe.vae)
        if sampling.height % multiple or sampling.width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple} for "
                             f"{self.pipeline_class}, got {sampling.height}x{sampling.width}")
        if sampling.frames is not None:
            raise ValueError(f"{self.pipeline_class} makes images; frames apply to video models")

    def grid(self, pipe, sampling) -> tuple[int, int]:
        """Latent height and width."""
        f = _vae_factor(pipe.vae)
        return sampling.height // f, sampling.width // f

    def image_tokens(self, pipe, sampling):
        h, w = self.grid(pipe, sampling)
        return (h // 2) * (w // 2)

    def to_vae(self, pipe, z):
        config = pipe.vae.config
        z = z.to(pipe.vae.device, pipe.vae.dtype)
        return z / config.scaling_factor + (config.shift_factor or 0.0)

    def _from_vae(self, pipe, z):
        config = pipe.vae.config
        return (z - (config.shift_factor or 0.0)) * config.scaling_factor

    def vae_encode(self, pipe, pixels):
        pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
        return self._from_vae(pipe, pipe.vae.encode(pixels).latent_dist.mode())


FAMILIES: dict[str, type[Family]] = {}
"""Supported diffusers pipeline classes (filled by :func:`register_family`)."""


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator adding a pipeline family to :data:`FAMILIES`."""
    FAMILIES[cls.pipeline_class] = cls
    return cls
