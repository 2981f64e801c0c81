"""The pipeline of an embedded model: MiniLM prompts -> transformer -> pixels (no VAE)."""

from __future__ import annotations

import torch
from torch import nn

from adatsq.models import adapter_for
from adatsq.models.base import Conditioning
from adatsq.models.sampling import StepCallback, sample, sigmas
from adatsq.zoo.registry import ZooEntry
from adatsq.zoo.text import MiniLMEncoder


class DigitPipeline:
    """Generates digit scenes with an embedded model.

    Args:
        entry: the zoo entry (sampling defaults, shapes).
        transformer: its transformer (full precision or quantized).

    Example:
        >>> from adatsq.zoo import registry
        >>> pipe = DigitPipeline.from_zoo("flux-digits")
        >>> images = pipe.generate(["a red 3"], seed=0, steps=4)
        >>> tuple(images.shape)
        (1, 3, 16, 16)
    """

    def __init__(self, entry: ZooEntry, transformer: nn.Module):
        self.entry = entry
        self.transformer = transformer
        self.adapter = adapter_for(transformer)
        self.encoder = MiniLMEncoder(entry.text_length)
        self._null: Conditioning | None = None

    @classmethod
    def from_zoo(cls, name: str) -> DigitPipeline:
        from adatsq.zoo import registry

        entry = registry.get(name)
        return cls(entry, entry.load_model())

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def default_steps(self) -> int:
        return self.entry.steps

    def encode(self, prompts: list[str]) -> Conditioning:
        return self.adapter.text_conditioning(*self.encoder(prompts))

    def null_conditioning(self) -> Conditioning:
        if self._null is None:
            self._null = self.encode([""])
        return self._null

    @property
    def cfg_scale(self) -> float:
        """The classifier-free guidance scale sampling uses (1: unguided)."""
        return float(self.entry.guidance_scale)

    def schedule(self, steps: int | None = None) -> torch.Tensor:
        """Timestep values (T,) the transformer receives at each step."""
        return self.adapter.model_timestep(sigmas(steps or self.entry.steps,
                                                  self.entry.shift))

    def noise(self, n: int, seed: int) -> torch.Tensor:
        """Initial latents; prompt ``i`` always gets the same noise for a given seed."""
        shape = self.adapter.to_latents(torch.zeros(1, *self.entry.sample_shape)).shape[1:]
        gens = [torch.Generator().manual_seed(seed * 100_003 + i) for i in range(n)]
        return torch.stack([torch.randn(shape, generator=g) for g in gens])

    @torch.no_grad()
    def generate(self, prompts: list[str], seed: int = 0, steps: int | None = None,
                 guidance_scale: float | None = None, batch_size: int = 256,
                 callback: StepCallback | None = None,
                 progress: bool | str = False) -> torch.Tensor:
        """Images (B, 3, H, W), or clips (B, 3, F, H, W) for a video model, in [-1, 1] for
        ``prompts``; deterministic given ``seed``."""
        if not prompts:
            raise ValueError("no prompts to generate")
        steps = steps or self.entry.steps
        scale = self.entry.guidance_scale if guidance_scale is None else guidance_scale
        noise = self.noise(len(prompts), seed)
        out = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            latents = sample(self.adapter, self.transformer, noise[i:i + batch_size],
                             self.encode(chunk), self.null_conditioning(), steps, scale,
                             shift=self.entry.shift, callback=callback, progress=progress)
            out.append(self.adapter.from_latents(latents, self.entry.sample_shape))
        return torch.cat(out).clamp(-1, 1)

    def source(self) -> dict:
        """How to rebuild this transformer's skeleton (stored in artifact manifests)."""
        return {"model": self.entry.name, "model_class": self.entry.model_class,
                "config": dict(self.entry.transformer_config)}

    def calibration_prompts(self, n: int, seed: int = 1) -> list[str]:
        """Calibration prompts, disjoint from every evaluation prompt set."""
        return self.task.calibration_set(n, seed)[0]

    @property
    def task(self):
        """The evaluation task of this model (:mod:`adatsq.eval.tasks`)."""
        from adatsq.eval.tasks import task_for

        return task_for(self.entry)

    def selection_set(self, n: int, seed: int = 2):
        """Prompts disjoint from evaluation and a task metric of their samples (higher is better).

        Used by end-to-end selection (AdaTSQ Sec. 3.2.4): the task's total (DigitEval for
        scenes, the video score for clips) on calibration prompts.
        """
        prompts, specs = self.task.calibration_set(n, seed)
        return prompts, self.task.selection_metric(specs)
