"""Full diffusers pipelines (Flux, Z-Image, Wan) named by a local folder or a hub id.

:class:`DiffusersPipeline` gives a diffusers pipeline the interface the quantization flow uses
(that of :class:`adatsq.zoo.pipeline.DigitPipeline`): prompts are encoded by the pipeline's own
``encode_prompt``; our Euler sampler (:func:`adatsq.models.sampling.sample`) integrates on the
pipeline's noise schedule (its scheduler's shift, sigmas ``1 .. 1/n``); the pipeline's VAE decodes
the latents with the pipeline's latent normalization. What differs between pipeline classes
(encoder arguments, latent layout, VAE scaling, guidance, defaults) is one small :class:`Family`
each, keyed by the pipeline class name; the transformer call itself stays in the adapters.

Loading reads only local files when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached, so a
hub id works offline once it is in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import socket
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import torch
from torch import nn

from adatsq.models.base import Adapter, Conditioning, adapter_for
from adatsq.models.patches import grid_ids, pack, unpack
from adatsq.models.sampling import StepCallback, sample, sigmas

log = logging.getLogger(__name__)

BUILTIN_PROMPTS = "calibration_prompts.txt"
"""GenEval-style calibration prompts shipped in ``adatsq/data`` (six categories, 34 each)."""


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

    def cfg_scale(self, guidance_scale: float) -> float:
        """The classifier-free guidance scale of our sampler (1: no unconditional pass)."""
        return 1.0

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


class _KLFamily(Family):
    """Image pipelines with an ``AutoencoderKL`` (latents ``(z - shift) * scale``), 2x2 patches."""

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

    def _to_vae(self, pipe, z):
        config = pipe.vae.config
        z = z.to(pipe.vae.device, pipe.vae.dtype)
        return z / config.scaling_factor + (config.shift_factor or 0.0)

    def _from_vae(self, pipe, z):
        config = pipe.vae.config
        return (z - (config.shift_factor or 0.0)) * config.scaling_factor

    def _vae_encode(self, pipe, pixels):
        pixels = pixels.to(pipe.vae.device, pipe.vae.dtype)
        return self._from_vae(pipe, pipe.vae.encode(pixels).latent_dist.mode())


class FluxFamily(_KLFamily):
    """``FluxPipeline``: CLIP pooled + T5 token states, latents packed 2x2 into tokens.

    Flux-Dev (``guidance_embeds``) takes its guidance as an input (no unconditional pass):
    50 steps, guidance 3.5; Flux-Schnell: 4 steps, no guidance, 256 text tokens.
    """

    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"

    def defaults(self, pipe):
        if pipe.transformer.config.guidance_embeds:
            return Sampling(steps=50, guidance_scale=3.5, height=1024, width=1024)
        return Sampling(steps=4, guidance_scale=0.0, height=1024, width=1024,
                        max_sequence_length=256)

    def encode(self, pipe, prompts, sampling, device):
        states, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                               max_sequence_length=sampling.max_sequence_length)
        h, w = self.grid(pipe, sampling)
        b = len(prompts)
        cond = {"encoder_hidden_states": states, "pooled_projections": pooled,
                "img_ids": grid_ids(h // 2, w // 2).to(device).expand(b, -1, -1)}
        if pipe.transformer.config.guidance_embeds:
            cond["guidance"] = torch.full((b,), float(sampling.guidance_scale), device=device)
        return cond

    def latent_shape(self, pipe, sampling):
        h, w = self.grid(pipe, sampling)
        return ((h // 2) * (w // 2), pipe.transformer.config.in_channels)

    def decode(self, pipe, latents, sampling):
        h, w = self.grid(pipe, sampling)
        z = unpack(latents, latents.shape[-1] // 4, h, w, 2)
        return pipe.vae.decode(self._to_vae(pipe, z), return_dict=False)[0]

    def encode_pixels(self, pipe, pixels, sampling):
        return pack(self._vae_encode(pipe, pixels), 2)


class ZImageFamily(_KLFamily):
    """``ZImagePipeline``: a Qwen3 chat-formatted prompt's second-to-last hidden states.

    The prompts' states have their own lengths; they are zero-padded to ``max_sequence_length``
    with a ``cap_mask`` marking the valid tokens (the transformer sees only those). Defaults
    follow Z-Image-Turbo (few steps, no classifier-free guidance); the pipeline's guidance ``g``
    means ``pos + g (pos - neg)``, our sampler's scale ``g + 1``.
    """

    pipeline_class = "ZImagePipeline"
    transformer_class = "ZImageTransformer2DModel"

    def defaults(self, pipe):
        return Sampling(steps=10, guidance_scale=0.0, height=1024, width=1024)

    def cfg_scale(self, guidance_scale):
        return guidance_scale + 1.0

    def encode(self, pipe, prompts, sampling, device):
        L = sampling.max_sequence_length
        # encode_prompt rewrites the list it is given with the chat template: pass a copy
        states, _ = pipe.encode_prompt(list(prompts), device=device,
                                       do_classifier_free_guidance=False, max_sequence_length=L)
        feats = states[0].new_zeros(len(states), L, states[0].shape[-1])  # (B, L, D)
        mask = torch.zeros(len(states), L, dtype=torch.bool, device=feats.device)
        for i, s in enumerate(states):
            feats[i, :len(s)] = s
            mask[i, :len(s)] = True
        return {"cap_feats": feats, "cap_mask": mask}

    def latent_shape(self, pipe, sampling):
        return (pipe.transformer.config.in_channels, *self.grid(pipe, sampling))

    def decode(self, pipe, latents, sampling):
        return pipe.vae.decode(self._to_vae(pipe, latents), return_dict=False)[0]

    def encode_pixels(self, pipe, pixels, sampling):
        return self._vae_encode(pipe, pixels)


class WanFamily(Family):
    """``WanPipeline`` (Wan 2.1, and 2.2 with a single transformer): UMT5 states zero-padded to
    ``max_sequence_length``; video latents normalized by the VAE's ``latents_mean``/``std``.

    Defaults: 25 steps, guidance 5 (``neg + g (pos - neg)``), 81 frames of 480x832. Two-expert
    Wan 2.2 (``transformer_2``) and TI2V's per-token timesteps (``expand_timesteps``) are refused.
    """

    pipeline_class = "WanPipeline"
    transformer_class = "WanTransformer3DModel"

    def defaults(self, pipe):
        return Sampling(steps=25, guidance_scale=5.0, height=480, width=832, frames=81)

    def check(self, pipe, sampling):
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("expand_timesteps"):
            raise ValueError("two-transformer Wan 2.2 (A14B) and Wan 2.2 TI2V are not supported; "
                             "use a Wan 2.1 or single-transformer Wan 2.2 pipeline")
        config = pipe.vae.config
        s, t = config.scale_factor_spatial, config.scale_factor_temporal
        if sampling.height % (2 * s) or sampling.width % (2 * s):
            raise ValueError(f"height and width must be multiples of {2 * s} for WanPipeline, "
                             f"got {sampling.height}x{sampling.width}")
        if sampling.frames is None or (sampling.frames - 1) % t:
            raise ValueError(f"WanPipeline needs frames = 1 + a multiple of {t} "
                             f"(e.g. {1 + 4 * t}), got {sampling.frames}")

    def cfg_scale(self, guidance_scale):
        return guidance_scale if guidance_scale > 1.0 else 1.0

    def encode(self, pipe, prompts, sampling, device):
        states, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                       max_sequence_length=sampling.max_sequence_length,
                                       device=device)
        return {"encoder_hidden_states": states}

    def latent_shape(self, pipe, sampling):
        config = pipe.vae.config
        s, t = config.scale_factor_spatial, config.scale_factor_temporal
        return (pipe.transformer.config.in_channels, (sampling.frames - 1) // t + 1,
                sampling.height // s, sampling.width // s)

    def image_tokens(self, pipe, sampling):
        _, f, h, w = self.latent_shape(pipe, sampling)
        return f * (h // 2) * (w // 2)

    def _stats(self, pipe, like):
        config = pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
        return mean.to(like.device, like.dtype), std.to(like.device, like.dtype)

    def decode(self, pipe, latents, sampling):
        z = latents.to(pipe.vae.device, pipe.vae.dtype)
        mean, std = self._stats(pipe, z)
        return pipe.vae.decode(z * std + mean, return_dict=False)[0]

    def encode_pixels(self, pipe, pixels, sampling):
        if pixels.dim() == 4:  # an image is a one-frame clip
            pixels = pixels.unsqueeze(2)
        z = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mode()
        mean, std = self._stats(pipe, z)
        return (z - mean) / std


FAMILIES: dict[str, type[Family]] = {f.pipeline_class: f for f in (FluxFamily, ZImageFamily,
                                                                    WanFamily)}
"""Supported diffusers pipeline classes."""


class PixelAdapter:
    """The transformer's adapter, with pixels <-> latents through the pipeline's VAE.

    Everything else (layers, the transformer call, timesteps) is the wrapped adapter's; this is
    what lets Fisher estimation re-noise a real pipeline's generations in its latent space.
    """

    def __init__(self, adapter: Adapter, pipeline: DiffusersPipeline):
        self.adapter = adapter
        self.pipeline = pipeline

    def __getattr__(self, name):
        if name in ("adapter", "pipeline"):  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.adapter, name)

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) or clips (B, 3, F, H, W) in [-1, 1] to transformer latents."""
        p = self.pipeline
        with torch.no_grad():
            z = p.family.encode_pixels(p.pipe, images, p.sampling)
        return z.to(p.device, p.dtype)

    def from_latents(self, latents: torch.Tensor, sample_shape=None) -> torch.Tensor:
        """Transformer latents to pixels in [-1, 1], float32 on the CPU (one sample at a time,
        to bound the VAE's memory)."""
        p = self.pipeline
        with torch.no_grad():
            out = [p.family.decode(p.pipe, latents[i:i + 1], p.sampling).float().cpu()
                   for i in range(latents.shape[0])]
        return torch.cat(out).clamp(-1, 1)


