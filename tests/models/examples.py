"""The examples of every model class: a new architecture adds its own here and nowhere else.

- :data:`EXAMPLES`: a tiny random transformer of every adapter's class, with latents and
  conditioning, for the adapter contract tests;
- :data:`PIPELINES`: a tiny diffusers pipeline of every registered pipeline family (random
  weights, word-level tokenizers), with the sampling settings the integration tests use.

``tests/models/test_adapters.py`` fails until a registered adapter or family has its example;
the integration tests derive their tables from :data:`PIPELINES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tests.integration.tiny_pipelines import CHAT_TEMPLATE, vocabulary, word_tokenizer


def _flux():
    from diffusers import FluxTransformer2DModel

    model = FluxTransformer2DModel(patch_size=1, in_channels=48, num_layers=1,
                                   num_single_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))
    latents = torch.randn(2, 16, 48)
    cond = {"encoder_hidden_states": torch.randn(2, 5, 32),
            "pooled_projections": torch.randn(2, 32)}
    return model, latents, cond


def _zimage():
    from diffusers import ZImageTransformer2DModel

    model = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=12,
                                     dim=32, n_layers=1, n_refiner_layers=1, n_heads=2,
                                     n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6])
    return model, torch.randn(2, 12, 8, 8), {"cap_feats": torch.randn(2, 5, 32)}


def _wan():
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2,
                                  attention_head_dim=16, in_channels=12, out_channels=12,
                                  text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
                                  rope_max_seq_len=32)
    return model, torch.randn(2, 12, 2, 8, 8), {"encoder_hidden_states": torch.randn(2, 5, 32)}


EXAMPLES = {"flux": _flux, "zimage": _zimage, "wan": _wan}


def example(adapter: str, seed: int = 0):
    """(model in eval mode, latents, conditioning) of ``adapter``'s tiny example, seeded."""
    torch.manual_seed(seed)
    model, latents, cond = EXAMPLES[adapter]()
    return model.eval(), latents, cond


def tiny_flux(guidance_embeds: bool = False, transformer=None):
    """FluxPipeline: CLIP (pooled) + T5 text encoders, a 2x VAE with 4 latent channels, and a
    tiny transformer unless one (with ``in_channels=16``, text widths 32) is given."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    n = len(vocabulary())
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=37,
                                        num_hidden_layers=1, num_attention_heads=4,
                                        max_position_embeddings=77, projection_dim=32,
                                        bos_token_id=0, eos_token_id=2, pad_token_id=0))
    t5 = T5EncoderModel(T5Config(vocab_size=n, d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                 num_heads=4, relative_attention_num_buckets=8))
    vae = AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=1.5, shift_factor=0.1)
    if transformer is None:
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1,
                                             num_single_layers=1, attention_head_dim=16,
                                             num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
                                             guidance_embeds=guidance_embeds)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip,
                        tokenizer=word_tokenizer(77), text_encoder_2=t5,
                        tokenizer_2=word_tokenizer(512), transformer=transformer)


def tiny_zimage():
    """ZImagePipeline: a Qwen3 text encoder with a chat template, a 2x VAE, 4 latent channels."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    qwen = Qwen3Model(Qwen3Config(vocab_size=len(vocabulary()), hidden_size=32,
                                  intermediate_size=37, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  max_position_embeddings=512))
    vae = AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=0.5, shift_factor=0.2)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,),
                                           in_channels=4, dim=32, n_layers=1, n_refiner_layers=1,
                                           n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                                           axes_dims=[4, 6, 6], axes_lens=[64, 32, 32])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=qwen,
                          tokenizer=word_tokenizer(512, CHAT_TEMPLATE), transformer=transformer)


def tiny_wan():
    """WanPipeline: a UMT5 text encoder, a Wan VAE (8x spatial, 4x temporal, 4 channels)."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    umt5 = UMT5EncoderModel(UMT5Config(vocab_size=len(vocabulary()), d_model=32, d_kv=8, d_ff=37,
                                       num_layers=1, num_heads=4,
                                       relative_attention_num_buckets=8))
    vae = AutoencoderKLWan(base_dim=3, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0])
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2,
                                        attention_head_dim=16, in_channels=4, out_channels=4,
                                        text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1,
                                        rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=3.0)
    return WanPipeline(tokenizer=word_tokenizer(512), text_encoder=umt5, vae=vae,
                       scheduler=scheduler, transformer=transformer)


@dataclass(frozen=True)
class PipelineExample:
    """A tiny pipeline of a registered family and how the integration tests sample it.

    Attributes:
        family: the diffusers pipeline class (a key of ``adatsq.models.families.FAMILIES``).
        build: makes the pipeline (seeded: the same weights every call).
        sizes: sampling settings (``height``, ``width``, ``frames``, ``guidance_scale``).
    """

    family: str
    build: Callable[[], object]
    sizes: dict

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's pixel shape: (3, H, W), or (3, F, H, W) for video."""
        s = self.sizes
        return (3, *([s["frames"]] if "frames" in s else []), s["height"], s["width"])


PIPELINES = {
    "flux-dev": PipelineExample("FluxPipeline", lambda: tiny_flux(guidance_embeds=True),
                                dict(height=16, width=16)),
    "flux-schnell": PipelineExample("FluxPipeline", tiny_flux, dict(height=16, width=32)),
    "zimage": PipelineExample("ZImagePipeline", tiny_zimage,
                              dict(height=16, width=16, guidance_scale=1.5)),
    "wan": PipelineExample("WanPipeline", tiny_wan, dict(height=32, width=32, frames=5)),
}
"""Flux as Dev (embedded guidance) and Schnell (non-square); Z-Image with guidance."""


def one_per_family() -> list[str]:
    """The first example of each family: the tests that need one pipeline per class."""
    first: dict[str, str] = {}
    for name, e in PIPELINES.items():
        first.setdefault(e.family, name)
    return list(first.values())
