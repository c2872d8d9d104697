"""A word-level transformers tokenizer over a fixed vocabulary (the tiny stand-in models' text input).

``word_level_tokenizer(vocab)``: ``vocab[0:4]`` must be ``<pad>``, ``</s>``, ``<s>``, ``<unk>`` (ids 0-3, as the
tiny SigLIP / SAM3 configs expect); text is lowercased, split on whitespace and punctuation, ``</s>`` appended;
an unknown word becomes ``<unk>``. Built offline with the ``tokenizers`` library.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SPECIAL = ("<pad>", "</s>", "<s>", "<unk>")


def word_level_tokenizer(vocab: Sequence[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` over ``vocab`` (see the module docstring)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if tuple(vocab[:4]) != SPECIAL:
        raise ValueError(f"word_level_tokenizer: the vocabulary must start with {SPECIAL}, got {tuple(vocab[:4])}")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")
