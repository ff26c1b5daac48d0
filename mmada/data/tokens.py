"""Token counting for length filters and manifest token stats.

The tokenizer is a spec field (``tokenizer: builtin`` or a saved tokenizer directory), loaded with
:func:`mmada.tokenization.load_text_tokenizer` once per thread (fast tokenizers are not meant to be
shared across threads that encode concurrently).
"""

from __future__ import annotations

import hashlib
import json
import threading

from mmada.tokenization import load_text_tokenizer

_local = threading.local()


def get_tokenizer(name: str):
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    if name not in cache:
        cache[name] = load_text_tokenizer(name)
    return cache[name]


def count_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Number of tokens of each text (no special tokens added)."""
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in enc]


def tokenizer_fingerprint(name: str) -> str:
    """sha256 of the tokenizer's full definition (vocab, merges, special tokens)."""
    tok = get_tokenizer(name)
    backend = getattr(tok, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tok.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