class DiffusersPipeline:
    """A diffusers Flux, Z-Image or Wan pipeline behind the interface the quantization flow uses.

    Args:
        pipe: the diffusers pipeline (any class of :data:`FAMILIES`).
        model: the hub id or folder it came from (recorded in artifacts).
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

    def __init__(self, pipe, model: str, calibration_file: str | Path | None = None,
                 **settings):
        kind = type(pipe).__name__
        if kind not in FAMILIES:
            raise ValueError(f"{model}: {kind} is not supported; supported pipelines: "
                             f"{', '.join(FAMILIES)}")
        self.pipe = pipe
        self.model = model
        self.family = FAMILIES[kind]()
        unknown = set(settings) - {f.name for f in fields(Sampling)}
        if unknown:
            raise ValueError(f"unknown pipeline settings {sorted(unknown)}; known: "
                             f"{', '.join(f.name for f in fields(Sampling))}")
        given = {k: v for k, v in settings.items() if v is not None}
        self.sampling = replace(self.family.defaults(pipe), **given)
        self.family.check(pipe, self.sampling)
        self.calibration_file = calibration_file
        if calibration_file is not None:
            self._prompts()  # fail now on a missing or empty file
        self.transformer = pipe.transformer
        self.adapter = PixelAdapter(adapter_for(self.transformer), self)
        self.shift = scheduler_shift(pipe.scheduler.config,
                                     self.family.image_tokens(pipe, self.sampling))
        self._null: Conditioning | None = None

    @property
    def name(self) -> str:
        return self.model

    @property
    def default_steps(self) -> int:
        return self.sampling.steps

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype (diffusers skips the modules it keeps in float32)."""
        return self.transformer.dtype

    @property
    def cfg_scale(self) -> float:
        """The classifier-free guidance scale sampling uses (1: unguided; Flux-Dev's distilled
        guidance is a model input, not CFG)."""
        return float(self.family.cfg_scale(self.sampling.guidance_scale))

    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one decoded sample: (3, H, W), or (3, F, H, W) for a video."""
        s = self.sampling
        return (3, s.height, s.width) if s.frames is None else (3, s.frames, s.height, s.width)

    def _encode(self, prompts: list[str], sampling: Sampling) -> Conditioning:
        with torch.no_grad():
            cond = self.family.encode(self.pipe, prompts, sampling, self.device)
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in cond.items()}

    def encode(self, prompts: list[str]) -> Conditioning:
        """The conditioning of ``prompts`` (the keys the adapter's ``denoise`` reads)."""
        return self._encode(prompts, self.sampling)

    def null_conditioning(self) -> Conditioning:
        if self._null is None:
            self._null = self.encode([""])
        return self._null

    def schedule(self, steps: int | None = None) -> torch.Tensor:
        """Timestep values (T,) the transformer receives at each step."""
        return self.adapter.model_timestep(sigmas(steps or self.sampling.steps, self.shift,
                                                  "linear"))

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """Initial latents; prompt ``i`` always gets the same noise for a given seed."""
        shape = self.family.latent_shape(self.pipe, self.sampling)
        gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
        return noise.to(self.device, self.dtype)

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int = 4,
                 callback: StepCallback | None = None,
                 progress: bool | str = False) -> torch.Tensor:
        """Images (B, 3, H, W), or clips (B, 3, F, H, W) for Wan, in [-1, 1] (float32, CPU)
        for ``prompts``; deterministic given ``seed``.

        Args:
            guidance_scale: in the pipeline's own convention (see :class:`Sampling`).
        """
        if not prompts:
            raise ValueError("no prompts to generate")
        steps = steps or self.sampling.steps
        sampling = self.sampling
        if guidance_scale is not None:
            sampling = replace(sampling, guidance_scale=guidance_scale)
        scale = self.family.cfg_scale(sampling.guidance_scale)
        uncond = self.null_conditioning() if scale != 1.0 else None
        noise = self.noise(len(prompts), seed)
        out = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            latents = sample(self.adapter, self.transformer, noise[i:i + batch_size],
                             self._encode(chunk, sampling), uncond, steps, scale,
                             shift=self.shift, callback=callback, progress=progress,
                             spacing="linear")
            out.append(self.adapter.from_latents(latents, self.sample_shape()))
        return torch.cat(out)

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

    def source(self) -> dict[str, Any]:
        """How to rebuild this pipeline (stored in artifact manifests): the hub id or folder,
        the transformer class and config, and the sampling settings."""
        config = json.loads(self.transformer.to_json_string())
        return {"model": self.model, "model_class": type(self.transformer).__name__,
                "config": {k: v for k, v in config.items() if not k.startswith("_")},
                "sampling": self.sampling.to_dict()}


