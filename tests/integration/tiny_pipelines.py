"""Tiny diffusers pipelines built locally from random weights (no download): Flux, Z-Image, Wan.

Every component has the class the real pipeline uses, at hidden sizes of 16-32 with one or two
layers; the tokenizers are word-level vocabularies built with the ``tokenizers`` library.
"""

from __future__ import annotations

import re
from importlib.resources import files

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "</s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
"""A Qwen-style chat template (``ZImagePipeline`` formats every prompt with it)."""


def vocabulary() -> list[str]:
    """Special tokens, then every word of the packaged calibration prompts and a few more."""
    text = files("adatsq").joinpath("data/calibration_prompts.txt").read_text()
    words = set(re.findall(r"\w+|[^\w\s]", text.lower())) | {"user", "assistant", "cat", "dog"}
    return SPECIAL + sorted(words - set(SPECIAL))


def word_tokenizer(max_length: int, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over :func:`vocabulary` (unknown words -> [UNK])."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="</s>", model_max_length=max_length,
                                   chat_template=chat_template)


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
