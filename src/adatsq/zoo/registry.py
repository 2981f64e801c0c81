"""The embedded models: what each is, how it is built, trained and loaded.

A zoo name is a base name of :data:`ENTRIES` or a variant of one: ``<base>@ma<strength>`` (e.g.
``flux-digits@ma30``) is the base model with massive activations of that strength
(:func:`adatsq.models.massive.massive_activations_`: the same function, a few hidden channels
``strength`` times larger, absorbable by channel balancing); ``<base>@mb<strength>`` the same with
bias-compensated constant offsets, which channel balancing cannot undo.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from adatsq.files import atomic_path, write_json
from adatsq.models import adapter_for
from adatsq.models.base import modulated_classes, no_modulation_sites
from adatsq.models.massive import massive_activations_
from adatsq.models.sampling import sample, solver_scheduler
from adatsq.zoo import clips, scenes
from adatsq.zoo.codec import codec_for
from adatsq.zoo.text import MiniLMEncoder

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ZooEntry:
    """One embedded model.

    Attributes:
        name: zoo name, e.g. ``"flux-digits"``.
        model_class: diffusers class name of the transformer.
        transformer_config: keyword arguments of that class.
        weights: file stem under ``zoo/weights`` (several entries may share weights).
        steps: default number of sampling steps.
        guidance_scale: classifier-free guidance scale (1.0 = off).
        shift: flow shift of the sampling schedule, ``sigma -> shift sigma / (1 + (shift - 1)
            sigma)`` (1.0 = none; more steps at high noise above 1, as Wan2.1 samples).
        text_length: text tokens (MiniLM positions, padded).
        solver: the sampler's solver (:data:`adatsq.models.sampling.SOLVERS`): ``"euler"``
            as the Flux and Z-Image pipelines sample, ``"unipc"`` as Wan's does.
        training: :class:`~adatsq.zoo.train.TrainConfig` fields that differ from its defaults
            for this model (the shipped weights were trained with them).
        frames: frames per sample of a text-to-video model (0: an image model on digit scenes;
            otherwise clips of moving digits from :mod:`adatsq.zoo.clips`).
        description: one line for ``adatsq zoo``.
        massive_strength: strength of the massive activations :meth:`load_model` gives the
            model (None: the trained model as is); set by :func:`get` for ``@ma``/``@mb`` names.
        massive_variant: their kind, ``"absorbable"`` (``@ma``) or ``"bias"`` (``@mb``).
    """

    name: str
    model_class: str
    transformer_config: dict = field(hash=False)
    weights: str
    steps: int
    guidance_scale: float
    shift: float = 1.0
    text_length: int = 10
    solver: str = "euler"
    frames: int = 0
    description: str = ""
    training: dict = field(default_factory=dict, hash=False)
    massive_strength: float | None = None
    massive_variant: str = "absorbable"

    @property
    def is_video(self) -> bool:
        return self.frames > 0

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one generated sample: (3, H, W) images or (3, F, H, W) clips."""
        side = (scenes.CANVAS, scenes.CANVAS)
        return (3, self.frames, *side) if self.is_video else (3, *side)

    def all_prompts(self) -> list[str]:
        """Every prompt of this model's grammar."""
        return clips.all_clip_prompts() if self.is_video else scenes.all_prompts()

    def training_batch(self, rng: np.random.Generator,
                       batch_size: int) -> tuple[list[str], np.ndarray]:
        if self.is_video:
            return clips.training_clip_batch(rng, batch_size)
        return scenes.training_batch(rng, batch_size)

    def build_model(self) -> torch.nn.Module:
        import diffusers

        return getattr(diffusers, self.model_class)(**self.transformer_config)

    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.weights}.safetensors"

    def prompt_table(self, cache: Path | None = None) -> dict[str, int | torch.Tensor]:
        """Embeddings of every prompt of the scene grammar and of the empty prompt (row 0)."""
        if cache is not None and cache.exists():
            flat = load_file(str(cache))
        else:
            prompts = [""] + self.all_prompts()
            states, pooled = MiniLMEncoder(self.text_length)(prompts)
            flat = {"states": states, "pooled": pooled}
            if cache is not None:
                with atomic_path(cache) as tmp:
                    save_file(flat, str(tmp))
        prompts = [""] + self.all_prompts()
        return {"index": {p: i for i, p in enumerate(prompts)}, **flat}

    def training_loss(self, model, rng: np.random.Generator, gen: torch.Generator, batch_size: int,
                      cond_dropout: float, table: dict) -> torch.Tensor:
        """Flow-matching loss on one batch of training scenes (velocity target noise - x0)."""
        prompts, images = self.training_batch(rng, batch_size)
        rows = torch.tensor([table["index"][p] for p in prompts])
        drop = torch.from_numpy(rng.random(batch_size) < cond_dropout)
        rows = torch.where(drop, torch.zeros_like(rows), rows)
        adapter, codec = adapter_for(model), codec_for(self.model_class)
        x0 = codec.to_latents(torch.from_numpy(images))  # (B, N, C*p*p)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(batch_size, generator=gen))  # logit-normal, as SD3
        s = sigma.view(-1, *[1] * (x0.dim() - 1))
        xt = (1 - s) * x0 + s * noise
        cond = codec.text_conditioning(table["states"][rows], table["pooled"][rows])
        out = adapter.denoise(model, xt, cond, sigma)
        return torch.nn.functional.mse_loss(out, noise - x0)

    def export(self, weights: Path, train_config, history: Path | None = None,
               init: Path | None = None) -> Path:
        """Copies trained weights into the package with a JSON description beside them
        (and a summary of the run from its ``history.jsonl``: steps, wall time, final loss).

        ``init``: the weights the run started from; the description of those weights (the JSON
        beside them, if any) is kept under ``"init"``, so the record covers every run.
        """
        from dataclasses import asdict

        if self.massive_strength is not None:
            raise ValueError(f"{self.name} is a variant of the weights {self.weights!r}; "
                             "train and export its base model")
        WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
        state = load_file(str(weights))
        target = self.weights_path()
        with atomic_path(target) as tmp:
            save_file({k: v.to(torch.float32).contiguous() for k, v in state.items()}, str(tmp))
        meta = {"model_class": self.model_class, "transformer_config": self.transformer_config,
                "train_config": asdict(train_config)}
        if history is not None and history.exists():
            records = [json.loads(line) for line in history.read_text().splitlines() if line]
            if records:
                tail = records[-20:]
                meta["training"] = {"steps": records[-1]["step"],
                                    "wall_seconds": records[-1]["elapsed"],
                                    "final_loss": sum(r["loss"] for r in tail) / len(tail)}
        if init is not None:
            before = Path(init).with_suffix(".json")
            meta["init"] = json.loads(before.read_text()) if before.exists() else {}
        write_json(meta, target.with_suffix(".json"), indent=2)
        return target

    def load_model(self) -> torch.nn.Module:
        """The trained transformer (with its massive activations, if any), in eval mode."""
        path = self.weights_path()
        if not path.exists():
            raise FileNotFoundError(f"weights of {self.name!r} are missing at {path}; "
                                    f"train them with 'python -m adatsq.zoo.train "
                                    f"{self.name.partition('@')[0]}'")
        model = self.build_model()
        model.load_state_dict(load_file(str(path)))
        model.eval().requires_grad_(False)
        if self.massive_strength is not None:
            massive_activations_(model, self.massive_strength, probe=self.probe,
                                 variant=self.massive_variant)
        return model

    def probe(self, model: torch.nn.Module, prompts: int = 8, steps: int = 4) -> None:
        """Samples ``prompts`` training prompts (seed 0, ``steps`` steps): the inputs on which
        :func:`~adatsq.models.massive.massive_activations_` measures which channels are large
        (training prompts, not the calibration or evaluation ones that measure the result)."""
        codec = codec_for(self.model_class)
        texts, _ = self.training_batch(np.random.default_rng(0), prompts)
        encoder = MiniLMEncoder(self.text_length)
        shape = codec.to_latents(torch.zeros(1, *self.sample_shape)).shape[1:]
        noise = torch.randn(prompts, *shape, generator=torch.Generator().manual_seed(0))
        sample(adapter_for(model), model, noise, codec.text_conditioning(*encoder(texts)),
               codec.text_conditioning(*encoder([""])), steps, self.guidance_scale,
               scheduler=solver_scheduler(self.solver, steps, self.shift))


