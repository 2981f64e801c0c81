"""Shared fixtures: tiny, locally built pipelines (random weights, a few sampling steps)."""

from __future__ import annotations

import pytest
import torch

from adatsq.eval.tasks import task_for
from adatsq.zoo.pipeline import DigitPipeline
from adatsq.zoo.registry import ZooEntry

TINY_FLUX = dict(patch_size=1, in_channels=48, num_layers=1, num_single_layers=1,
                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=384,
                 pooled_projection_dim=384, axes_dims_rope=(4, 6, 6))


def tiny_entry(steps: int = 4) -> ZooEntry:
    return ZooEntry("tiny-flux", "FluxTransformer2DModel", TINY_FLUX, "tiny-flux", steps=steps,
                    guidance_scale=2.0)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def tiny_pipeline():
    """A DigitPipeline around a random tiny Flux transformer (4 steps, CFG 2)."""
    entry = tiny_entry()
    torch.manual_seed(0)
    model = entry.build_model().eval().requires_grad_(False)
    return DigitPipeline(entry, model, task_for(entry))


PROMPTS = ["a 3", "a red 4", "two 5s", "a 2 to the left of a 9"]


@pytest.fixture(scope="module")
def calibrated():
    """A tiny Flux pipeline and its per-step calibration statistics on four prompts."""
    from adatsq.calib.capture import CaptureConfig, capture

    entry = tiny_entry()
    torch.manual_seed(0)
    pipe = DigitPipeline(entry, entry.build_model().eval().requires_grad_(False),
                         task_for(entry))
    stats = capture(pipe, PROMPTS, seed=1, config=CaptureConfig(hessian="per_step"),
                    progress=False)
    return pipe, stats


def fresh_copy(pipe: DigitPipeline) -> DigitPipeline:
    """A pipeline around an unquantized copy of ``pipe``'s transformer."""
    model = pipe.entry.build_model().eval().requires_grad_(False)
    model.load_state_dict(pipe.transformer.state_dict())
    return DigitPipeline(pipe.entry, model, pipe.task)
