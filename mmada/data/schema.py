"""The canonical sample schema: what every shard holds, whatever the source format was.

A shard is a WebDataset tar; one sample is a group of members sharing a ``__key__``:

    <key>.json       Sample.model_dump() below (always)
    <key>.txt        the text the model sees: chat prompt + response for reasoning/mmu, caption for
                     image_text/t2i (always)
    <key>.png        the image, RGB PNG (image kinds, unless vq.keep_png is false)
    <key>.codes.npy  VQ codes of the image, shape (h*w,), int16 (codebooks <= 32768) or int32
                     (only when VQ pre-tokenisation ran; image-token ids are codes + text vocab size)

Keys are ``<source>-<record id>`` with only ``[A-Za-z0-9_-]`` (no dots: WebDataset splits the
extension at the first dot). Per kind, these ``json`` fields are set:

    reasoning   messages, prompt, response (+ thinking, answer when the source has them)
    mmu         messages, prompt, response, question, answer (+ thinking) and an image
    image_text  caption and an image
    t2i         caption and an image

``prompt``/``response`` are rendered with the LLaDA/MMaDA chat template (docs/model.md):
``prompt`` runs up to and including the last ``<|start_header_id|>assistant<|end_header_id|>\\n``
and ``response`` is the target (``<think>…</think> answer<|eot_id|>`` for traces). Ground truth
from the source (GSM8K gold answer, shapes objects, class label) stays in ``metadata``.
The training data module reads these fields; ``SCHEMA_VERSION`` changes on breaking edits.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field

from mmada.config import Strict

SCHEMA_VERSION = 1
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
MEMBER_ORDER = ("json", "txt", "png", "codes.npy")  # member order inside a sample (byte-stable tars)

Role = Literal["system", "user", "assistant"]


class Message(Strict):
    role: Role
    content: str


class ImageInfo(Strict):
    width: int
    height: int
    sha256: str = Field(description="sha256 of the RGB pixels (row-major, uint8) — identifies the picture")


class CodesInfo(Strict):
    length: int
    tokenizer: str
    resolution: int | None = None


class Sample(Strict):
    """One curated sample (the ``json`` member). See the module docstring for the per-kind fields."""

    schema_version: int = SCHEMA_VERSION
    key: str
    kind: Literal["reasoning", "image_text", "mmu", "t2i"]
    source: str = Field(description="Spec source name")
    source_id: str | None = Field(None, description="The record's own id in the source, if it has one")
    position: str = Field(description="Where the record was in the source, e.g. 'train.jsonl line 17'")
    split: Literal["train", "val"] = "train"
    messages: list[Message] = Field(default_factory=list)
    prompt: str | None = None
    response: str | None = None
    question: str | None = None
    thinking: str | None = None
    answer: str | None = None
    caption: str | None = None
    image: ImageInfo | None = None
    codes: CodesInfo | None = None
    num_tokens: int | None = Field(None, description="Tokens of `text` under the spec's tokenizer")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        """The ``txt`` member: prompt + response for conversations, else the caption."""
        if self.kind in ("reasoning", "mmu"):
            return (self.prompt or "") + (self.response or "")
        return self.caption or ""

    def json_bytes(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, sort_keys=True,
                          separators=(",", ":")).encode("utf-8")


def sample_members(sample: Sample, png: bytes | None = None, codes_npy: bytes | None = None) -> dict[str, bytes]:
    """The tar members of one sample, in :data:`MEMBER_ORDER`."""
    if not KEY_PATTERN.match(sample.key):
        raise ValueError(f"sample key {sample.key!r} has characters outside [A-Za-z0-9_-]")
    out = {"json": sample.json_bytes(), "txt": sample.text.encode("utf-8")}
    if png is not None:
        out["png"] = png
    if codes_npy is not None:
        out["codes.npy"] = codes_npy
    return out


def parse_sample(members: dict[str, bytes]) -> Sample:
    """Validate the ``json`` member of a sample read from a shard."""
    return Sample.model_validate_json(members["json"])
