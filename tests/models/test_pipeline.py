"""The Pipeline contract, on the embedded pipeline (the diffusers one: tests/integration)."""

import numpy as np
import pytest
import torch

from adatsq.models.base import Pipeline
from adatsq.models.sampling import seeded_noise, to_output


def test_digit_pipeline_is_a_pipeline(tiny_pipeline):
    assert isinstance(tiny_pipeline, Pipeline)
    assert tiny_pipeline.cfg_scale == 2.0 and tiny_pipeline.default_steps == 4
    assert tiny_pipeline.null_conditioning() is tiny_pipeline.null_conditioning()
    schedule = tiny_pipeline.schedule()
    assert schedule.shape == (4,) and (schedule.diff() < 0).all()


def test_noise_of_a_prompt_does_not_depend_on_its_batch(tiny_pipeline):
    prompts = ["a 3", "a red 4", "two 5s"]
    together = tiny_pipeline.generate(prompts, seed=5, batch_size=3)
    alone = tiny_pipeline.generate(prompts, seed=5, batch_size=1)
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)
    assert torch.equal(seeded_noise((2, 3), 3, 5)[:2], seeded_noise((2, 3), 2, 5))
    assert not torch.equal(seeded_noise((2, 3), 1, 5), seeded_noise((2, 3), 1, 6))


def test_samples_decode_to_the_entry_shape_in_range(tiny_pipeline):
    images = tiny_pipeline.generate(["a 3"], seed=0)
    assert images.shape == (1, *tiny_pipeline.entry.sample_shape)
    assert images.abs().max() <= 1.0
    latents = tiny_pipeline.to_latents(images)
    assert latents.shape[1:] == tiny_pipeline.latent_shape()
    assert torch.equal(tiny_pipeline.from_latents(latents), images)


def test_a_call_returns_what_diffusers_returns(tiny_pipeline):
    """``pipe(prompt)``: PIL images by default; numpy (B, H, W, 3) and tensors (B, 3, H, W) in
    [0, 1] with ``output_type``; the same samples as ``generate``; clips as frames."""
    prompts = ["a 3", "a red 4"]
    reference = (tiny_pipeline.generate(prompts, seed=2) + 1) / 2
    images = tiny_pipeline(prompts, seed=2).images
    h, w = reference.shape[-2:]
    assert [im.size for im in images] == [(w, h)] * 2 and images[0].mode == "RGB"
    array = tiny_pipeline(prompts, seed=2, output_type="np").images
    assert array.shape == (2, h, w, 3)
    torch.testing.assert_close(torch.from_numpy(array).permute(0, 3, 1, 2), reference)
    tensor, = tiny_pipeline("a 3", seed=2, output_type="pt", return_dict=False)
    torch.testing.assert_close(tensor, reference[:1])
    pixels = torch.from_numpy(np.array(images[1])).float()
    assert (pixels / 255 - reference[1].permute(1, 2, 0)).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipeline("a 3", output_type="latent")
    clips = to_output(torch.zeros(2, 3, 5, 4, 6), "pil").frames
    assert len(clips) == 2 and len(clips[0]) == 5 and clips[0][0].size == (6, 4)
    assert to_output(torch.zeros(2, 3, 5, 4, 6), "np").frames.shape == (2, 5, 4, 6, 3)
