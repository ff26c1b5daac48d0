"""Duplicate detection: exact (normalised text + image hash) and near-duplicate (MinHash-LSH).

Both are decided in one pass over all kept samples in a fixed global order (source, chunk,
position), keeping the first occurrence, so the result does not depend on how many workers
curated the chunks. MinHash signatures are computed per chunk (parallel) and stored beside the
chunk; the LSH index is built in the planning step. A candidate from the LSH index counts as a
near-duplicate only if its estimated Jaccard similarity reaches the threshold.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator

import numpy as np
from datasketch import MinHash, MinHashLSH

_WS = re.compile(r"\s+")
_SCHEME = "affine32"
SHINGLE_BATCH = 4096


def normalize_text(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def exact_key(text: str, image_sha: str | None = None) -> str:
    """Hash identifying a sample's content: normalised text plus the image pixels' sha256."""
    return hashlib.sha256((normalize_text(text) + "\0" + (image_sha or "")).encode()).hexdigest()


class MinHasher:
    """Word n-gram MinHash signatures (uint32, ``num_perm`` values) with shared permutations."""

    def __init__(self, num_perm: int = 64, ngram: int = 3, seed: int = 1):
        self.num_perm, self.ngram = num_perm, ngram
        self._perms = MinHash(num_perm=num_perm, seed=seed).permutations

    def shingles(self, text: str) -> Iterator[bytes]:
        words = normalize_text(text).split(" ")
        if len(words) <= self.ngram:
            yield " ".join(words).encode()
            return
        for i in range(len(words) - self.ngram + 1):
            yield " ".join(words[i:i + self.ngram]).encode()

    def signature(self, text: str) -> np.ndarray:
        m = MinHash(num_perm=self.num_perm, permutations=self._perms, scheme=_SCHEME)
        # update_batch holds (shingles, num_perm) uint64 arrays: feed it a bounded batch at a time
        # (the minimum over all shingles is the same), or one 5 MB text takes ~300 MB
        shingles = self.shingles(text)
        while batch := list(itertools.islice(shingles, SHINGLE_BATCH)):
            m.update_batch(batch)
        return m.hashvalues.astype(np.uint32)  # (num_perm,)


class NearDuplicateIndex:
    """Insert signatures in order; :meth:`check` returns the key of an earlier near-duplicate or None."""

    def __init__(self, threshold: float, num_perm: int):
        self.threshold, self.num_perm = threshold, num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.sigs: dict[str, np.ndarray] = {}

    def check(self, key: str, sig: np.ndarray) -> str | None:
        m = MinHash(num_perm=self.num_perm, hashvalues=sig.astype(np.uint64), scheme=_SCHEME)
        best, best_j = None, -1.0
        for cand in self.lsh.query(m):
            j = float(np.mean(self.sigs[cand] == sig))  # estimated Jaccard similarity
            if j >= self.threshold and (j > best_j or (j == best_j and cand < best)):
                best, best_j = cand, j
        if best is not None:
            return best
        self.lsh.insert(key, m)
        self.sigs[key] = sig
        return None
