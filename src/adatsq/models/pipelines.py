"""Full diffusers pipelines (Flux, Z-Image, Wan) named by a local folder or a hub id.

:class:`DiffusersPipeline` gives a diffusers pipeline the interface the quantization flow uses
(that of :class:`adatsq.zoo.pipeline.DigitPipeline`): prompts are encoded by the pipeline's own
``encode_prompt``; our sampler (:func:`adatsq.models.sampling.sample`) steps the pipeline's own
solver set as its ``__call__`` sets it (Euler on shifted sigmas ``1 .. 1/n`` for Flux and Z-Image,
UniPC for Wan); the pipeline's VAE decodes the latents with the pipeline's latent normalization.
What differs between pipeline classes (encoder arguments, latent layout, VAE scaling, guidance,
solver, defaults) is one small :class:`Family`
each, registered by its pipeline class name (:func:`register_family`) in the file of its
transformer class, beside that class's adapter (``models/flux.py``, ``zimage.py``, ``wan.py``).

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
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from adatsq import io
from adatsq.models.base import Conditioning, adapter_for
from adatsq.models.sampling import SamplingPipeline, make_scheduler
from adatsq.strict import check_keys

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


def reference(model: str) -> str:
    """How an artifact records the pipeline it was made from: a hub id, or a folder as the
    user gave it when relative; an absolute folder by its name alone, so that no path of the
    maker's machine is stored (``load(path, base=...)`` names the folder where it is).

    Example:
        >>> reference("/home/me/models/flux-tiny"), reference("black-forest-labs/FLUX.1-dev")
        ('flux-tiny', 'black-forest-labs/FLUX.1-dev')
    """
    path = Path(model).expanduser()
    return path.name if path.is_absolute() else model


def wrap(pipe, **settings) -> DiffusersPipeline:
    """A diffusers pipeline object the user loaded as a :class:`DiffusersPipeline` (its
    transformer is the same object: quantizing one quantizes the other)."""
    if type(pipe).__name__ not in FAMILIES:
        raise ValueError(f"{type(pipe).__name__} is not supported; supported pipelines: "
                         f"{', '.join(FAMILIES)}")
    origin = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or ""
    return DiffusersPipeline(pipe, reference(str(origin)) or type(pipe).__name__, **settings)


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


def read_transformer(resolved: str, model_class: str, dtype: torch.dtype,
                     local_only: bool, device: str = "cpu") -> nn.Module | None:
    """The transformer of a pipeline folder or cached hub snapshot, read tensor by tensor into a
    meta-device skeleton (:func:`adatsq.io.load_weights_`): diffusers' own loader maps the
    files, and the pages it touches stay resident beside the copy it makes, up to two copies of
    the weights. Tensors go to ``device`` one at a time. None where the transformer is not
    stored as safetensors (diffusers loads it).
    """
    import diffusers

    if Path(resolved).is_dir():
        folder = Path(resolved) / "transformer"
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(resolved, allow_patterns=["transformer/*"],
                                            local_files_only=local_only)) / "transformer"
        except Exception:  # the hub's errors have many types; diffusers reports them better
            return None
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():  # shards
        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = [folder / "diffusion_pytorch_model.safetensors"]
    cls = getattr(diffusers, model_class)
    if not all(f.is_file() for f in files) or not (folder / "config.json").is_file():
        return None
    with io.empty_weights():
        skeleton = cls.from_config(cls.load_config(folder))
    return io.load_weights_(skeleton, files, dtype, device).eval().requires_grad_(False)


def check_transformer(model: str, model_class: str, config: dict[str, Any]) -> None:
    """Raises ``ValueError`` naming the first difference when the transformer class or config
    (as an artifact's manifest records them) is not that of ``model``'s own transformer (the
    folder's or cached hub snapshot's ``transformer/config.json``; keys it omits take defaults).
    """
    _, resolved, local_only = _pipeline_class(model)
    if Path(resolved).is_dir():
        stored = Path(resolved) / "transformer" / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            stored = Path(hf_hub_download(resolved, "transformer/config.json",
                                          local_files_only=local_only))
        except Exception as exc:  # the hub's errors have many types; all mean the same here
            raise ValueError(f"cannot read the transformer config of {model} "
                             f"({_first_line(exc)})") from None
    if not stored.is_file():
        raise ValueError(f"{model} has no transformer/config.json to check the artifact against")
    own = json.loads(stored.read_text())
    if own.get("_class_name") not in (None, model_class):
        raise ValueError(f"the artifact holds a {model_class} but {model} has a "
                         f"{own['_class_name']}")
    for key, value in own.items():
        if not key.startswith("_") and key in config and config[key] != value:
            raise ValueError(f"the artifact's transformer has {key}={config[key]!r} but that "
                             f"of {model} has {key}={value!r}")


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
    if transformer is None:
        transformer = read_transformer(resolved, family.transformer_class, dtype, local_only,
                                       "cuda" if cuda else "cpu")
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
    return DiffusersPipeline(pipe, reference(model), calibration_file=calibration_file,
                             **settings)
