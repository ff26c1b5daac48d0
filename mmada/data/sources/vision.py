"""Image–text sources: img2dataset tars, Parquet with image bytes, image folders, LLaVA JSON, IDX.

Images are passed on as raw bytes / arrays; decoding and checks happen in
:func:`mmada.data.images.prepare_image` so every type gets the same checks. Paths read from a
captions file or a LLaVA JSON are resolved *below* the source folder only (``path_escape``
otherwise), and tar members are read in memory, never extracted to disk.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from mmada.data.errors import DataError, RecordRejected
from mmada.data.io import check_no_link_out, expand, fs_and_path, join_under, read_bytes
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
from mmada.data.sources.text import _container_of, parse_messages
from mmada.data.specs import CurationSpec, FilterSpec, SourceBase
from mmada.tokenization.text import split_think

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _decode_caption(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8-sig").strip()  # utf-8, a leading byte-order mark dropped
    except UnicodeDecodeError as exc:
        raise RecordRejected("not_utf8", f"{what}: {exc}") from None


@register
class WdsReader(Reader):
    """img2dataset ``--output_format webdataset`` tars (``.tar``, also ``.tar.gz``): one chunk per tar."""

    type = "wds"

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        return [Chunk(src.name, i, uri, i) for i, uri in enumerate(self.files(src))]

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        yield from C.read_tar_groups(chunk, filters.max_record_bytes)

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        g = raw.data
        exts = [e.strip().lower() for e in src.field("image").split(";") if e.strip()]
        image = next((g[e] for e in exts if e in g), None)
        if image is None:
            raise RecordRejected("missing_field", f"image (no member with extension {'/'.join(exts)})")
        meta_json: dict = {}
        if "json" in g:
            try:
                meta_json = json.loads(_decode_caption(g["json"], "json member"))
            except json.JSONDecodeError as exc:
                raise RecordRejected("bad_json", f"json member: {exc}") from None
            if not isinstance(meta_json, dict):
                meta_json = {}
        cap_field = src.field("caption")
        if cap_field in g:
            caption = _decode_caption(g[cap_field], f"{cap_field} member")
        elif isinstance(meta_json.get("caption"), str):
            caption = meta_json["caption"].strip()
        else:
            raise RecordRejected("missing_caption", f"no {cap_field!r} member and no caption in json")
        meta = {k: v for k, v in meta_json.items() if isinstance(v, (str, int, float, bool)) and k != "caption"}
        return Normalized(source_id=g["__key__"], caption=nonempty(caption, "caption"), image=image, metadata=meta)


@register
class ImageParquetReader(Reader):
    """Parquet with an image column (binary, or an HF ``{bytes, path}`` struct) and a caption column."""

    type = "image_parquet"

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        return C.plan_parquet(src.name, self.files(src), chunk_size)

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        cols = [src.field("image").split(".")[0], src.field("caption").split(".")[0], src.field("id").split(".")[0]]
        yield from C.read_parquet(chunk, filters.max_record_bytes, columns=cols)

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        image = get_field(d, src.field("image"), field_name="image", types=(bytes, dict))
        caption = nonempty(get_field(d, src.field("caption"), field_name="caption"), "caption")
        sid = get_field(d, src.field("id"), field_name="id", types=None, required=False)
        return Normalized(source_id=None if sid is None else str(sid), caption=caption.strip(), image=image)


# ------------------------------------------------------------------------------------------------


def _folder_units(src: SourceBase) -> list[dict]:
    """The record units of an image folder: caption entries in file order, then uncaptioned images."""
    root = src.uri.rstrip("/")
    fs, rpath = fs_and_path(root)
    if not fs.isdir(rpath):
        raise DataError(f"image folder {src.uri!r} does not exist or is not a directory")
    rels = sorted(
        p[len(rpath.rstrip("/")) + 1:] for p in fs.find(rpath) if p.lower().endswith(IMAGE_EXTS)
    )
    units: list[dict] = []
    captions = getattr(src, "captions", None)
    if captions is None:  # img2dataset "files" layout: 000001.jpg + 000001.txt
        for rel in rels:
            txt = root + "/" + rel.rsplit(".", 1)[0] + ".txt"
            units.append({"file": rel, "caption_file": txt, "where": f"image {rel}"})
        return units
    cap_uri = captions if "://" in captions else root + "/" + captions
    name = C.basename(cap_uri)
    try:
        raw = read_bytes(cap_uri).removeprefix(C.BOM)
    except DataError as exc:
        raise DataError(f"captions file {cap_uri!r} not found") from exc
    seen: set[str] = set()
    low = cap_uri.lower()
    if low.endswith((".jsonl", ".json")):
        for ln, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{name} line {ln}"
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                units.append({"where": where, "reject": ("not_utf8", str(exc))})
                continue
            except json.JSONDecodeError as exc:
                units.append({"where": where, "reject": ("bad_json", str(exc))})
                continue
            if not isinstance(obj, dict):
                units.append({"where": where, "reject": ("wrong_type", "caption line is not an object")})
                continue
            units.append({"where": where, "entry": obj})
    elif low.endswith((".csv", ".tsv")):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"captions file {cap_uri!r} is not UTF-8: {exc}") from exc
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if low.endswith(".tsv") else ",")
        for ln, row in enumerate(reader, 2):
            units.append({"where": f"{name} line {ln}", "entry": dict(row)})
    else:
        raise DataError(f"captions file {cap_uri!r}: use .jsonl, .json (lines), .csv or .tsv")
    for u in units:
        e = u.get("entry")
        if e is not None:
            f = e.get(src.field("file"))
            if isinstance(f, str):
                seen.add(f.replace("\\", "/").lstrip("./"))
    for rel in rels:
        if rel not in seen:
            units.append({"file": rel, "where": f"image {rel}", "reject": ("missing_caption", f"{rel} has no caption entry")})
    return units


@register
class ImageFolderReader(Reader):
    type = "image_folder"

    def fingerprint_files(self, src: SourceBase) -> list[str]:
        fs, rpath = fs_and_path(src.uri)
        if not fs.isdir(rpath):
            return []
        return [fs.unstrip_protocol(p) if "://" in src.uri else p for p in sorted(fs.find(rpath))]

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        n = len(_folder_units(src))
        if n == 0:
            return [Chunk(src.name, 0, src.uri, 0, 0, 0, 0)]
        return [Chunk(src.name, k, src.uri, 0, s, min(n, s + chunk_size), s)
                for k, s in enumerate(range(0, n, chunk_size))]

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        units = _folder_units(src)
        root = src.uri.rstrip("/")
        if not units:
            yield RawReject("0-file", "folder", src.uri, "empty_file", "no images and no captions")
            return
        for k in range(chunk.start, chunk.stop if chunk.stop is not None else len(units)):
            u = units[k]
            uid, where = f"0-{k:09d}", u["where"]
            if "reject" in u:
                yield RawReject(uid, where, src.uri, u["reject"][0], u["reject"][1])
                continue
            try:
                if "entry" in u:
                    rel = get_field(u["entry"], src.field("file"), field_name="file")
                    caption = get_field(u["entry"], src.field("caption"), field_name="caption")
                else:
                    rel, caption = u["file"], None
                try:
                    img_uri = join_under(root, rel, what="image path")
                    check_no_link_out(root, img_uri, what="image")
                except ValueError as exc:
                    raise RecordRejected("path_escape", str(exc)) from None
                fs, p = fs_and_path(img_uri)
                if not fs.exists(p):
                    raise RecordRejected("missing_image", f"{rel} not found below the folder")
                if fs.size(p) > filters.max_record_bytes:
                    raise RecordRejected("record_too_large", f"{rel} exceeds {filters.max_record_bytes} bytes")
                if caption is None:
                    cap_uri = u["caption_file"]
                    cfs, cp = fs_and_path(cap_uri)
                    if not cfs.exists(cp):
                        raise RecordRejected("missing_caption", f"no {C.basename(cap_uri)} beside {rel}")
                    try:
                        check_no_link_out(root, cap_uri, what="caption file")
                    except ValueError as exc:
                        raise RecordRejected("path_escape", str(exc)) from None
                    caption = _decode_caption(read_bytes(cap_uri), C.basename(cap_uri))
                image = read_bytes(img_uri)
            except RecordRejected as rej:
                yield RawReject(uid, where, src.uri, rej.reason, rej.detail)
                continue
            yield RawRecord(uid, where, src.uri, {"file": rel, "caption": caption, "image": image})

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        return Normalized(source_id=d["file"], caption=nonempty(d["caption"], "caption").strip(), image=d["image"],
                          metadata={"file": d["file"]})


@register
class LlavaReader(Reader):
    """LLaVA instruction data: a JSON array (or JSON Lines) of {id, image, conversations}."""

    type = "llava"

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        chunks: list[Chunk] = []
        for fi, uri in enumerate(expand(src.uri)):
            cont = _container_of(uri, "auto")
            part = C.plan_jsonl(src.name, [uri], chunk_size) if cont == "jsonl" else [Chunk(src.name, 0, uri, 0)]
            for c in part:
                c.index, c.file_index = len(chunks), fi
                c.extra["container"] = cont
                chunks.append(c)
        return chunks

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        if chunk.extra.get("container") == "jsonl":
            yield from C.read_jsonl(chunk, filters.max_record_bytes)
        else:
            yield from C.read_json_array(chunk, filters.max_record_bytes)

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        d = raw.data
        rel = get_field(d, src.field("image"), field_name="image")
        msgs = parse_messages(get_field(d, src.field("conversations"), field_name="conversations", types=list),
                              "conversations")
        for m in msgs:
            m.content = m.content.replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()
        try:
            img_uri = join_under(src.image_root, rel, what="image path")  # type: ignore[attr-defined]
            check_no_link_out(src.image_root, img_uri, what="image")  # type: ignore[attr-defined]
        except ValueError as exc:
            raise RecordRejected("path_escape", str(exc)) from None
        fs, p = fs_and_path(img_uri)
        if not fs.exists(p):
            raise RecordRejected("missing_image", f"{rel} not found below image_root")
        if fs.size(p) > spec.filters.max_record_bytes:
            raise RecordRejected("record_too_large", f"{rel} exceeds {spec.filters.max_record_bytes} bytes")
        thinking, final = split_think(msgs[-1].content)
        question = next(m.content for m in msgs if m.role == "user")
        sid = get_field(d, src.field("id"), field_name="id", types=None, required=False)
        return Normalized(source_id=None if sid is None else str(sid), messages=msgs, question=question,
                          thinking=thinking, response=final, answer=final, image=read_bytes(img_uri),
                          metadata={"image_path": rel})


@register
class IdxReader(Reader):
    """MNIST-layout IDX image + label files (raw or .gz); ``class_names[label]`` → caption."""

    type = "idx"

    def files(self, src: SourceBase) -> list[str]:
        return [src.uri, src.labels]  # type: ignore[attr-defined]

    def _counts(self, src: SourceBase) -> tuple[int, int]:
        with C.open_decompressed(src.uri) as f:
            _, dims, _ = C.idx_header(f, src.uri)
            if len(dims) not in (3, 4):
                raise DataError(f"{src.uri!r}: IDX images must be N×H×W[×C], got dims {dims}")
            n_img = dims[0]
        with C.open_decompressed(src.labels) as f:  # type: ignore[attr-defined]
            _, ldims, _ = C.idx_header(f, src.labels)  # type: ignore[attr-defined]
            if len(ldims) != 1:
                raise DataError(f"{src.labels!r}: IDX labels must be 1-D, got dims {ldims}")  # type: ignore[attr-defined]
        return n_img, ldims[0]

    def plan(self, src: SourceBase, chunk_size: int) -> list[Chunk]:
        n_img, n_lab = self._counts(src)
        n = max(n_img, n_lab)
        if n == 0:
            return [Chunk(src.name, 0, src.uri, 0, 0, 0, 0, {"n_img": 0, "n_lab": 0})]
        return [Chunk(src.name, k, src.uri, 0, s, min(n, s + chunk_size), s, {"n_img": n_img, "n_lab": n_lab})
                for k, s in enumerate(range(0, n, chunk_size))]

    def read(self, src: SourceBase, chunk: Chunk, filters: FilterSpec) -> Iterator[RawRecord | RawReject]:
        n_img, n_lab = chunk.extra["n_img"], chunk.extra["n_lab"]
        stop = chunk.stop or 0
        if stop == 0:
            yield RawReject("0-file", "file", src.uri, "empty_file", "IDX file holds 0 images")
            return
        img_stop, lab_stop = min(stop, n_img), min(stop, n_lab)
        imgs = C.read_idx_records(src.uri, min(chunk.start, img_stop), img_stop)
        labs = C.read_idx_records(src.labels, min(chunk.start, lab_stop), lab_stop)  # type: ignore[attr-defined]
        for i in range(chunk.start, stop):
            img = next(imgs)[1] if i < n_img else None
            lab = next(labs)[1] if i < n_lab else None
            uid, where = f"0-{i:09d}", f"item {i}"
            if i >= n_img:
                yield RawReject(uid, where, src.uri, "missing_image", f"label {i} has no image (only {n_img} images)")
            elif i >= n_lab:
                yield RawReject(uid, where, src.uri, "missing_field", f"label (only {n_lab} labels)")
            elif img is None:
                yield RawReject(uid, where, src.uri, "truncated_file", f"{C.basename(src.uri)} ends before image {i}")
            elif lab is None:
                yield RawReject(uid, where, src.labels, "truncated_file", f"labels file ends before label {i}")  # type: ignore[attr-defined]
            else:
                yield RawRecord(uid, where, src.uri, {"image": img, "label": int(lab)})

    def normalize(self, src: SourceBase, raw: RawRecord, spec: CurationSpec) -> Normalized:
        label = raw.data["label"]
        names = src.class_names  # type: ignore[attr-defined]
        if not 0 <= label < len(names):
            raise RecordRejected("unknown_label", f"label {label} outside class_names (0..{len(names) - 1})")
        img = raw.data["image"]
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3, 4):
            img = img.transpose(1, 2, 0)
        return Normalized(caption=src.caption_template.format(label=names[label]), image=img,  # type: ignore[attr-defined]
                          metadata={"label": label, "class_name": names[label]})