# -- loading ------------------------------------------------------------------------------------

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within ``timeout`` seconds."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pipeline_class(model: str) -> tuple[str, str, bool]:
    """(pipeline class name, resolved model, local files only) of a folder or hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json); "
                             "write one with pipeline.save_pretrained(folder)")
        return json.loads(index.read_text()).get("_class_name", "?"), str(path.resolve()), True
    if path.exists() or not _REPO_ID.match(model):
        raise ValueError(f"{model}: no such pipeline folder (and not a hub id 'owner/name')")
    from huggingface_hub import hf_hub_download

    offline = _env_offline() or not hub_reachable()
    try:
        index = hf_hub_download(model, "model_index.json", local_files_only=offline)
    except Exception as exc:  # the hub's errors have many types; all mean the same here
        if offline:
            raise ValueError(f"{model} is neither a local folder nor in the local Hugging Face "
                             f"cache (offline); download it first ('hf download {model}') or "
                             "pass a folder") from None
        raise ValueError(f"cannot fetch {model} from the Hugging Face hub "
                         f"({_first_line(exc)}); check the id or pass a folder") from None
    return json.loads(Path(index).read_text()).get("_class_name", "?"), model, offline


def _dtype_keyword() -> str:
    """``dtype`` for diffusers versions that renamed ``torch_dtype``."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"


