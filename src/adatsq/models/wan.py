"""``diffusers.WanTransformer3DModel`` (Wan 2.1 and 2.2 text-to-video): its adapter and the
conventions of ``WanPipeline``."""

from __future__ import annotations

import torch
from torch import nn

from adatsq.models.base import Adapter, Conditioning, register
from adatsq.models.families import Family, Sampling, register_family


@register
class WanAdapter(Adapter):
    """Wan: video DiT blocks with self-attention, cross-attention to the text and a GELU MLP.

    Quantized: every linear of ``blocks``: self-attention ``attn1.to_q``, ``to_k``, ``to_v``,
    ``to_out.0``, cross-attention ``attn2.*`` (its keys and values read the text tokens) and the
    MLP ``ffn.net.0.proj``, ``ffn.net.2``. The blocks hold no modulation linear: their adaLN
    shifts, scales and gates come from a per-block ``scale_shift_table`` (a parameter, not a
    layer) plus ``condition_embedder.time_proj``, computed once per sample from the timestep.
    That projection and the rest of ``condition_embedder`` (timestep and text embedders), the
    ``patch_embedding`` (a Conv3d) and the final ``proj_out`` stay in full precision, as for Flux.

    Latents are videos (B, C, F, H, W), the layout of diffusers' ``WanPipeline``; the model
    patchifies them itself (``patch_size`` (1, 2, 2) for every released Wan).

    Conditioning key: ``encoder_hidden_states`` (B, L, D) (the pipeline zero-pads every prompt to
    the same L). The transformer receives ``timestep = 1000 * sigma`` (the scheduler's t) and
    predicts the velocity ``noise - x0`` itself. Image-to-video (conditioning latents concatenated
    along channels) and Wan 2.2 TI2V's per-token timesteps are not covered.

    """

    name = "wan"
    model_classes = ("WanTransformer3DModel",)
    block_lists = ("blocks",)

    def timestep_of(self, args, kwargs):
        return kwargs["timestep"] if "timestep" in kwargs else args[1]

    def model_timestep(self, sigma):
        return 1000 * sigma

    def denoise(self, model: nn.Module, latents: torch.Tensor, cond: Conditioning,
                sigma: torch.Tensor) -> torch.Tensor:
        return model(hidden_states=latents,
                     timestep=self.model_timestep(sigma).to(latents.device),
                     encoder_hidden_states=cond["encoder_hidden_states"], return_dict=False)[0]


@register_family
class WanFamily(Family):
    """``WanPipeline`` (Wan 2.1, and 2.2 with a single transformer): UMT5 states zero-padded to
    ``max_sequence_length``; video latents normalized by the VAE's ``latents_mean``/``std``.

    Defaults: 25 steps, guidance 5 (``neg + g (pos - neg)``), 81 frames of 480x832. Two-expert
    Wan 2.2 (``transformer_2``) and TI2V's per-token timesteps (``expand_timesteps``) are refused.
    """

    pipeline_class = "WanPipeline"
    transformer_class = "WanTransformer3DModel"

    def defaults(self, pipe):
        return Sampling(steps=25, guidance_scale=5.0, height=480, width=832, frames=81)

    def check(self, pipe, sampling):
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("expand_timesteps"):
            raise ValueError("two-transformer Wan 2.2 (A14B) and Wan 2.2 TI2V are not supported; "
                             "use a Wan 2.1 or single-transformer Wan 2.2 pipeline")
        config = pipe.vae.config
        s, t = config.scale_factor_spatial, config.scale_factor_temporal
        if sampling.height % (2 * s) or sampling.width % (2 * s):
            raise ValueError(f"height and width must be multiples of {2 * s} for WanPipeline, "
                             f"got {sampling.height}x{sampling.width}")
        if sampling.frames is None or (sampling.frames - 1) % t:
            raise ValueError(f"WanPipeline needs frames = 1 + a multiple of {t} "
                             f"(e.g. {1 + 4 * t}), got {sampling.frames}")

    def cfg_scale(self, guidance_scale):
        return guidance_scale if guidance_scale > 1.0 else 1.0

    def scheduler(self, pipe, steps, shift):
        """A copy of the pipeline's own scheduler (UniPC on flow sigmas as Wan ships, or
        whatever the user installed) set to ``steps`` as ``WanPipeline`` sets it."""
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler

    def encode(self, pipe, prompts, sampling, device):
        states, _ = pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                       max_sequence_length=sampling.max_sequence_length,
                                       device=device)
        return {"encoder_hidden_states": states}

    def latent_shape(self, pipe, sampling):
        config = pipe.vae.config
        s, t = config.scale_factor_spatial, config.scale_factor_temporal
        return (pipe.transformer.config.in_channels, (sampling.frames - 1) // t + 1,
                sampling.height // s, sampling.width // s)

    def image_tokens(self, pipe, sampling):
        _, f, h, w = self.latent_shape(pipe, sampling)
        return f * (h // 2) * (w // 2)

    def _stats(self, pipe, like):
        config = pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1)
        return mean.to(like.device, like.dtype), std.to(like.device, like.dtype)

    def decode(self, pipe, latents, sampling):
        z = latents.to(pipe.vae.device, pipe.vae.dtype)
        mean, std = self._stats(pipe, z)
        return pipe.vae.decode(z * std + mean, return_dict=False)[0]

    def encode_pixels(self, pipe, pixels, sampling):
        if pixels.dim() == 4:  # an image is a one-frame clip
            pixels = pixels.unsqueeze(2)
        z = pipe.vae.encode(pixels.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mode()
        mean, std = self._stats(pipe, z)
        return (z - mean) / std
