"""The pipeline of an embedded model: MiniLM prompts -> transformer -> pixels (no VAE)."""

from __future__ import annotations

import torch
from torch import nn

from adatsq.models import adapter_for
from adatsq.models.base import Conditioning
from adatsq.models.sampling import SamplingPipeline
from adatsq.zoo import clips, registry, scenes
from adatsq.zoo.codec import codec_for
from adatsq.zoo.registry import ZooEntry
from adatsq.zoo.text import MiniLMEncoder


class DigitPipeline(SamplingPipeline):
    """Generates digit scenes (or clips) with an embedded model.

    Args:
        entry: the zoo entry (sampling defaults, shapes).
        transformer: its transformer (full precision or quantized).
        task: the evaluation task of the entry (:func:`adatsq.eval.tasks.task_for`), whose
            metric end-to-end selection uses; None: selection by fidelity alone.

    Example:
        >>> pipe = DigitPipeline.from_zoo("flux-digits")
        >>> images = pipe.generate(["a red 3"], seed=0, steps=4)
        >>> tuple(images.shape)
        (1, 3, 16, 16)
    """

    def __init__(self, entry: ZooEntry, transformer: nn.Module, task=None):
        self.entry = entry
        self.transformer = transformer
        self.adapter = adapter_for(transformer)
        self.codec = codec_for(entry.model_class)
        self.encoder = MiniLMEncoder(entry.text_length)
        self.task = task

    @classmethod
    def from_zoo(cls, name: str, task=None) -> DigitPipeline:
        entry = registry.get(name)
        return cls(entry, entry.load_model(), task)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def default_steps(self) -> int:
        return self.entry.steps

    @property
    def shift(self) -> float:
        return self.entry.shift

    @property
    def solver(self) -> str:
        return self.entry.solver

    def guidance(self, guidance_scale: float | None) -> float:
        return float(self.entry.guidance_scale if guidance_scale is None else guidance_scale)

    def encode(self, prompts: list[str]) -> Conditioning:
        cond = self.codec.text_conditioning(*self.encoder(prompts))
        return {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in cond.items()}

    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.to_latents(torch.zeros(1, *self.entry.sample_shape)).shape[1:])

    def to_latents(self, samples: torch.Tensor) -> torch.Tensor:
        return self.codec.to_latents(samples)

    def from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.from_latents(latents, self.entry.sample_shape).clamp(-1, 1)

    def source(self) -> dict:
        """How to rebuild this transformer's skeleton (stored in artifact manifests)."""
        return {"model": self.entry.name, "model_class": self.entry.model_class,
                "config": dict(self.entry.transformer_config)}

    def _calibration_specs(self, n: int, seed: int) -> tuple[list[str], list]:
        make = clips.calibration_clip_specs if self.entry.is_video else scenes.calibration_scenes
        pairs = make(n, seed)
        return [p for p, _ in pairs], [s for _, s in pairs]

    def calibration_prompts(self, n: int, seed: int = 1) -> list[str]:
        """Calibration prompts, disjoint from every evaluation prompt set."""
        return self._calibration_specs(n, seed)[0]

    def selection_set(self, n: int, seed: int = 2):
        """Prompts disjoint from evaluation and a task metric of their samples (higher is better).

        Used by end-to-end selection (AdaTSQ Sec. 3.2.4): the task's total (DigitEval for
        scenes, the video score for clips) on calibration prompts; None without a task.
        """
        prompts, specs = self._calibration_specs(n, seed)
        return prompts, None if self.task is None else self.task.selection_metric(specs)
