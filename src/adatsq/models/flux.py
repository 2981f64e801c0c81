"""``diffusers.FluxTransformer2DModel`` (Flux-Dev, Flux-Schnell and flux-digits): its adapter and
the conventions of ``FluxPipeline``."""

from __future__ import annotations

import torch
from torch import nn

from adatsq.models.base import Adapter, Conditioning, ModulationSite, register
from adatsq.models.families import KLFamily, Sampling, register_family
from adatsq.models.patches import grid_ids, pack, unpack


@register
class FluxAdapter(Adapter):
    """Flux: double-stream (joint attention) then single-stream blocks.

    Quantized: every linear of ``transformer_blocks`` and ``single_transformer_blocks`` except the
    adaLN modulation linears (``norm1.linear``, ``norm1_context.linear``, ``norm.linear``), which
    act once per sample on the timestep embedding. The embedders and the final projection stay in
    full precision, as in SVDQuant and ViDiT-Q.

    Conditioning keys: ``encoder_hidden_states`` (B, L, D) and ``pooled_projections`` (B, P);
    optionally ``guidance`` (B,), the embedded guidance of guidance-distilled models (Flux-Dev;
    3.5 if absent), and ``img_ids`` (B, N, 3), the position ids of the latent tokens (a square
    grid if absent; needed for non-square images). The transformer receives ``timestep = sigma``
    (the pipeline divides the scheduler's t by 1000).

    Modulation sites (:meth:`modulation_sites`): a double block's ``norm1.linear`` (an
    ``AdaLayerNormZero``: chunks shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp)
    modulates the image tokens read by ``attn.to_q``, ``to_k``, ``to_v`` and, after ``norm2``,
    by ``ff.net.0.proj``; ``norm1_context.linear`` likewise the text tokens read by
    ``attn.add_q_proj``, ``add_k_proj``, ``add_v_proj`` and ``ff_context.net.0.proj``. A single
    block's ``norm.linear`` (``AdaLayerNormZeroSingle``: shift, scale, gate) modulates the
    tokens read by ``attn.to_q``, ``to_k``, ``to_v`` and ``proj_mlp``.
    """

    name = "flux"
    model_classes = ("FluxTransformer2DModel",)
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    skip_suffixes = ("norm1.linear", "norm1_context.linear", "norm.linear")

    def timestep_of(self, args, kwargs):
        return kwargs["timestep"] if "timestep" in kwargs else args[3]

    def model_timestep(self, sigma):
        return sigma

    def denoise(self, model: nn.Module, latents: torch.Tensor, cond: Conditioning,
                sigma: torch.Tensor) -> torch.Tensor:
        states = cond["encoder_hidden_states"]
        device, dtype = latents.device, latents.dtype
        if "img_ids" in cond:
            img_ids = cond["img_ids"][0]  # the same grid for every sample
        else:
            tokens = latents.shape[1]
            side = int(round(tokens**0.5))
            img_ids = grid_ids(side, tokens // side)
        kwargs = {}
        if getattr(model.config, "guidance_embeds", False):
            kwargs["guidance"] = cond.get("guidance", torch.full_like(sigma, 3.5)).to(device)
        return model(hidden_states=latents, encoder_hidden_states=states,
                     pooled_projections=cond["pooled_projections"],
                     timestep=self.model_timestep(sigma).to(device, dtype),
                     img_ids=img_ids.to(device, dtype),
                     txt_ids=torch.zeros(states.shape[1], 3, device=device, dtype=dtype),
                     return_dict=False, **kwargs)[0]

    def modulation_sites(self, model):
        sites = []
        streams = (("norm1", ("attn.to_q", "attn.to_k", "attn.to_v"), "ff"),
                   ("norm1_context", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                    "ff_context"))
        for i in range(len(model.transformer_blocks)):
            block = f"transformer_blocks.{i}"
            for norm, attention, ff in streams:
                modulation = f"{block}.{norm}.linear"
                sites.append(ModulationSite(modulation, chunks=6, scale=1, shift=0, consumers=tuple(
                    f"{block}.{name}" for name in attention)))
                sites.append(ModulationSite(modulation, chunks=6, scale=4, shift=3,
                                            consumers=(f"{block}.{ff}.net.0.proj",)))
        for i in range(len(model.single_transformer_blocks)):
            block = f"single_transformer_blocks.{i}"
            sites.append(ModulationSite(f"{block}.norm.linear", chunks=3, scale=1, shift=0,
                                        consumers=tuple(f"{block}.{name}" for name in (
                                            "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))))
        return sites


@register_family
class FluxFamily(KLFamily):
    """``FluxPipeline``: CLIP pooled + T5 token states, latents packed 2x2 into tokens.

    Flux-Dev (``guidance_embeds``) takes its guidance as an input (no unconditional pass):
    50 steps, guidance 3.5; Flux-Schnell: 4 steps, no guidance, 256 text tokens.
    """

    pipeline_class = "FluxPipeline"
    transformer_class = "FluxTransformer2DModel"

    def defaults(self, pipe):
        if pipe.transformer.config.guidance_embeds:
            return Sampling(steps=50, guidance_scale=3.5, height=1024, width=1024)
        return Sampling(steps=4, guidance_scale=0.0, height=1024, width=1024,
                        max_sequence_length=256)

    def cfg_scale(self, guidance_scale):
        return 1.0  # Flux-Dev's guidance is a model input (encode); Schnell has none

    def encode(self, pipe, prompts, sampling, device):
        states, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                               max_sequence_length=sampling.max_sequence_length)
        h, w = self.grid(pipe, sampling)
        b = len(prompts)
        cond = {"encoder_hidden_states": states, "pooled_projections": pooled,
                "img_ids": grid_ids(h // 2, w // 2).to(device).expand(b, -1, -1)}
        if pipe.transformer.config.guidance_embeds:
            cond["guidance"] = torch.full((b,), float(sampling.guidance_scale), device=device)
        return cond

    def latent_shape(self, pipe, sampling):
        h, w = self.grid(pipe, sampling)
        return ((h // 2) * (w // 2), pipe.transformer.config.in_channels)

    def decode(self, pipe, latents, sampling):
        h, w = self.grid(pipe, sampling)
        z = unpack(latents, latents.shape[-1] // 4, h, w, 2)
        return pipe.vae.decode(self.to_vae(pipe, z), return_dict=False)[0]

    def encode_pixels(self, pipe, pixels, sampling):
        return pack(self.vae_encode(pipe, pixels), 2)
