"""Built-in sources that need no download: ``builtin:arithmetic``, ``builtin:shapes``, ``sklearn:digits``.

Generators are pure functions of (seed, index), so a chunk ``[start, stop)`` is generated on its
own and the output does not depend on the chunking. ``builtin:shapes`` with ``vqa: true`` emits one
record per (scene, question) for mmu specs; ground truth (objects, answer, label) goes into the
sample metadata. ``sklearn:digits`` is scikit-learn's bundled 8×8 handwritten digits (1797
images), upscaled to ``image_size`` RGB and captioned "a handwritten digit N".
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Iterator

import numpy as np
from PIL import Image

from mmada.builtin import arithmetic as arith_mod
from mmada.builtin import shapes as shapes_mod
from mmada.data.sources.base import Chunk, Normalized, RawRecord, RawReject, Reader, register
from mmada.data.specs import BuiltinSource, CurationSpec, FilterSpec, SourceBase

DIGITS_N = 1797


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target  # (1797, 8, 8) float in [0, 16], (1797,) int


def digit_image(i: int, size: int) -> np.ndarray:
    """Digit ``i`` as an (size, size, 3) uint8 RGB array (white strokes on black)."""
    images, _ = _digits()
    small = np.clip(np.rint(images[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # (8, 8)
    im = Image.fromarray(small, mode="L").resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    return np.asarray(im)


def _count(src: BuiltinSource) -> int:
    if src.uri == "sklearn:digits":
        return src.n or DIGITS_N
    assert src.n is not None
    return src.n


@register
class BuiltinReader(Reader):
    type = "builtin"

    def fingerprint(self, src: SourceBase) -> str:
        assert isinstance(src, BuiltinSource)
        params = src.model_dump(mode="json", exclude={"name"})
        if src.uri == "builtin:arithmetic":
            code = inspect.getsource(arith_mod)
        elif src.uri == "builtin:shapes":
            code = inspect.getsource(shapes_mod)
        else:
            import sklearn

            code = f"sklearn {sklearn.__version__}"
        payload = json.dumps(params, sort_keys=True) + "\0" + hashlib.sha256(code.encode()).hexdigest()
        return hashlib.sha256(payload.encode()).hexdigest()

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        assert isinstance(src, BuiltinSource)
        n = _count(src)
        return [Chunk(src.name, k, None, 0, s, min(n, s + chunk_size), s) for k, s in enumerate(range(0, n, chunk_size))]

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        assert isinstance(src, BuiltinSource)
        start, stop = chunk.start, chunk.stop if chunk.stop is not None else _count(src)
        if src.uri == "builtin:arithmetic":
            recs = arith_mod.generate_arithmetic(stop - start, seed=src.seed, difficulty=src.difficulty,
                                                 max_operand=src.max_operand, start=start)
            for i, rec in enumerate(recs, start):
                yield RawRecord(f"{i:09d}", f"record {i}", None, rec)
        elif src.uri == "builtin:shapes":
            tasks = tuple(src.tasks) if src.tasks else shapes_mod.TASKS
            recs = shapes_mod.generate_shapes(stop - start, seed=src.seed, image_size=src.image_size, tasks=tasks,
                                              start=start)
            for i, rec in enumerate(recs, start):
                if src.vqa:
                    for j, qa in enumerate(rec["vqa"]):
                        yield RawRecord(f"{i:09d}-q{j}", f"scene {i} question {j}", None, {**rec, "qa": qa})
                else:
                    yield RawRecord(f"{i:09d}", f"scene {i}", None, rec)
        else:  # sklearn:digits
            _, labels = _digits()
            for i in range(start, stop):
                yield RawRecord(f"{i:09d}", f"digit {i}", None, {"image": digit_image(i, src.image_size),
                                                                "label": int(labels[i])})

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        if src.uri == "builtin:arithmetic":
            return Normalized(source_id=d["id"], question=d["question"], thinking=d["thinking"], answer=d["answer"],
                              gold=d["answer"], metadata={"gold_answer": d["answer"], "difficulty": d["difficulty"]})
        if src.uri == "builtin:shapes":
            meta = {**d["metadata"], "caption": d["caption"]}
            if "qa" in d:
                qa = d["qa"]
                return Normalized(source_id=d["id"], question=qa["question"], answer=qa["answer"], thinking=qa["thinking"],
                                  response=qa["answer"], gold=qa["answer"], image=d["image"],
                                  metadata={**meta, "gold_answer": qa["answer"]})
            return Normalized(source_id=d["id"], caption=d["caption"], image=d["image"], metadata=meta)
        label = d["label"]
        return Normalized(source_id=f"digit-{raw.uid}", caption=f"a handwritten digit {label}", image=d["image"],
                          metadata={"label": label})
