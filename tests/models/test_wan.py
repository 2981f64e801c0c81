"""Wan adapter: its transformer call follows ``WanPipeline``'s conventions."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from tests.models.examples import example

from adatsq.models.sampling import sample
from adatsq.models.wan import WanAdapter


def test_denoise_is_the_pipeline_transformer_call():
    adapter = WanAdapter()
    model, latents, cond = example(adapter.name)
    sigma = torch.tensor([0.9, 0.3])
    with torch.no_grad():
        # The pipeline passes the scheduler's t = 1000 sigma and uses the output as is.
        expected = model(hidden_states=latents, timestep=sigma * 1000,
                         encoder_hidden_states=cond["encoder_hidden_states"],
                         return_dict=False)[0]
        velocity = adapter.denoise(model, latents, cond, sigma)
    torch.testing.assert_close(velocity, expected, rtol=1e-5, atol=1e-5)


def test_sampler_reproduces_the_diffusers_pipeline():
    """Euler steps with classifier-free guidance, ours against ``WanPipeline`` end to end."""
    adapter = WanAdapter()
    model, noise, cond = example(adapter.name)
    uncond = {"encoder_hidden_states": torch.randn_like(cond["encoder_hidden_states"])}
    steps = 3
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), transformer=model)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(height=8 * noise.shape[3], width=8 * noise.shape[4], num_frames=5,
                    latents=noise.clone(), num_inference_steps=steps, guidance_scale=2.5,
                    prompt_embeds=cond["encoder_hidden_states"],
                    negative_prompt_embeds=uncond["encoder_hidden_states"],
                    output_type="latent", return_dict=False)[0]
    latents = sample(adapter, model, noise, cond, uncond, steps, guidance_scale=2.5)
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)


def test_embedders_and_final_projection_stay_full_precision():
    adapter = WanAdapter()
    model, _, _ = example(adapter.name)
    names = set(adapter.quantizable_layers(model))
    per_block = {f"{attn}.{proj}" for attn in ("attn1", "attn2")
                 for proj in ("to_q", "to_k", "to_v", "to_out.0")}
    per_block |= {"ffn.net.0.proj", "ffn.net.2"}
    assert names == {f"blocks.{i}.{s}" for i in range(2) for s in per_block}
