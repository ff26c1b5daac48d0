"""Reasoning / chat sources: GSM8K, MATH, s1K/OpenThoughts-style traces, chat messages, Alpaca.

Each type can live in any text container — JSON Lines (``.jsonl``, also gzip), a JSON array
(``.json``), Parquet, or an HF ``datasets.save_to_disk`` directory — chosen by ``container`` or by
the file (``auto``). Field names come from the source's ``fields`` mapping (defaults in
``mmada.data.specs.DEFAULT_FIELDS``), so a renamed column is a one-line spec change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from mmada.data.answers import (
    final_answer,
    last_boxed,
    last_number,
    split_gsm8k,
    strip_calculator_annotations,
)
from mmada.data.errors import DataError, RecordRejected
from mmada.data.io import expand, fs_and_path
from mmada.data.schema import Message
from mmada.data.sources import containers as C
from mmada.data.sources.base import (
    Chunk,
    Normalized,
    RawRecord,
    RawReject,
    Reader,
    get_field,
    nonempty,
    register,
)
from mmada.data.specs import CurationSpec, FilterSpec, SourceBase
from mmada.tokenization.text import split_think


def _container_of(uri: str, declared: str) -> str:
    if declared != "auto":
        return declared
    if uri.startswith("pipe:"):
        return "jsonl"
    fs, path = fs_and_path(uri)
    if fs.isdir(path):
        return "hf_disk"
    low = uri.lower()
    for ext in C.COMPRESSED:
        low = low.removesuffix(ext)
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(".arrow"):
        return "arrow"
    if low.endswith(".json"):
        with C.open_decompressed(uri) as f:  # JSON arrays start with '[', JSON Lines with '{'
            head = f.read(4096).removeprefix(C.BOM).lstrip()
        return "json" if head.startswith(b"[") else "jsonl"
    return "jsonl"


class TextReader(Reader):
    def files(self, src: SourceBase) -> list[str]:
        if getattr(src, "container", "auto") == "hf_disk" or (
            src.container == "auto" and not src.uri.startswith("pipe:") and _isdir(src.uri)  # type: ignore[attr-defined]
        ):
            return C.hf_disk_files(src.uri, src.split)  # type: ignore[attr-defined]
        return expand(src.uri)

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        files = self.files(src)
        chunks: list[Chunk] = []
        for fi, uri in enumerate(files):
            cont = "arrow" if uri.endswith(".arrow") else _container_of(uri, src.container)  # type: ignore[attr-defined]
            if cont == "hf_disk":
                raise DataError(f"{uri!r}: a datasets directory must be the source uri itself")
            if not uri.startswith("pipe:") and _isdir(uri):
                raise DataError(f"source {src.name!r}: {uri!r} is a directory, but container {cont!r} reads a "
                                "file; name the files (e.g. a glob: dir/*.jsonl) or use container hf_disk for a "
                                "`datasets` save_to_disk directory")
            if cont == "jsonl":
                part = C.plan_jsonl(src.name, [uri], chunk_size)
            elif cont == "parquet":
                part = C.plan_parquet(src.name, [uri], chunk_size)
            else:  # json array, arrow stream: one chunk per file
                part = [Chunk(src.name, 0, uri, 0, 0, None, 0)]
            for c in part:
                c.index, c.file_index = len(chunks), fi
                c.extra["container"] = cont
                chunks.append(c)
        return chunks

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        cont = chunk.extra["container"]
        if cont == "jsonl":
            yield from C.read_jsonl(chunk, filters.max_record_bytes)
        elif cont == "json":
            yield from C.read_json_array(chunk, filters.max_record_bytes)
        elif cont == "parquet":
            yield from C.read_parquet(chunk, filters.max_record_bytes)
        elif cont == "arrow":
            yield from C.read_arrow_stream(chunk, filters.max_record_bytes)
        else:
            raise DataError(f"unknown container {cont!r}")


def _isdir(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.isdir(path)


def _id(src: SourceBase, d: dict) -> str | None:
    v = get_field(d, src.field("id"), field_name="id", types=None, required=False)
    return None if v is None else str(v)


@register
class Gsm8kReader(TextReader):
    type = "gsm8k"

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        q = nonempty(get_field(d, src.field("question"), field_name="question"), "question")
        a = get_field(d, src.field("answer"), field_name="answer")
        parts = split_gsm8k(a)
        if parts is None:
            raise RecordRejected("no_final_answer", "answer has no '#### N' line")
        trace, gold = parts
        gold = gold.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+", gold) else gold
        thinking = strip_calculator_annotations(trace) if spec.template.strip_calculator_annotations else trace
        return Normalized(source_id=_id(src, d), question=q.strip(), thinking=nonempty(thinking.strip(), "answer trace"),
                          answer=gold, gold=gold, solution=trace, metadata={"gold_answer": gold})


@register
class MathReader(TextReader):
    type = "math"

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        problem = nonempty(get_field(d, src.field("problem"), field_name="problem"), "problem")
        solution = nonempty(get_field(d, src.field("solution"), field_name="solution"), "solution")
        gold_field = get_field(d, src.field("answer"), field_name="answer", types=(str, int, float), required=False)
        boxed = last_boxed(solution)
        if boxed is None:
            raise RecordRejected("no_final_answer", "solution has no \\boxed{} answer")
        gold = str(gold_field) if gold_field is not None else boxed
        meta = {"gold_answer": gold}
        for k in ("level", "type", "subject"):
            if isinstance(d.get(k), (str, int)):
                meta[k] = d[k]
        return Normalized(source_id=_id(src, d), question=problem.strip(), thinking=solution.strip(), answer=boxed,
                          gold=gold, metadata=meta)


@register
class ReasoningReader(TextReader):
    """s1K (question, thinking_trajectories, attempt, solution), OpenThoughts-style and similar."""

    type = "reasoning"

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        q = nonempty(get_field(d, src.field("question"), field_name="question"), "question")
        th = get_field(d, src.field("thinking"), field_name="thinking", types=(str, list))
        if isinstance(th, list):
            if not all(isinstance(x, str) for x in th):
                raise RecordRejected("wrong_type", "thinking list must hold strings")
            th = "\n\n".join(th)
        th = nonempty(th, "thinking")
        ans = nonempty(get_field(d, src.field("answer"), field_name="answer"), "answer")
        inner, _ = split_think(th)  # traces stored with their own <think> tags
        if inner is not None:
            th = inner
        gold_raw = get_field(d, src.field("gold"), field_name="gold", types=(str, int, float), required=False)
        gold = None
        if gold_raw is not None:
            g = str(gold_raw).strip()
            gold = last_boxed(g) or (g if len(g) <= 64 else last_number(g))
        short = final_answer(ans)
        meta = {"gold_answer": gold} if gold is not None else {}
        return Normalized(source_id=_id(src, d), question=q.strip(), thinking=th.strip(), answer=short,
                          response=ans.strip(), gold=gold, metadata=meta)


_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant",
          "bot": "assistant", "system": "system"}


def parse_messages(items: object, field_name: str) -> list[Message]:
    """[{role, content}] or ShareGPT [{from, value}] -> messages ending with the assistant."""
    if not isinstance(items, list) or not items:
        raise RecordRejected("wrong_type" if not isinstance(items, list) else "bad_conversation",
                             f"{field_name} must be a non-empty list of messages")
    out: list[Message] = []
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise RecordRejected("wrong_type", f"{field_name}[{i}] is a {type(it).__name__}, not an object")
        role = it.get("role", it.get("from"))
        content = it.get("content", it.get("value"))
        if not isinstance(role, str) or role.lower() not in _ROLES:
            raise RecordRejected("bad_conversation", f"{field_name}[{i}] has unknown role {role!r}")
        if not isinstance(content, str):
            raise RecordRejected("wrong_type", f"{field_name}[{i}].content must be a string, got {type(content).__name__}")
        out.append(Message(role=_ROLES[role.lower()], content=content))  # type: ignore[arg-type]
    if out[-1].role != "assistant" or not any(m.role == "user" for m in out):
        raise RecordRejected("bad_conversation", f"{field_name} must contain a user turn and end with the assistant")
    if not out[-1].content.strip():
        raise RecordRejected("empty_field", f"{field_name}: final assistant message is empty")
    return out


@register
class ChatReader(TextReader):
    type = "chat"

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        msgs = parse_messages(get_field(d, src.field("messages"), field_name="messages", types=list), "messages")
        thinking, final = split_think(msgs[-1].content)
        user = next(m.content for m in reversed(msgs) if m.role == "user")
        return Normalized(source_id=_id(src, d), messages=msgs, question=user, thinking=thinking, response=final)


@register
class AlpacaReader(TextReader):
    type = "alpaca"

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        ins = nonempty(get_field(d, src.field("instruction"), field_name="instruction"), "instruction")
        inp = get_field(d, src.field("input"), field_name="input", required=False) or ""
        out = nonempty(get_field(d, src.field("output"), field_name="output"), "output")
        question = ins.strip() + (f"\n\n{inp.strip()}" if inp.strip() else "")
        return Normalized(source_id=_id(src, d), question=question, response=out.strip())


__all__ = ["AlpacaReader", "ChatReader", "Gsm8kReader", "MathReader", "ReasoningReader", "parse_messages"]
