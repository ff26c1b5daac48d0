"""Held-out evaluation: drop eval problems whose question also occurs in curated training shards.

The built-in generators draw from a finite space (one-step arithmetic has a few tens of thousands
of distinct questions), so an eval seed disjoint from the training seed still repeats training
questions. ``mmada eval math --exclude-data runs/data/arithmetic`` removes them and reports how many.
Questions compare after case folding and whitespace collapsing (lm-eval's decontamination is
n-gram based; for templated problems an exact question match is the meaningful notion).

    seen = questions_in(["runs/data/arithmetic_1step"])          # every split: val is not eval either
    kept, removed = exclude_seen(records, seen)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence

from mmada.data.shards import ShardSet
from mmada.errors import MMaDAError


def normalize(text: str) -> str:
    return " ".join(text.casefold().split())


def questions_in(roots: Iterable[str]) -> set[str]:
    """Normalised questions of every sample (all splits) of the curated shard sets at ``roots``.

    Curation stores a record's question in the sample schema's ``question`` whatever the source
    called it, so this reads that field; a shard set without any (t2i captions, say) is an error
    rather than a silent no-op exclusion.
    """
    seen: set[str] = set()
    for root in roots:
        shards = ShardSet.open(root)
        found = {normalize(s["json"].question) for s in shards.iter_samples() if s["json"].question}
        if not found:
            raise MMaDAError(f"{root}: no sample has a question to exclude (kind {shards.manifest.kind!r}); "
                             "give the reasoning/VQA data the model saw")
        seen |= found
    return seen


def scene_key(metadata: Mapping, question: str | None = None) -> str:
    """A shapes scene (its ground-truth objects: shape, colour, box) and optionally a question about it.

    The built-in world's captions and questions come from a small grammar ("a red circle", "What color
    is the circle?"), so they repeat between any two seeds by construction; what can leak from training
    into evaluation is the same *scene*, or the same question about the same scene.
    """
    objs = sorted((o["shape"], o["color"], tuple(o["bbox"])) for o in metadata.get("objects", []))
    return json.dumps([objs, normalize(question) if question is not None else None])


def scenes_in(roots: Iterable[str], *, with_question: bool) -> set[str]:
    """:func:`scene_key` of every sample (all splits) of the curated shapes shard sets at ``roots``."""
    seen: set[str] = set()
    for root in roots:
        shards = ShardSet.open(root)
        found = set()
        for s in shards.iter_samples():
            meta = s["json"].metadata
            if isinstance(meta, Mapping) and "objects" in meta:
                found.add(scene_key(meta, s["json"].question if with_question else None))
        if not found:
            raise MMaDAError(f"{root}: no sample has scene metadata (objects) to exclude (kind "
                             f"{shards.manifest.kind!r}); give the shapes data the model saw")
        seen |= found
    return seen


def exclude_seen(records: Sequence[dict], seen: set[str], field: str = "question") -> tuple[list[dict], int]:
    """``(records whose field is not in seen, number removed)``; a record without the field is an error."""
    kept = []
    for i, r in enumerate(records):
        if not isinstance(r.get(field), str):
            raise MMaDAError(f"record {i} ({r.get('id', 'no id')}): no {field!r} to decontaminate on")
        if normalize(r[field]) not in seen:
            kept.append(r)
    return kept, len(records) - len(kept)


def held_out(generate: Callable[[int, int], list[dict]], n: int, seen: set[str], field: str = "question",
             *, max_draws: int = 50) -> tuple[list[dict], int]:
    """``n`` unseen records from a generator ``generate(count, start)``, drawing past removed ones.

    Returns ``(records, removed)``; raises if ``max_draws × n`` draws do not give ``n`` unseen records
    (the generator's space is exhausted by the training data).
    """
    kept: list[dict] = []
    removed = start = 0
    while len(kept) < n:
        if start >= max_draws * n:
            raise MMaDAError(f"only {len(kept)} of {n} generated problems are unseen after {start} draws: the "
                             "training data covers this generator's space; lower --n or change --difficulty")
        batch = generate(n - len(kept), start)
        if not batch:
            raise MMaDAError(f"the generator ran out after {start} records with {len(kept)} of {n} unseen")
        start += len(batch)
        fresh, dropped = exclude_seen(batch, seen, field)
        kept += fresh
        removed += dropped
    return kept, removed
