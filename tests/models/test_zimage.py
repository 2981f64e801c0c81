"""Z-Image adapter: its transformer call follows ``ZImagePipeline``'s conventions."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
from tests.models.examples import example

from adatsq.models.sampling import sample, sigmas
from adatsq.models.zimage import ZImageAdapter


def _pipeline_velocity(model, latents, captions, sigma):
    """The pipeline's transformer call (timestep (1000 - t) / 1000, output negated)."""
    t = sigma * 1000  # the scheduler's timesteps
    out = model(list(latents.unsqueeze(2).unbind(0)), (1000 - t) / 1000, captions,
                return_dict=False)[0]
    return -torch.stack([o.float() for o in out]).squeeze(2)


def test_denoise_is_the_pipeline_transformer_call():
    adapter = ZImageAdapter()
    model, latents, cond = example(adapter.name)
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        expected = _pipeline_velocity(model, latents, list(cond["cap_feats"].unbind(0)), sigma)
        velocity = adapter.denoise(model, latents, cond, sigma)
    torch.testing.assert_close(velocity, expected, rtol=1e-5, atol=1e-5)


def test_cap_mask_keeps_only_the_valid_caption_tokens():
    adapter = ZImageAdapter()
    model, latents, cond = example(adapter.name)
    feats = cond["cap_feats"]  # (2, 5, 32)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    padded = torch.where(mask[..., None], feats, torch.randn_like(feats))
    sigma = torch.tensor([0.7, 0.7])
    with torch.no_grad():
        expected = _pipeline_velocity(model, latents, [feats[0], feats[1, :3]], sigma)
        velocity = adapter.denoise(model, latents, {"cap_feats": padded, "cap_mask": mask}, sigma)
    torch.testing.assert_close(velocity, expected, rtol=1e-5, atol=1e-5)


def test_sampler_reproduces_the_diffusers_pipeline():
    """Euler steps with classifier-free guidance, ours against ``ZImagePipeline`` end to end."""
    adapter = ZImageAdapter()
    model, noise, cond = example(adapter.name)
    uncond = {"cap_feats": torch.randn_like(cond["cap_feats"])}
    steps = 3
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=None,
                          text_encoder=None, tokenizer=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    # The pipeline's guidance g is cond + g (cond - uncond), i.e. a scale of g + 1 here.
    expected = pipe(height=8 * noise.shape[2], width=8 * noise.shape[3], latents=noise.clone(),
                    sigmas=sigmas(steps).tolist(), guidance_scale=1.5,
                    prompt_embeds=list(cond["cap_feats"].unbind(0)),
                    negative_prompt_embeds=list(uncond["cap_feats"].unbind(0)),
                    output_type="latent", return_dict=False)[0]
    latents = sample(adapter, model, noise, cond, uncond, steps, guidance_scale=2.5)
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)


def test_modulation_embedders_and_final_layer_stay_full_precision():
    adapter = ZImageAdapter()
    model, _, _ = example(adapter.name)
    names = set(adapter.quantizable_layers(model))
    per_block = {"attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                 "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"}
    blocks = ("noise_refiner.0", "context_refiner.0", "layers.0")
    assert names == {f"{b}.{s}" for b in blocks for s in per_block}
