"""Full diffusers pipelines (Flux, Z-Image, Wan) named by a local folder or a hub id.

:class:`DiffusersPipeline` gives a diffusers pipeline the interface the quantization flow uses
(that of :class:`adatsq.zoo.pipeline.DigitPipeline`): prompts are encoded by the pipeline's own
``encode_prompt``; our sampler (:func:`adatsq.models.sampling.sample`) steps the pipeline's own
solver set as its ``__call__`` sets it (Euler on shifted sigmas ``1 .. 1/n`` for Flux and Z-Image,
UniPC for Wan); the pipeline's VAE decodes the latents with the pipeline's latent normalization.
What differs between pipeline classes is its :class:`~adatsq.models.families.Family`; where a
pipeline comes from is :mod:`adatsq.models.sources`.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from adatsq.models.base import Conditioning, adapter_for
from adatsq.models.families import FAMILIES, Sampling, scheduler_shift
from adatsq.models.sampling import SamplingPipeline
from adatsq.models.sources import (
    cast_like_diffusers,
    dtype_keyword,
    first_line,
    pipeline_class_of,
    read_transformer,
    reference,
)
from adatsq.strict import check_keys

log = logging.getLogger(__name__)

BUILTIN_PROMPTS = "calibration_prompts.txt"
"""GenEval-style calibration prompts shipped in ``adatsq/data`` (six categories, 34 each)."""


class DiffusersPipeline(SamplingPipeline):
    """A diffusers Flux, Z-Image or Wan pipeline as a :class:`~adatsq.models.base.Pipeline`.

    Args:
        pipe: the diffusers pipeline (any class of :data:`FAMILIES`).
        model: the hub id or folder it came from, as artifacts record it (:func:`reference`).
        calibration_file: a text file of calibration prompts, one per line (default: the
            GenEval-style prompts shipped with adatsq).
        **settings: overrides of the family's :class:`Sampling` defaults (``steps``,
            ``guidance_scale``, ``height``, ``width``, ``frames``, ``max_sequence_length``).

    Example:
        >>> pipe = load_diffusers_pipeline("black-forest-labs/FLUX.1-schnell",
        ...                                height=512, width=512)  # doctest: +SKIP
        >>> pipe.generate(["a red apple"], steps=4).shape  # doctest: +SKIP
        torch.Size([1, 3, 512, 512])
    """

    batch_size = 4

    def __init__(self, pipe, model: str, calibration_file: str | Path | None = None,
                 **settings):
        kind = type(pipe).__name__
        if kind not in FAMILIES:
            raise ValueError(f"{model}: {kind} is not supported; supported pipelines: "
                             f"{', '.join(FAMILIES)}")
        self.pipe = pipe
        self.model = model
        self.family = FAMILIES[kind]()
        check_keys(settings, (f.name for f in fields(Sampling)), "pipeline settings")
        given = {k: v for k, v in settings.items() if v is not None}
        self.sampling = replace(self.family.defaults(pipe), **given)
        self.family.check(pipe, self.sampling)
        self.calibration_file = calibration_file
        if calibration_file is not None:
            self._prompts()  # fail now on a missing or empty file
        self.transformer = pipe.transformer
        self.adapter = adapter_for(self.transformer)
        self._shift = scheduler_shift(pipe.scheduler.config,
                                      self.family.image_tokens(pipe, self.sampling))

    @property
    def name(self) -> str:
        return self.model

    @property
    def default_steps(self) -> int:
        return self.sampling.steps

    @property
    def shift(self) -> float:
        return self._shift

    def scheduler(self, steps: int) -> SchedulerMixin:
        """The pipeline's own solver, set as its ``__call__`` sets it (:meth:`Family.scheduler`)."""
        return self.family.scheduler(self.pipe, steps, self.shift)

    def guidance(self, guidance_scale: float | None) -> float:
        """Our sampler's scale for a guidance in the pipeline's convention (Flux-Dev's
        distilled guidance is a model input, not CFG: 1)."""
        g = self.sampling.guidance_scale if guidance_scale is None else guidance_scale
        return float(self.family.cfg_scale(g))

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one decoded sample: (3, H, W), or (3, F, H, W) for a video."""
        s = self.sampling
        return (3, s.height, s.width) if s.frames is None else (3, s.frames, s.height, s.width)

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.family.latent_shape(self.pipe, self.sampling))

    def _encode(self, prompts: list[str], sampling: Sampling) -> Conditioning:
        with torch.no_grad():
            cond = self.family.encode(self.pipe, prompts, sampling, self.device)
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in cond.items()}

    def encode(self, prompts: list[str]) -> Conditioning:
        """The conditioning of ``prompts`` (the keys the adapter's ``denoise`` reads)."""
        return self._encode(prompts, self.sampling)

    def conditioning(self, prompts: list[str], guidance_scale: float | None) -> Conditioning:
        sampling = self.sampling
        if guidance_scale is not None:
            sampling = replace(sampling, guidance_scale=guidance_scale)
        return self._encode(prompts, sampling)

    def to_latents(self, samples: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) or clips (B, 3, F, H, W) in [-1, 1] to transformer latents
        through the pipeline's VAE."""
        with torch.no_grad():
            z = self.family.encode_pixels(self.pipe, samples, self.sampling)
        return z.to(self.device, self.dtype)

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Transformer latents to pixels in [-1, 1], float32 on the CPU (one sample at a time,
        to bound the VAE's memory)."""
        with torch.no_grad():
            out = [self.family.decode(self.pipe, latents[i:i + 1], self.sampling).float().cpu()
                   for i in range(latents.shape[0])]
        return torch.cat(out).clamp(-1, 1)

    def _prompts(self) -> list[str]:
        if self.calibration_file is None:
            text = files("adatsq").joinpath("data", BUILTIN_PROMPTS).read_text()
        else:
            path = Path(self.calibration_file)
            if not path.is_file():
                raise ValueError(f"calibration prompt file {path} does not exist")
            text = path.read_text()
        prompts = [s.strip() for s in text.splitlines()]
        prompts = [p for p in prompts if p and not p.startswith("#")]
        if not prompts:
            raise ValueError(f"no prompts in {self.calibration_file}")
        return prompts

    def calibration_prompts(self, n: int, seed: int = 1) -> list[str]:
        """``n`` prompts drawn without replacement (a file with fewer is cycled through, each
        pass in a new order) from the calibration file."""
        pool = self._prompts()
        rng = random.Random(seed)
        out: list[str] = []
        while len(out) < n:
            out += rng.sample(pool, min(len(pool), n - len(out)))
        return out

    def selection_set(self, n: int, seed: int = 2) -> tuple[list[str], None]:
        """Calibration prompts for end-to-end selection; no task metric (fidelity to the FP
        samples decides, unless the user passes a metric)."""
        return self.calibration_prompts(n, seed), None

    def source(self) -> dict[str, Any]:
        """How to rebuild this pipeline (stored in artifact manifests): the hub id or folder,
        the transformer class and config, and the sampling settings."""
        config = json.loads(self.transformer.to_json_string())
        return {"model": self.model, "model_class": type(self.transformer).__name__,
                "config": {k: v for k, v in config.items() if not k.startswith("_")},
                "sampling": self.sampling.to_dict()}


def wrap(pipe, **settings) -> DiffusersPipeline:
    """A diffusers pipeline object the user loaded as a :class:`DiffusersPipeline` (its
    transformer is the same object: quantizing one quantizes the other)."""
    if type(pipe).__name__ not in FAMILIES:
        raise ValueError(f"{type(pipe).__name__} is not supported; supported pipelines: "
                         f"{', '.join(FAMILIES)}")
    origin = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or ""
    return DiffusersPipeline(pipe, reference(str(origin)) or type(pipe).__name__, **settings)


def load_diffusers_pipeline(model: str, transformer: nn.Module | None = None,
                            calibration_file: str | Path | None = None,
                            dtype: torch.dtype | None = None, **settings) -> DiffusersPipeline:
    """Loads a Flux, Z-Image or Wan diffusers pipeline from a folder or the hub (cache).

    On CUDA when available (bfloat16 by default), else on the CPU in float32.

    Args:
        model: a local folder (``save_pretrained`` layout) or a hub id.
        transformer: a transformer to use instead of the pipeline's (a quantized one from an
            artifact); the pipeline's own is then not loaded.
        calibration_file: see :class:`DiffusersPipeline`.
        dtype: weights' dtype (default: bfloat16 on CUDA, float32 on the CPU).
        **settings: sampling settings (see :class:`Sampling`).

    Raises:
        ValueError: a missing folder, a hub id not in the local cache when offline, or a pipeline
            class not in :data:`FAMILIES` (one line each).

    Example:
        >>> pipe = load_diffusers_pipeline("Tongyi-MAI/Z-Image-Turbo")  # doctest: +SKIP
        >>> pipe.default_steps  # doctest: +SKIP
        10
    """
    import diffusers

    kind, resolved, local_only = pipeline_class_of(model)
    if kind not in FAMILIES:
        raise ValueError(f"{model}: {kind} is not supported; supported pipelines: "
                         f"{', '.join(FAMILIES)}")
    family = FAMILIES[kind]
    if transformer is not None and type(transformer).__name__ != family.transformer_class:
        raise ValueError(f"{model} is a {kind}, which needs a {family.transformer_class}, not a "
                         f"{type(transformer).__name__}")
    cuda = torch.cuda.is_available()
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    kwargs: dict[str, Any] = {dtype_keyword(): dtype}
    if transformer is None:
        transformer = read_transformer(resolved, family.transformer_class, dtype, local_only,
                                       "cuda" if cuda else "cpu")
    if transformer is not None:
        kwargs["transformer"] = cast_like_diffusers(transformer, dtype)
    try:
        # the concrete class, not DiffusionPipeline: only it knows that Wan's transformer is an
        # optional component, which makes a passed transformer replace the stored one
        pipe = getattr(diffusers, kind).from_pretrained(resolved, local_files_only=local_only,
                                                        **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load {model}: {first_line(exc)}") from None
    if cuda:
        pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.eval().requires_grad_(False)
    log.info("loaded %s (%s) on %s", model, kind, pipe.device)
    return DiffusersPipeline(pipe, reference(model), calibration_file=calibration_file,
                             **settings)