def _cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` in ``dtype``, except the modules its class keeps in float32 (as diffusers'
    ``from_pretrained`` does)."""
    if next(model.parameters()).dtype == dtype:
        return model
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.float()
    return model


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

    kind, resolved, local_only = _pipeline_class(model)
    if kind not in FAMILIES:
        raise ValueError(f"{model}: {kind} is not supported; supported pipelines: "
                         f"{', '.join(FAMILIES)}")
    family = FAMILIES[kind]
    if transformer is not None and type(transformer).__name__ != family.transformer_class:
        raise ValueError(f"{model} is a {kind}, which needs a {family.transformer_class}, not a "
                         f"{type(transformer).__name__}")
    cuda = torch.cuda.is_available()
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    kwargs: dict[str, Any] = {_dtype_keyword(): dtype}
    if transformer is not None:
        kwargs["transformer"] = _cast(transformer, dtype)
    try:
        # the concrete class, not DiffusionPipeline: only it knows that Wan's transformer is an
        # optional component, which makes a passed transformer replace the stored one
        pipe = getattr(diffusers, kind).from_pretrained(resolved, local_files_only=local_only,
                                                        **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load {model}: {_first_line(exc)}") from None
    if cuda:
        pipe.to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.eval().requires_grad_(False)
    log.info("loaded %s (%s) on %s", model, kind, pipe.device)
    return DiffusersPipeline(pipe, resolved, calibration_file=calibration_file, **settings)
