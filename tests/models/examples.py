"""A tiny random transformer of every adapter's class, with latents and conditioning, for the
contract tests (a new adapter adds its example here; ``test_adapters`` checks that it did)."""

import torch


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
