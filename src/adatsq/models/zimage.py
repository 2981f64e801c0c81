"""``diffusers.ZImageTransformer2DModel`` (Z-Image and Z-Image-Turbo): its adapter and the
conventions of ``ZImagePipeline``."""

from __future__ import annotations

import torch
from torch import nn

from adatsq.models.base import Adapter, Conditioning, ModulationSite, register
from adatsq.models.families import KLFamily, Sampling, register_family


@register
class ZImageAdapter(Adapter):
    """Z-Image: refiner blocks per stream, then single-stream blocks over [image, caption] tokens.

    The image tokens first pass the ``noise_refiner`` (timestep-modulated) and the caption tokens
    the ``context_refiner`` (unmodulated); both are ``ZImageTransformerBlock``s like the main
    ``layers``, so all three lists are quantized.

    Quantized: every linear of ``noise_refiner``, ``context_refiner`` and ``layers`` (attention
    ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` and the SwiGLU ``feed_forward.w1``, ``w2``, ``w3``)
    except the adaLN modulation linears ``adaLN_modulation.0``, which act once per sample on the
    timestep embedding. The embedders (``all_x_embedder``, ``cap_embedder``, ``t_embedder``) and
    the final layer (``all_final_layer``) stay in full precision, as for Flux.

    Latents are image-like (B, C, H, W), the layout of diffusers' ``ZImagePipeline``; the model
    patchifies them itself (2x2, the pipeline's default).

    Conditioning keys: ``cap_feats`` (B, L, D) text features and, optionally, ``cap_mask`` (B, L)
    marking each prompt's valid tokens (the pipeline passes only those; without a mask all L tokens
    are used). The transformer receives ``t = 1 - sigma`` (the pipeline's ``(1000 - t) / 1000``)
    and predicts ``x0 - noise``; :meth:`denoise` negates it, as the pipeline does.

    Modulation sites (:meth:`modulation_sites`): in every modulated block (``noise_refiner`` and
    ``layers``), ``adaLN_modulation.0`` outputs the chunks scale_msa, gate_msa, scale_mlp,
    gate_mlp; the input ``attention_norm1(x) * (1 + scale_msa)`` (no shift) is read by
    ``attention.to_q``, ``to_k``, ``to_v``, and ``ffn_norm1(x) * (1 + scale_mlp)`` by
    ``feed_forward.w1`` and ``w3``. The ``context_refiner`` is not modulated.

    """

    name = "zimage"
    model_classes = ("ZImageTransformer2DModel",)
    block_lists = ("noise_refiner", "context_refiner", "layers")
    skip_suffixes = ("adaLN_modulation.0",)

    def timestep_of(self, args, kwargs):
        return kwargs["t"] if "t" in kwargs else args[1]

    def model_timestep(self, sigma):
        return 1 - sigma

    def denoise(self, model: nn.Module, latents: torch.Tensor, cond: Conditioning,
                sigma: torch.Tensor) -> torch.Tensor:
        feats = cond["cap_feats"]  # (B, L, D)
        mask = cond.get("cap_mask")
        captions = list(feats.unbind(0)) if mask is None else [
            f[m.bool()] for f, m in zip(feats, mask)]
        images = list(latents.unsqueeze(2).unbind(0))  # B x (C, 1, H, W)
        t = self.model_timestep(sigma).to(latents.device)
        out = model(images, t, captions, return_dict=False)[0]
        return -torch.stack(out).squeeze(2)

    def modulation_sites(self, model):
        sites = []
        for block_list in ("noise_refiner", "layers"):
            for i, block in enumerate(getattr(model, block_list)):
                if not block.modulation:
                    continue
                prefix = f"{block_list}.{i}"
                modulation = f"{prefix}.adaLN_modulation.0"
                sites.append(ModulationSite(modulation, chunks=4, scale=0, shift=None,
                                            consumers=tuple(f"{prefix}.attention.{name}"
                                                            for name in ("to_q", "to_k", "to_v"))))
                sites.append(ModulationSite(modulation, chunks=4, scale=2, shift=None,
                                            consumers=(f"{prefix}.feed_forward.w1",
                                                       f"{prefix}.feed_forward.w3")))
        return sites


@register_family
class ZImageFamily(KLFamily):
    """``ZImagePipeline``: a Qwen3 chat-formatted prompt's second-to-last hidden states.

    The prompts' states have their own lengths; they are zero-padded to ``max_sequence_length``
    with a ``cap_mask`` marking the valid tokens (the transformer sees only those). Defaults
    follow Z-Image-Turbo (few steps, no classifier-free guidance); the pipeline's guidance ``g``
    means ``pos + g (pos - neg)``, our sampler's scale ``g + 1``.
    """

    pipeline_class = "ZImagePipeline"
    transformer_class = "ZImageTransformer2DModel"

    def defaults(self, pipe):
        return Sampling(steps=10, guidance_scale=0.0, height=1024, width=1024)

    def cfg_scale(self, guidance_scale):
        return guidance_scale + 1.0

    def encode(self, pipe, prompts, sampling, device):
        L = sampling.max_sequence_length
        # encode_prompt rewrites the list it is given with the chat template: pass a copy
        states, _ = pipe.encode_prompt(list(prompts), device=device,
                                       do_classifier_free_guidance=False, max_sequence_length=L)
        feats = states[0].new_zeros(len(states), L, states[0].shape[-1])  # (B, L, D)
        mask = torch.zeros(len(states), L, dtype=torch.bool, device=feats.device)
        for i, s in enumerate(states):
            feats[i, :len(s)] = s
            mask[i, :len(s)] = True
        return {"cap_feats": feats, "cap_mask": mask}

    def latent_shape(self, pipe, sampling):
        return (pipe.transformer.config.in_channels, *self.grid(pipe, sampling))

    def decode(self, pipe, latents, sampling):
        return pipe.vae.decode(self.to_vae(pipe, latents), return_dict=False)[0]

    def encode_pixels(self, pipe, pixels, sampling):
        return self.vae_encode(pipe, pixels)
