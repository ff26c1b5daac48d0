"""The in-process stages: the text tokenizer (``tokenizer``) and the curated shards (``curate-*``).

* ``tokenizer``  trains the built-in BPE into ``runs/tokenizer`` (~1 s).
* ``curate-*``   curates one data spec into ``runs/data/<name>`` (:func:`mmada.data.curate.curate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmada.data.curate import curate
from mmada.data.specs import CurationSpec
from mmada.files import atomic_dir
from mmada.pipeline import stages as S
from mmada.pipeline.context import StageContext
from mmada.pipeline.params import TokenizerParams
from mmada.tokenization.text import builtin_corpus, train_bpe_tokenizer


def run_tokenizer(p: TokenizerParams, ctx: StageContext, out: str = S.TOKENIZER_DIR) -> dict[str, Any]:
    ctx.reporter.progress(0.0, "building the built-in corpus")
    texts = builtin_corpus()
    ctx.reporter.progress(0.5, f"training a {p.vocab_size}-token byte-level BPE on {len(texts)} texts")
    target = Path(out)
    with atomic_dir(target) as tmp:
        tok = train_bpe_tokenizer(texts, p.vocab_size, tmp)
    ctx.reporter.progress(1.0, f"{len(tok)} tokens -> {target}")
    return {"path": str(target), "vocab_size": len(tok)}


def run_curate(spec: CurationSpec, ctx: StageContext, out: str) -> dict[str, Any]:
    def progress(phase: str, done: int, total: int) -> None:
        frac = (0.0 if phase == "chunks" else 0.5) + 0.5 * done / max(total, 1)
        ctx.reporter.progress(frac, f"{phase} {done}/{total}")

    m = curate(spec, out=out, progress=progress)
    rows = [{"shard": s.name, "split": s.split, "samples": s.count, "bytes": s.bytes, "sha256": s.sha256}
            for s in m.shards]
    ctx.reporter.table(rows, f"Shards of {m.name} at {out} (spec {m.spec_hash[:12]})")
    ctx.reporter.progress(1.0, f"{m.counts.kept} samples kept, {m.counts.rejected} rejected, "
                               f"{len(m.shards)} shards -> {out}")
    return {"path": out, "name": m.name, "kept": m.counts.kept, "rejected": m.counts.rejected,
            "shards": len(m.shards), "spec_hash": m.spec_hash}
