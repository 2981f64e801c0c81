"""Tokenizers of the tiny pipelines (``tests/models/examples.py``): word-level vocabularies
built with the ``tokenizers`` library, no download. Every other component of a tiny pipeline has
the class the real pipeline uses, at hidden sizes of 16-32 with one or two layers."""

from __future__ import annotations

import re
from importlib.resources import files

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
