"""How the embedded models see pixels and text: no VAE, no T5, only folds and MiniLM states.

An embedded model works on pixels folded into latents (the token grid a real model gets from its
VAE) and on the MiniLM states of its prompts. Which fold and which conditioning keys depends on
the transformer class only; a diffusers pipeline has its own VAE and text encoders instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adatsq.models.base import Conditioning
from adatsq.models.patches import pack, unpack


@dataclass(frozen=True)
class Codec:
    """Pixels <-> latents and MiniLM states -> conditioning of one transformer class.

    Attributes:
        layout: ``"tokens"`` (Flux: ``patch`` x ``patch`` pixel blocks packed into tokens
            (B, N, C p²)), ``"image"`` (Z-Image: 2x2 blocks folded into channels (B, 4C, H/2,
            W/2); the model patchifies again) or ``"video"`` (Wan: the same per frame, (B, 4C,
            F, H/2, W/2); a still image is one frame).
        patch: pixels per side of a block.
        text_keys: conditioning keys of the token states and of the pooled vector (None where the
            model takes none).
    """

    layout: str
    patch: int
    text_keys: tuple[str, str | None]

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, H, W), or clips (B, C, F, H, W) for video, to latents."""
        if self.layout == "tokens":
            return pack(images, self.patch)
        if self.layout == "image":
            return F.pixel_unshuffle(images, self.patch)
        if images.dim() == 4:  # a still image is a one-frame clip
            images = images.unsqueeze(2)
        b, c, f, h, w = images.shape
        frames = images.transpose(1, 2).reshape(b * f, c, h, w)
        folded = F.pixel_unshuffle(frames, self.patch)
        return folded.reshape(b, f, *folded.shape[1:]).transpose(1, 2)

    def from_latents(self, latents: torch.Tensor, sample_shape: tuple[int, ...]) -> torch.Tensor:
        """Inverse of :meth:`to_latents` for samples of ``sample_shape`` ((C, H, W) or
        (C, F, H, W))."""
        if self.layout == "tokens":
            c, h, w = sample_shape
            return unpack(latents, c, h, w, self.patch)
        if self.layout == "image":
            out = F.pixel_shuffle(latents, self.patch)
        else:
            b, c, f, h, w = latents.shape
            frames = F.pixel_shuffle(latents.transpose(1, 2).reshape(b * f, c, h, w), self.patch)
            out = frames.reshape(b, f, *frames.shape[1:]).transpose(1, 2)
            if len(sample_shape) == 3:
                if f != 1:
                    raise ValueError(f"latents with {f} frames are a video, not images")
                out = out.squeeze(2)
        if out.shape[1:] != tuple(sample_shape):
            raise ValueError(f"latents {tuple(latents.shape)} do not unfold to samples of shape "
                             f"{tuple(sample_shape)}")
        return out

    def text_conditioning(self, states: torch.Tensor, pooled: torch.Tensor) -> Conditioning:
        """The conditioning from MiniLM token states (B, L, D) and pooled vectors (B, D)."""
        key, pooled_key = self.text_keys
        return {key: states} if pooled_key is None else {key: states, pooled_key: pooled}


CODECS: dict[str, Codec] = {
    "FluxTransformer2DModel": Codec("tokens", 4, ("encoder_hidden_states", "pooled_projections")),
    "ZImageTransformer2DModel": Codec("image", 2, ("cap_feats", None)),
    "WanTransformer3DModel": Codec("video", 2, ("encoder_hidden_states", None)),
}
"""The codec of every transformer class an embedded model may have."""


def codec_for(model_class: str) -> Codec:
    """The codec of an embedded model's transformer class.

    Example:
        >>> codec_for("ZImageTransformer2DModel").to_latents(torch.zeros(1, 3, 16, 16)).shape
        torch.Size([1, 12, 8, 8])
    """
    if model_class not in CODECS:
        raise ValueError(f"no embedded model has a {model_class}; embedded transformer classes: "
                         f"{', '.join(CODECS)}")
    return CODECS[model_class]
