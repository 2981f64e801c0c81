"""Adapter for ``diffusers.WanTransformer3DModel`` (Wan 2.1 and 2.2 text-to-video)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adatsq.models.base import Adapter, Conditioning, register


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
    patchifies them itself (``patch_size`` (1, 2, 2) for every released Wan). For the embedded
    pixel models, :meth:`to_latents` folds each 2x2 pixel block into channels, so a clip
    (3, F, 16, 16) becomes (12, F, 8, 8) latents and an image (3, 16, 16) one frame (12, 1, 8, 8).

    Conditioning key: ``encoder_hidden_states`` (B, L, D) (the pipeline zero-pads every prompt to
    the same L). The transformer receives ``timestep = 1000 * sigma`` (the scheduler's t) and
    predicts the velocity ``noise - x0`` itself. Image-to-video (conditioning latents concatenated
    along channels) and Wan 2.2 TI2V's per-token timesteps are not covered.

    Example:
        >>> adapter = WanAdapter()
        >>> model, latents, cond = adapter.example()
        >>> adapter.denoise(model, latents, cond, torch.full((2,), 0.5)).shape
        torch.Size([2, 12, 2, 8, 8])
        >>> adapter.to_latents(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 12, 1, 8, 8])
    """

    name = "wan"
    model_classes = ("WanTransformer3DModel",)
    block_lists = ("blocks",)
    #: pixels per side folded into channels by :meth:`to_latents` (the model patchifies 2x2 more).
    patch = 2

    def timestep_of(self, args, kwargs):
        return kwargs["timestep"] if "timestep" in kwargs else args[1]

    def model_timestep(self, sigma):
        return 1000 * sigma

    def denoise(self, model: nn.Module, latents: torch.Tensor, cond: Conditioning,
                sigma: torch.Tensor) -> torch.Tensor:
        return model(hidden_states=latents,
                     timestep=self.model_timestep(sigma).to(latents.device),
                     encoder_hidden_states=cond["encoder_hidden_states"], return_dict=False)[0]

    def text_conditioning(self, states, pooled):
        return {"encoder_hidden_states": states}

    def example(self, seed=0):
        from diffusers import WanTransformer3DModel

        torch.manual_seed(seed)
        model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2,
                                      attention_head_dim=16, in_channels=12, out_channels=12,
                                      text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                      rope_max_seq_len=32).eval()
        latents = torch.randn(2, 12, 2, 8, 8)
        cond = {"encoder_hidden_states": torch.randn(2, 5, 32)}
        return model, latents, cond

    def to_latents(self, images):
        if images.dim() == 4:  # a still image is a one-frame clip
            images = images.unsqueeze(2)
        b, c, f, h, w = images.shape
        frames = images.transpose(1, 2).reshape(b * f, c, h, w)
        folded = F.pixel_unshuffle(frames, self.patch)
        return folded.reshape(b, f, *folded.shape[1:]).transpose(1, 2)

    def from_latents(self, latents, sample_shape):
        b, c, f, h, w = latents.shape
        frames = F.pixel_shuffle(latents.transpose(1, 2).reshape(b * f, c, h, w), self.patch)
        clips = frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)
        if len(sample_shape) == 3:
            if f != 1:
                raise ValueError(f"latents with {f} frames are a video, not images")
            clips = clips.squeeze(2)
        if clips.shape[1:] != tuple(sample_shape):
            raise ValueError(f"latents {tuple(latents.shape)} do not unfold to samples of shape "
                             f"{tuple(sample_shape)}")
        return clips
