"""Token counting for length filters and manifest token stats.

The tokenizer is a spec field (``tokenizer: builtin`` or a saved tokenizer directory), loaded with
:func:`mmada.tokenization.load_text_tokenizer` once per thread (fast tokenizers are not meant to be
shared across threads that encode concurrently).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator

from mmada.tokenization import load_text_tokenizer

_local = threading.local()


def get_tokenizer(name: str):
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    if name not in cache:
        cache[name] = load_text_tokenizer(name)
    return cache[name]


# A fast tokenizer holds ~250 bytes per input character while it encodes (offsets, alignments,
# strings): one 5 MB record took 1.3 GB. Texts are therefore encoded in pieces, a bounded amount at a time.
PIECE_CHARS = 1 << 16  # a longer text is counted in pieces of about this size
BATCH_CHARS = 1 << 18  # characters per tokenizer call
# where a text is cut: before a single space between two non-spaces. Word-level pre-tokenizers
# (byte-level BPE, Metaspace, the LLaMA-3/GPT-4 patterns) never put a token across such a space, so
# the pieces' counts add up to the whole text's count exactly.
_WORD_BOUNDARY = re.compile(r"(?<=\S) (?=\S)")


def pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` cut at word boundaries into pieces of about ``size`` characters (a text without
    spaces for ``4 * size`` characters is cut there: its count may then differ by a token or two)."""
    start = 0
    while len(text) - start > size:
        m = _WORD_BOUNDARY.search(text, start + size, start + 4 * size)
        cut = m.start() if m else start + 4 * size
        yield text[start:cut]
        start = cut
    yield text[start:]


def count_tokens(tokenizer, texts: list[str], *, piece_chars: int = PIECE_CHARS,
                 batch_chars: int = BATCH_CHARS) -> list[int]:
    """Number of tokens of each text (no special tokens added), in memory bounded by ``batch_chars``."""
    counts = [0] * len(texts)
    batch: list[str] = []
    owners: list[int] = []
    size = 0

    def encode() -> None:
        enc = tokenizer(batch, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"]
        for i, ids in zip(owners, enc):
            counts[i] += len(ids)
        batch.clear()
        owners.clear()

    for i, text in enumerate(texts):
        for piece in pieces(text, piece_chars):
            batch.append(piece)
            owners.append(i)
            size += len(piece)
            if size >= batch_chars:
                encode()
                size = 0
    if batch:
        encode()
    return counts


def tokenizer_fingerprint(name: str) -> str:
    """sha256 of the tokenizer's full definition (vocab, merges, special tokens)."""
    tok = get_tokenizer(name)
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
