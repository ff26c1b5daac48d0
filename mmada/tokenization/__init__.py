"""Text tokenizers, special tokens and the unified sequence layouts."""

from mmada.tokenization.layouts import SequenceBatch, SequenceBuilder, left_pad
from mmada.tokenization.special import SPECIAL_TOKENS, SpecialTokenIds, check_vocab
from mmada.tokenization.text import (
    CHAT_TEMPLATE,
    R2I_PREFIX,
    THINK_PREFIX,
    builtin_tokenizer,
    load_text_tokenizer,
    train_bpe_tokenizer,
)

__all__ = [
    "CHAT_TEMPLATE",
    "R2I_PREFIX",
    "SPECIAL_TOKENS",
    "THINK_PREFIX",
    "SequenceBatch",
    "SequenceBuilder",
    "SpecialTokenIds",
    "builtin_tokenizer",
    "check_vocab",
    "left_pad",
    "load_text_tokenizer",
    "train_bpe_tokenizer",
]
