"""Data specs: a typed, declarative description of *what* data to curate.

A spec (``data_specs/*.yaml``) names the sample kind, the sources (each a ``type`` + ``uri`` +
field mapping), filters, prompt template, split rule, shard size and output URI. The same pydantic
models are the Prefect UI form of the ``curate`` flow and the DVC params of the curation stage.

    spec = load_spec("data_specs/gsm8k.yaml", overrides=["sources.0.uri=/data/gsm8k/train.jsonl"])
    spec_hash(spec)   # content hash: what the data is, not where it is written

Unknown fields, bad URI schemes and out-of-range sizes fail validation with a :class:`SpecError`
naming the field (``sources.0.uri``), before anything is read or written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from mmada.builtin.shapes import TASKS
from mmada.config import MAX_COUNT, MAX_IMAGE_SIDE, Strict, apply_overrides, parse_yaml, validate
from mmada.data.errors import SpecError
from mmada.data.io import BUILTIN_URIS, check_uri, read_bytes
from mmada.tokenization.text import THINK_PREFIX

Kind = Literal["reasoning", "image_text", "mmu", "t2i"]
KIND_ALIASES = {"vqa": "mmu"}
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


# ------------------------------------------------------------------------------------------------
# Sources. ``fields`` maps canonical field names (left) to the column / key in the source (right);
# every type documents its canonical names and their defaults in ``DEFAULT_FIELDS``.

DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    "gsm8k": {"question": "question", "answer": "answer", "id": "id"},
    "math": {"problem": "problem", "solution": "solution", "answer": "answer", "id": "unique_id"},
    # s1K / OpenThoughts style: a question, a thinking trace, a final answer, optionally a gold answer.
    "reasoning": {"question": "question", "thinking": "thinking", "answer": "answer", "gold": "gold", "id": "id"},
    "chat": {"messages": "messages", "id": "id"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "id": "id"},
    # img2dataset tars: member extensions (first present wins) and the caption member / json key.
    "wds": {"image": "jpg;jpeg;png;webp", "caption": "txt"},
    "image_parquet": {"image": "image", "caption": "caption", "id": "key"},
    "image_folder": {"file": "file", "caption": "caption"},
    "llava": {"image": "image", "conversations": "conversations", "id": "id"},
    "idx": {},
    "builtin": {},
}


class SourceBase(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Unique source name (keys and counts use it)")]
    uri: Annotated[str, Field(description="Local path or fsspec URL; globs and {000..009} braces expand")]
    fields: dict[str, str] = Field(default_factory=dict, description="canonical field -> source column/key")

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        typ = cls.model_fields["type"].default
        known = DEFAULT_FIELDS[typ]
        bad = sorted(set(v) - set(known))
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad} for type {typ!r}; known: {sorted(known)}")
        return v

    def field(self, canonical: str) -> str:
        """The source column for a canonical field (mapping first, then the type's default)."""
        typ = type(self).model_fields["type"].default
        return self.fields.get(canonical, DEFAULT_FIELDS[typ].get(canonical, canonical))


Container = Literal["auto", "jsonl", "json", "parquet", "hf_disk"]


class _TextSource(SourceBase):
    container: Container = Field("auto", description="File layout; auto: by extension / directory content")
    split: str = Field("train", description="Split to read from an HF `datasets` save_to_disk DatasetDict")


class Gsm8kSource(_TextSource):
    """GSM8K JSONL: ``question``, ``answer`` = worked solution with ``<<calc>>`` notes and ``#### N``."""

    type: Literal["gsm8k"] = "gsm8k"


class MathSource(_TextSource):
    """MATH (Hendrycks) JSONL: ``problem``, ``solution`` with ``\\boxed{}``, optional ``answer``."""

    type: Literal["math"] = "math"


class ReasoningSource(_TextSource):
    """s1K / OpenThoughts style: question, thinking trace (str or list of str), final answer, gold."""

    type: Literal["reasoning"] = "reasoning"


class ChatSource(_TextSource):
    """Chat JSONL: ``messages`` = [{role, content}] (ShareGPT ``from``/``value`` also accepted)."""

    type: Literal["chat"] = "chat"


class AlpacaSource(_TextSource):
    """Alpaca instruction JSONL/JSON: ``instruction``, optional ``input``, ``output``."""

    type: Literal["alpaca"] = "alpaca"


class WdsSource(SourceBase):
    """img2dataset-style WebDataset tars: ``<key>.jpg`` + ``<key>.txt`` (+ ``<key>.json``)."""

    type: Literal["wds"] = "wds"


class ImageParquetSource(SourceBase):
    """Parquet with image bytes (a binary column or an HF ``{bytes, path}`` struct) and a caption."""

    type: Literal["image_parquet"] = "image_parquet"


class ImageFolderSource(SourceBase):
    """A folder of images with a captions file (jsonl/csv/tsv: file, caption) or ``<image>.txt`` files."""

    type: Literal["image_folder"] = "image_folder"
    captions: str | None = Field(
        None, description="Captions file relative to the folder (or a URI); None: a .txt beside each image"
    )


class LlavaSource(SourceBase):
    """LLaVA-style JSON: [{id, image, conversations: [{from: human|gpt, value}]}]."""

    type: Literal["llava"] = "llava"
    image_root: str = Field(..., description="Folder the `image` paths are relative to (cannot be left)")


class IdxSource(SourceBase):
    """IDX files (MNIST / Fashion-MNIST layout), optionally gzip-compressed; class names → captions."""

    type: Literal["idx"] = "idx"
    labels: str = Field(..., description="URI of the labels IDX file")
    class_names: list[str] = Field(..., min_length=2)
    caption_template: str = Field("a photo of a {label}", description="`{label}` is the class name")

    @field_validator("caption_template")
    @classmethod
    def _has_label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("caption_template must contain '{label}'")
        return v


class BuiltinSource(SourceBase):
    """Built-in generators that need no download: builtin:arithmetic, builtin:shapes, sklearn:digits."""

    type: Literal["builtin"] = "builtin"
    n: int | None = Field(None, ge=1, le=MAX_COUNT, description="Records to generate (sklearn:digits: at most 1797)")
    seed: int = 0
    difficulty: int | tuple[int, int] = Field((1, 3), description="arithmetic: operations per problem")
    max_operand: int = Field(9, ge=2, le=MAX_COUNT, description="arithmetic: largest operand")
    image_size: int = Field(32, ge=8, le=MAX_IMAGE_SIDE, description="shapes/digits: output image side")
    tasks: list[str] | None = Field(None, description="shapes: scene tasks (default: all)")
    vqa: bool = Field(False, description="shapes: emit one record per VQA question (for kind mmu)")

    @field_validator("uri")
    @classmethod
    def _builtin_uri(cls, v: str) -> str:
        if v not in BUILTIN_URIS:
            raise ValueError(f"unsupported URI scheme for type builtin: {v!r}; use one of {sorted(BUILTIN_URIS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> BuiltinSource:
        if self.uri == "sklearn:digits" and self.n is not None and self.n > 1797:
            raise ValueError("sklearn:digits has 1797 images; n must be <= 1797")
        if self.uri != "sklearn:digits" and self.n is None:
            raise ValueError(f"n (number of records) is required for {self.uri}")
        if self.uri == "builtin:shapes" and self.image_size < 16:
            raise ValueError("builtin:shapes needs image_size >= 16")
        if self.tasks is not None:
            bad = [t for t in self.tasks if t not in TASKS]
            if bad or not self.tasks:
                raise ValueError(f"unknown shapes tasks {bad}; expected a subset of {list(TASKS)}")
        lo, hi = (self.difficulty, self.difficulty) if isinstance(self.difficulty, int) else self.difficulty
        if not 1 <= lo <= hi <= 5:
            raise ValueError(f"difficulty must be within 1..5 (lo <= hi), got {self.difficulty!r}")
        return self


Source = Annotated[
    Gsm8kSource | MathSource | ReasoningSource | ChatSource | AlpacaSource | WdsSource | ImageParquetSource
    | ImageFolderSource | LlavaSource | IdxSource | BuiltinSource,
    Field(discriminator="type"),
]
SOURCE_TYPES = tuple(DEFAULT_FIELDS)
TEXT_TYPES = frozenset({"gsm8k", "math", "reasoning", "chat", "alpaca"})
CAPTION_TYPES = frozenset({"wds", "image_parquet", "image_folder", "idx"})
GOLD_TYPES = frozenset({"gsm8k", "math", "reasoning"})  # + builtin:arithmetic


def source_kinds(src: SourceBase) -> set[str]:
    """The sample kinds a source can feed."""
    typ = src.type  # type: ignore[attr-defined]
    if typ in TEXT_TYPES:
        return {"reasoning"}
    if typ in CAPTION_TYPES:
        return {"image_text", "t2i", "mmu"}  # mmu: captioning ("describe this image")
    if typ == "llava":
        return {"mmu"}
    if src.uri == "builtin:arithmetic":
        return {"reasoning"}
    return {"image_text", "t2i", "mmu"}  # builtin:shapes, sklearn:digits


def source_has_gold(src: SourceBase) -> bool:
    return src.type in GOLD_TYPES or src.uri == "builtin:arithmetic"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------


class FilterSpec(Strict):
    """Per-record filters. Every rejected record goes to quarantine.jsonl with its reason."""

    min_tokens: int | None = Field(None, ge=0, description="Drop samples whose rendered text is shorter")
    max_tokens: int | None = Field(None, ge=1, description="Drop samples whose rendered text is longer")
    verify_answer: bool = Field(False, description="Math: the gold answer must be what the trace computes (stated result or last calculation)")
    exact_dedup: bool = Field(True, description="Drop exact duplicates (normalised text + image), keep first")
    near_dedup: bool = Field(False, description="Drop near-duplicates by MinHash-LSH (reasoning text only)")
    near_dedup_threshold: float = Field(0.85, gt=0.0, le=1.0, description="Jaccard similarity threshold")
    near_dedup_num_perm: int = Field(64, ge=16, le=512)
    near_dedup_ngram: int = Field(3, ge=1, le=16, description="Word n-gram size of the shingles")
    min_image_size: int = Field(8, ge=1, description="Smallest accepted image side, pixels")
    max_image_pixels: int = Field(64_000_000, ge=1, description="Larger images are rejected (decompression bombs)")
    max_record_bytes: int = Field(8 << 20, ge=256, description="Raw records above this size are rejected")

    @model_validator(mode="after")
    def _order(self) -> FilterSpec:
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) > max_tokens ({self.max_tokens})")
        return self


class TemplateSpec(Strict):
    """Prompt rendering: the LLaDA/MMaDA chat template and the ``<think>`` convention."""

    bos: str = "<|startoftext|>"
    system: str | None = Field(None, description="Optional system message prepended to every conversation")
    think: bool = Field(True, description="Wrap traces in <think>…</think> and add the thinking prefix")
    think_prefix: str = THINK_PREFIX
    answer_format: Literal["boxed", "plain"] = Field("boxed", description="Final answer after </think>")
    strip_calculator_annotations: bool = Field(True, description="GSM8K: drop <<48/2=24>> notes")
    caption_question: str = Field(
        "Please describe this image in detail.", description="User turn for mmu samples built from captions"
    )


class SplitSpec(Strict):
    """Deterministic train/val split by a stable hash of each sample's key."""

    val_fraction: float = Field(0.05, ge=0.0, le=0.5)
    salt: str = Field("mmada", description="Change to draw a different (still deterministic) split")


class ShardSpec(Strict):
    max_samples: int = Field(10_000, ge=1, le=MAX_COUNT, description="Samples per shard")
    max_bytes: int = Field(1_000_000_000, ge=4096, description="Bytes per shard (a soft limit: ~1 GB suits DVC)")


class ImageSpec(Strict):
    size: int | None = Field(None, ge=8, le=MAX_IMAGE_SIDE, description="Resize (shorter side) + centre-crop to size×size; None: keep")


class VQSpec(Strict):
    """Optional pre-tokenisation of images with the MAGVIT-v2 tokenizer (``codes.npy`` members)."""

    enabled: bool = False
    model: str = Field("tiny", description="Tokenizer: a checkpoint dir, 'tiny', 'official', models:/… (mmada.data.vq.load_tokenizer_model)")
    resolution: int | None = Field(None, ge=8, le=MAX_IMAGE_SIDE)
    mode: Literal["crop", "squash", "none"] = Field("crop", description="resize mode of encode_images")
    batch_size: int = Field(64, ge=1, le=MAX_COUNT)
    device: str | None = Field(None, description="torch device; None: cuda if available")
    keep_png: bool = Field(True, description="Keep the png member next to the codes")


class CurationSpec(Strict):
    """What to curate. See data_specs/*.yaml for one ready spec per supported format."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description="Dataset name (shard names use it)")]
    kind: Kind = Field(..., description="reasoning | image_text | mmu (alias vqa) | t2i")
    description: str = ""
    sources: list[Source] = Field(..., min_length=1)
    filters: FilterSpec = Field(default_factory=FilterSpec)
    template: TemplateSpec = Field(default_factory=TemplateSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    shards: ShardSpec = Field(default_factory=ShardSpec)
    images: ImageSpec = Field(default_factory=ImageSpec)
    vq: VQSpec = Field(default_factory=VQSpec)
    tokenizer: str | None = Field("builtin", description="Text tokenizer for token filters/stats; None: off")
    output: str = Field("runs/data/{name}", description="Output URI; {name} and {spec_hash} are filled in")
    chunk_size: int = Field(5000, ge=1, le=MAX_COUNT, description="Records per curation task (does not change the output)")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("kind"), str):
            data["kind"] = KIND_ALIASES.get(data["kind"], data["kind"])
        srcs = data.get("sources")
        if isinstance(srcs, list):
            out = []
            for s in srcs:
                if isinstance(s, dict) and "name" not in s and isinstance(s.get("type"), str):
                    s = dict(s)
                    uri = s.get("uri")
                    s["name"] = uri.split(":", 1)[1] if s["type"] == "builtin" and uri in BUILTIN_URIS else s["type"]
                out.append(s)
            data["sources"] = out
        return data

    @model_validator(mode="after")
    def _check(self) -> CurationSpec:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sources: duplicate source name(s) {dup}; give each source a unique `name`")
        for i, s in enumerate(self.sources):
            check_uri(s.uri, field=f"sources.{i}.uri", allow_builtin=s.type == "builtin")
            for extra in ("labels", "captions", "image_root"):
                val = getattr(s, extra, None)
                if isinstance(val, str):
                    check_uri(val, field=f"sources.{i}.{extra}", allow_pipe=extra == "labels")
            if self.kind not in source_kinds(s):
                raise ValueError(
                    f"sources.{i}: a {s.type!r} source ({s.uri}) cannot feed kind {self.kind!r}; "
                    f"it feeds {sorted(source_kinds(s))}"
                )
            if self.filters.verify_answer and not source_has_gold(s):
                raise ValueError(f"filters.verify_answer: source {s.name!r} ({s.type}) has no gold answers")
        check_uri(self.output, field="output", allow_pipe=False)
        if self.tokenizer is None and (self.filters.min_tokens is not None or self.filters.max_tokens is not None):
            raise ValueError("filters.min_tokens/max_tokens need a tokenizer; tokenizer is null")
        if self.filters.near_dedup and self.kind != "reasoning":
            raise ValueError("filters.near_dedup works on text and is only supported for kind 'reasoning'")
        if self.vq.enabled and self.kind == "reasoning":
            raise ValueError("vq.enabled: VQ pre-tokenisation needs an image kind, not 'reasoning'")
        return self

    def output_uri(self) -> str:
        """The output URI with ``{name}`` and ``{spec_hash}`` filled in."""
        return self.output.replace("{name}", self.name).replace("{spec_hash}", spec_hash(self)[:16])


# ------------------------------------------------------------------------------------------------

# Fields that say where/how fast, not what: excluded from the content hash.
_NOT_CONTENT = {"output": True, "description": True, "chunk_size": True, "vq": {"device": True, "batch_size": True}}


def spec_hash(spec: CurationSpec) -> str:
    """sha256 of the content-defining part of the spec (not its output location or parallelism)."""
    payload = spec.model_dump(mode="json", exclude=_NOT_CONTENT)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def validate_spec(data: dict, overrides: list[str] | None = None) -> CurationSpec:
    """Validate a raw dict (after overrides) into a :class:`CurationSpec`, or raise :class:`SpecError`."""
    if not isinstance(data, dict):
        raise SpecError(f"a data spec must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides, error=SpecError)
    return validate(CurationSpec, data, "invalid spec", error=SpecError, tags=frozenset(SOURCE_TYPES))


def load_spec(path: str | Path | dict | CurationSpec, overrides: list[str] | None = None) -> CurationSpec:
    """Load a spec from a YAML file (any fsspec URL), a dict or a spec, applying ``overrides``."""
    if isinstance(path, CurationSpec):
        return validate_spec(path.model_dump(mode="json"), overrides) if overrides else path
    if isinstance(path, dict):
        return validate_spec(path, overrides)
    uri = str(path)
    check_uri(uri, field="spec path", allow_pipe=False)
    try:
        text = read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec {uri!r} is not UTF-8 text") from exc
    return validate_spec(parse_yaml(text, f"spec {uri!r}", error=SpecError), overrides)
