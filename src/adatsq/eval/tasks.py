"""What an embedded model is evaluated on: its prompt sets, its task metric and its fidelity.

An image model (digit scenes) is scored by DigitEval, the GenEval analog of the paper's Table 1;
a video model (clips of moving digits) by the VBench analog of Table 2 (:mod:`adatsq.eval.video`).
Both give the report the same fields: ``eval`` (per-group scores and ``total``), ``eval_se``,
``psnr``/``ssim``/``faithful`` against the FP samples, and, for video, a ``video`` dict of the
clip metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from adatsq.eval import digiteval, fidelity, video
from adatsq.zoo import clips, scenes


@dataclass(frozen=True)
class EvalSet:
    """Evaluation prompts with what each asks for and real samples of them.

    Attributes:
        prompts: the prompts, sampled with one shared seed by every row.
        specs: what each prompt asks for (scene or clip specs).
        real: real held-out samples of the prompts, (N, 3, H, W) or (N, 3, F, H, W).
        showcase: indices shown in sample grids.
    """

    prompts: list[str]
    specs: list[Any] = field(repr=False)
    real: np.ndarray = field(repr=False)
    showcase: list[int]


class Task(ABC):
    """The evaluation protocol of one kind of embedded model."""

    #: what ``n`` of :meth:`evaluation_set` counts.
    unit: str
    #: what the report's columns mean.
    legend: str

    @abstractmethod
    def evaluation_set(self, n: int) -> EvalSet:
        """The first ``n`` evaluation prompts per group (a smaller set is a prefix of a larger)."""

    @abstractmethod
    def calibration_set(self, n: int, seed: int) -> tuple[list[str], list[Any]]:
        """``n`` (prompts, specs) disjoint from every evaluation prompt."""

    @abstractmethod
    def score(self, samples: torch.Tensor, specs: list[Any]) -> dict[str, Any]:
        """``{"eval": {group: score, ..., "total"}, "eval_se": float, "per_sample": [...],
        ...}`` of ``samples``; ``per_sample`` holds every sample's contribution to ``total``
        (its mean within each of :meth:`strata`, averaged over strata, is ``total``)."""

    def strata(self, specs: list[Any]) -> list[str] | None:
        """The group of every sample when ``total`` is a mean of group means, else None."""
        return None

    @abstractmethod
    def fidelity_per_sample(self, samples: torch.Tensor,
                            reference: torch.Tensor) -> dict[str, np.ndarray]:
        """``{"psnr": (N,), "ssim": (N,), "faithful": (N,)}`` of every sample against the FP
        sample of the same prompt and seed (``faithful``: the share of what the detector reads in
        the FP sample that the sample shows too, in [0, 1])."""

    def fidelity(self, samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        """``{"psnr", "ssim", "faithful"}`` of ``samples`` against the FP samples of the same
        seeds."""
        return {k: float(v.mean()) for k, v in self.fidelity_per_sample(samples,
                                                                         reference).items()}

    def frechet(self, samples: torch.Tensor, real: np.ndarray) -> float | None:
        """Fréchet distance to the real samples, where the task defines one."""
        return None

    def selection_metric(self, specs: list[Any]) -> Callable[[torch.Tensor], np.ndarray]:
        """A task metric (higher is better) of samples of prompts with ``specs``, one score per
        sample (N,) (their mean is the metric), so that paths can be compared prompt by prompt."""
        return lambda samples: np.asarray(self.score(samples, specs)["per_sample"], dtype=float)


class SceneTask(Task):
    """Digit scenes: DigitEval per GenEval category, Fréchet distance in the classifier's space."""

    unit = "prompts per category"
    legend = ("DigitEval (GenEval analog) per category and total; FD: Fréchet distance to real "
              "held-out scenes in the classifier's feature space")

    def evaluation_set(self, n):
        batch = scenes.make_scenes(n, scenes.EVAL_SEED)
        show = [c * n + i for c in range(len(scenes.CATEGORIES)) for i in range(min(2, n))]
        return EvalSet([s.prompt for s in batch], [s.spec for s in batch],
                       np.stack([s.image for s in batch]), show)

    def calibration_set(self, n, seed):
        pairs = scenes.calibration_scenes(n, seed)
        return [p for p, _ in pairs], [s for _, s in pairs]

    def score(self, samples, specs):
        result = digiteval.evaluate(samples, specs)
        return {"eval": {**result.category_scores, "total": result.total},
                "eval_se": result.total_se,
                "per_sample": [float(c) for c in result.correct]}

    def strata(self, specs):
        return [spec.category for spec in specs]

    def fidelity_per_sample(self, samples, reference):
        return {"psnr": fidelity.psnr_per_image(samples, reference),
                "ssim": fidelity.ssim_per_image(samples, reference),
                "faithful": digiteval.faithfulness(samples, reference)}

    def frechet(self, samples, real):
        return fidelity.frechet_distance(samples, real)


class ClipTask(Task):
    """Clips of moving digits: the VBench analog (:mod:`adatsq.eval.video`)."""

    unit = "clips"
    legend = ("Video metrics (VBench analog, adatsq.eval.video): per_frame: per-frame DigitEval; "
              "dynamic_degree: moves as asked; subj/bg: subject/background consistency; smooth: "
              "motion smoothness; flicker: VBench temporal flicker score (1 = none); PSNR/SSIM "
              "frame-wise")

    def evaluation_set(self, n):
        batch = clips.make_clips(n, clips.EVAL_SEED)
        return EvalSet([c.prompt for c in batch], [c.spec for c in batch],
                       np.stack([c.video for c in batch]), list(range(min(n, 4))))

    def calibration_set(self, n, seed):
        pairs = clips.calibration_clip_specs(n, seed)
        return [p for p, _ in pairs], [s for _, s in pairs]

    def score(self, samples, specs):
        scores = video.evaluate_clips(samples, specs)
        return {"eval": {"per_frame": scores.per_frame, "dynamic_degree": scores.dynamic_degree,
                         "total": scores.total},
                "eval_se": scores.total_se, "video": scores.to_dict(),
                "per_sample": list(scores.per_clip_total)}

    def fidelity_per_sample(self, samples, reference):
        return {**video.clip_fidelity_per_clip(samples, reference),
                "faithful": video.clip_faithfulness(samples, reference)}


def task_for(entry) -> Task:
    """The evaluation task of a zoo entry."""
    return ClipTask() if entry.is_video else SceneTask()
