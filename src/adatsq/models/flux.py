"""Adapter for ``diffusers.FluxTransformer2DModel`` (Flux-Dev, Flux-Schnell and flux-digits)."""

from __future__ import annotations

import torch
from torch import nn

from adatsq.models.base import Adapter, Conditioning, ModulationSite, register
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
    patch = 4

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

    def text_conditioning(self, states, pooled):
        return {"encoder_hidden_states": states, "pooled_projections": pooled}

    def example(self, seed=0):
        from diffusers import FluxTransformer2DModel

        torch.manual_seed(seed)
        model = FluxTransformer2DModel(patch_size=1, in_channels=48, num_layers=1,
                                       num_single_layers=1, attention_head_dim=16,
                                       num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)).eval()
        latents = torch.randn(2, 16, 48)
        cond = {"encoder_hidden_states": torch.randn(2, 5, 32),
                "pooled_projections": torch.randn(2, 32)}
        return model, latents, cond

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

    def to_latents(self, images):
        return pack(images, self.patch)

    def from_latents(self, latents, sample_shape):
        c, h, w = sample_shape
        return unpack(latents, c, h, w, self.patch)
