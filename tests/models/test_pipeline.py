"""The Pipeline contract, on the embedded pipeline (the diffusers one: tests/integration)."""

import torch

from adatsq.models.base import Pipeline
from adatsq.models.sampling import seeded_noise


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