_FLUX_DIGITS = dict(patch_size=1, in_channels=48, num_layers=2, num_single_layers=3,
                    attention_head_dim=32, num_attention_heads=4, joint_attention_dim=384,
                    pooled_projection_dim=384, axes_dims_rope=(8, 12, 12))

_ZIMAGE_DIGITS = dict(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=12, dim=128,
                      n_layers=4, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=384,
                      axes_dims=[8, 12, 12], axes_lens=[64, 16, 16])

_WAN_DIGITS = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32,
                   in_channels=12, out_channels=12, text_dim=384, freq_dim=64, ffn_dim=384,
                   num_layers=4, rope_max_seq_len=32)

ENTRIES = {
    e.name: e
    for e in (
        ZooEntry("flux-digits", "FluxTransformer2DModel", _FLUX_DIGITS, "flux-digits", steps=50,
                 guidance_scale=3.0,
                 description="FluxTransformer2DModel (2 double + 3 single blocks, width 128) "
                             "trained on prompted digit scenes; 50 steps like Flux-Dev"),
        ZooEntry("flux-digits-schnell", "FluxTransformer2DModel", _FLUX_DIGITS, "flux-digits",
                 steps=4, guidance_scale=2.0,
                 description="flux-digits sampled in 4 steps, the schedule of Flux-Schnell "
                             "(CFG 2: the best of 1, 2, 3 at 4 steps)"),
        ZooEntry("zimage-digits", "ZImageTransformer2DModel", _ZIMAGE_DIGITS, "zimage-digits",
                 steps=10, guidance_scale=3.0, training={"steps": 4500, "batch_size": 64},
                 description="ZImageTransformer2DModel (1+1 refiner + 4 main blocks, width 128) "
                             "trained on prompted digit scenes; 10 steps like Z-Image"),
        ZooEntry("wan-digits", "WanTransformer3DModel", _WAN_DIGITS, "wan-digits", steps=25,
                 guidance_scale=5.0, shift=5.0, solver="unipc", frames=clips.FRAMES,
                 # shipped weights: 3500 steps, resumed to 6500 (a warm restart of the cosine),
                 # then trained on from those weights (--init) for 8000 more steps (its first
                 # 2500 under a 5000-step cosine, then resumed under the 8000-step one)
                 training={"steps": 8000, "batch_size": 64},
                 description="WanTransformer3DModel (4 blocks, width 128) trained on clips of "
                             "moving digits (text-to-video, 8 frames); 25 steps, CFG 5 and "
                             "flow shift 5 like Wan2.1"),
    )
}


