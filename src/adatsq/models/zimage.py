"""Adapter for ``diffusers.ZImageTransformer2DModel`` (Z-Image and Z-Image-Turbo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adatsq.models.base import Adapter, Conditioning, ModulationSite, register


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
    patchifies them itself (2x2, the pipeline's default). For the embedded pixel models,
    :meth:`to_latents` folds each 2x2 pixel block into channels, so a (3, 16, 16) image becomes
    (12, 8, 8) latents and 16 tokens of 48 values, the token grid of Flux's 4x4 packing.

    Conditioning keys: ``cap_feats`` (B, L, D) text features and, optionally, ``cap_mask`` (B, L)
    marking each prompt's valid tokens (the pipeline passes only those; without a mask all L tokens
    are used). The transformer receives ``t = 1 - sigma`` (the pipeline's ``(1000 - t) / 1000``)
    and predicts ``x0 - noise``; :meth:`denoise` negates it, as the pipeline does.

    Modulation sites (:meth:`modulation_sites`): in every modulated block (``noise_refiner`` and
    ``layers``), ``adaLN_modulation.0`` outputs the chunks scale_msa, gate_msa, scale_mlp,
    gate_mlp; the input ``attention_norm1(x) * (1 + scale_msa)`` (no shift) is read by
    ``attention.to_q``, ``to_k``, ``to_v``, and ``ffn_norm1(x) * (1 + scale_mlp)`` by
    ``feed_forward.w1`` and ``w3``. The ``context_refiner`` is not modulated.

    Example:
        >>> adapter = ZImageAdapter()
        >>> model, latents, cond = adapter.example()
        >>> adapter.denoise(model, latents, cond, torch.full((2,), 0.5)).shape
        torch.Size([2, 12, 8, 8])
        >>> adapter.to_latents(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 12, 8, 8])
    """

    name = "zimage"
    model_classes = ("ZImageTransformer2DModel",)
    block_lists = ("noise_refiner", "context_refiner", "layers")
    skip_suffixes = ("adaLN_modulation.0",)
    #: pixels per side folded into channels by :meth:`to_latents` (the model patchifies 2x2 more).
    patch = 2

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

    def text_conditioning(self, states, pooled):
        return {"cap_feats": states}

    def example(self, seed=0):
        from diffusers import ZImageTransformer2DModel

        torch.manual_seed(seed)
        model = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,),
                                         in_channels=12, dim=32, n_layers=1, n_refiner_layers=1,
                                         n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                                         axes_dims=[4, 6, 6]).eval()
        latents = torch.randn(2, 12, 8, 8)
        cond = {"cap_feats": torch.randn(2, 5, 32)}
        return model, latents, cond

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

    def to_latents(self, images):
        return F.pixel_unshuffle(images, self.patch)

    def from_latents(self, latents, sample_shape):
        images = F.pixel_shuffle(latents, self.patch)
        if images.shape[1:] != tuple(sample_shape):
            raise ValueError(f"latents {tuple(latents.shape)} do not unfold to images of shape "
                             f"{tuple(sample_shape)}")
        return images