MASSIVE = "ma"
"""The suffix ``@ma<strength>`` of absorbable massive-activation variants."""
MASSIVE_SUFFIXES = {MASSIVE: "absorbable", "mb": "bias"}
"""Suffix -> kind of massive activations (:data:`adatsq.models.massive.VARIANTS`)."""


def is_zoo_name(name: str) -> bool:
    """Whether ``name`` names an embedded model: a base name, alone or with a ``@`` suffix
    (whether the suffix is valid, :func:`get` says)."""
    return name.partition("@")[0] in ENTRIES


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name`` (a base name, ``<base>@ma<strength>`` or
    ``<base>@mb<strength>``).

    Raises ``KeyError`` for an unknown base name or suffix, ``ValueError`` for a bad strength or
    a base model without modulation sites.

    Example:
        >>> entry = get("flux-digits@ma30")
        >>> entry.name, entry.weights, entry.massive_strength
        ('flux-digits@ma30', 'flux-digits', 30.0)
    """
    base, at, suffix = name.partition("@")
    if base not in ENTRIES:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ENTRIES))} "
                       f"(and <name>@ma<strength> or <name>@mb<strength>)")
    entry = ENTRIES[base]
    if not at:
        return entry
    kind = suffix[:2]
    if kind not in MASSIVE_SUFFIXES:
        raise KeyError(f"unknown suffix '@{suffix}' in {name!r}; known: @ma<strength> and "
                       f"@mb<strength>, e.g. {base}@{MASSIVE}30")
    try:
        strength = float(suffix[2:])
    except ValueError:
        strength = math.nan
    if not (math.isfinite(strength) and strength > 1):
        raise ValueError(f"bad massive-activation strength in {name!r}: must be a number > 1, "
                         f"e.g. {base}@{kind}30")
    if entry.model_class not in modulated_classes():
        raise ValueError(f"{name!r}: {no_modulation_sites(entry.model_class)}")
    variant = MASSIVE_SUFFIXES[kind]  # a family without modulation shifts refuses "bias" on load
    return dataclasses.replace(
        entry, name=name, massive_strength=strength, massive_variant=variant,
        description=f"{base} with {variant} massive activations of strength {strength:g} "
                    "(same function)")
