"""A GenEval-like checker for the built-in shapes world (``mmada.builtin.shapes``).

It inverts the renderer: flat palette colours on black, so an image is parsed back into objects
and the caption's claims are checked exactly. It is also the UniGRPO text-to-image reward, so it
has to survive real decoded generations (colour drift, soft edges, noise), hence:

1. **Pixels → palette colours.** Each pixel is projected onto every palette colour's ray
   (``p ≈ α·c``): the colour with the smallest angle wins, ``α`` is its strength. Blur mixes a
   colour with black, which keeps the angle and lowers ``α``, so soft edges keep their colour
   (plain nearest-RGB would call a half-dark yellow "green"). Dark pixels (small ``α``) are
   background; too-large angles (no palette colour) are ignored.
2. **Objects.** Connected components of *core* pixels (``α ≥ core_alpha``) per colour are the
   objects (blur can bridge a 1-pixel gap between same-coloured objects; the cores stay apart);
   each grows into the adjacent *soft* pixels of its colour. Components below a minimum area are
   noise.
3. **Shape.** Analysis by synthesis: the renderer's own circle / square / triangle is drawn into
   boxes around the object's box (as found, a pixel larger / smaller, apex a pixel higher),
   blurred by a few small kernels (none, binomial, 3-box), and compared with the object's colour
   strength map; the smallest squared error names the shape.
4. **Claims.** The caption (parsed, or the record's ground-truth metadata) is a list of
   ``(shape, colour, count)`` groups plus an optional relation. ``correct`` needs every group
   present with the right colour (exact count for ``counting``, at least the count otherwise —
   GenEval does not penalise extra objects outside counting) and the relation to hold between
   object centres.

    >>> from mmada.builtin.shapes import generate_shapes
    >>> rec = generate_shapes(1)[0]
    >>> score_shapes_image(rec["image"], rec["caption"])["correct"]
    True

Overall (GenEval-style) = mean of the per-task accuracies: see :func:`geneval_summary`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from mmada.builtin.shapes import (
    COLORS,
    NUMBER_WORDS,
    RELATIONS,
    SHAPES,
    TASKS,
    ShapeObject,
    draw_object,
    relation_holds,
)
from mmada.errors import MMaDAError

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[c] for c in _COLOR_NAMES], dtype=np.float64)  # (K, 3)
_PALETTE_UNIT = _PALETTE / np.linalg.norm(_PALETTE, axis=1, keepdims=True)


@dataclass(frozen=True)
class CheckerConfig:
    """Thresholds of the pixel and object stages (defaults tuned for 32×32 decoded images)."""

    core_alpha: float = 0.7  # strength (fraction of the palette colour) of an object's core pixels
    soft_alpha: float = 0.3  # weakest strength that still belongs to an object (blurred rim)
    max_angle_deg: float = 14.0  # core pixels: largest angle to the palette colour
    soft_max_angle_deg: float = 24.0  # rim pixels: noisier, allow more
    min_area_frac: float = 8 / 1024  # smallest object (full mask) as a fraction of the image
    min_core_frac: float = 3 / 1024  # smallest object core
    position_margin: float = 0.0  # pixels by which centres must differ for a relation


@dataclass
class DetectedObject:
    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) inclusive, like ShapeObject
    area: int
    shape_match: float  # 1 − squared error / mass against the best rendered template (1 = exact)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    def as_shape_object(self) -> ShapeObject:
        return ShapeObject(self.shape, self.color, self.bbox)


@dataclass(frozen=True)
class ObjectGroup:
    shape: str
    color: str
    count: int = 1


@dataclass(frozen=True)
class ShapesSpec:
    """What an image must show: object groups and an optional ``groups[0] <relation> groups[1]``."""

    task: str
    groups: tuple[ObjectGroup, ...]
    relation: str | None = None
    caption: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


# ---------------------------------------------------------------------------------------------
# specs: from metadata or from a caption

_C = "|".join(_COLOR_NAMES)
_S = "|".join(SHAPES)
_NUM = "|".join([*NUMBER_WORDS.values(), r"\d+"])
_REL = r"to the left of|to the right of|left of|right of|above|below"
_RE_COUNT = re.compile(rf"^(?P<n>{_NUM}) (?P<c>{_C}) (?P<s>{_S})s?$")
_RE_POS = re.compile(rf"^(?:an?|one) (?P<c1>{_C}) (?P<s1>{_S}) (?P<rel>{_REL}) (?:an?|one) (?P<c2>{_C}) (?P<s2>{_S})$")
_RE_TWO = re.compile(rf"^(?:an?|one) (?P<c1>{_C}) (?P<s1>{_S}) and (?:an?|one) (?P<c2>{_C}) (?P<s2>{_S})$")
_RE_ONE = re.compile(rf"^(?:an?|one) (?P<c>{_C}) (?P<s>{_S})$")
_WORD_TO_N = {w: n for n, w in NUMBER_WORDS.items()}


def parse_caption(caption: str, task: str | None = None) -> ShapesSpec:
    """Parse a shapes caption (the generator's templates, case/punctuation tolerant) into a spec.

    ``task`` overrides the inferred one (a two-object caption is ``two_objects`` unless told
    ``color_attr``; a one-object caption ``single_object`` unless told ``colors``) — the checks are
    the same, only the per-task bucket differs.
    """
    t = " ".join(str(caption).lower().replace(",", " ").split()).rstrip(".").strip()
    t = re.sub(r"^(an image of|a photo of|a picture of|an image with|a drawing of) ", "", t)
    if m := _RE_COUNT.match(t):
        n = _WORD_TO_N.get(m["n"]) or int(m["n"])
        spec = ShapesSpec("counting", (ObjectGroup(m["s"], m["c"], n),), caption=caption)
    elif m := _RE_POS.match(t):
        rel = m["rel"].replace("to the ", "")
        groups = (ObjectGroup(m["s1"], m["c1"]), ObjectGroup(m["s2"], m["c2"]))
        spec = ShapesSpec("position", groups, relation=rel, caption=caption)
    elif m := _RE_TWO.match(t):
        spec = ShapesSpec("two_objects", (ObjectGroup(m["s1"], m["c1"]), ObjectGroup(m["s2"], m["c2"])), caption=caption)
    elif m := _RE_ONE.match(t):
        spec = ShapesSpec("single_object", (ObjectGroup(m["s"], m["c"]),), caption=caption)
    else:
        raise MMaDAError(
            f"cannot parse shapes caption {caption!r}; expected e.g. 'a red circle', 'three green triangles', "
            "'a red circle and a blue square' or 'a red circle to the left of a blue square'"
        )
    return _with_task(spec, task)


def _with_task(spec: ShapesSpec, task: str | None) -> ShapesSpec:
    if task is None:
        return spec
    if task not in TASKS:
        raise MMaDAError(f"unknown shapes task {task!r}; expected one of {TASKS}")
    return ShapesSpec(task, spec.groups, spec.relation, spec.caption, spec.extra)


def spec_from_metadata(metadata: Mapping) -> ShapesSpec:
    """A spec from a record's ground-truth ``metadata`` (``task``, ``objects``, ``relation``)."""
    try:
        task, objects = metadata["task"], metadata["objects"]
    except KeyError as exc:
        raise MMaDAError(f"shapes metadata lacks field {exc.args[0]!r}") from None
    if task not in TASKS:
        raise MMaDAError(f"shapes metadata: unknown task {task!r}; expected one of {TASKS}")
    counts: dict[tuple[str, str], int] = {}
    for i, o in enumerate(objects):
        if o.get("shape") not in SHAPES or o.get("color") not in COLORS:
            raise MMaDAError(f"shapes metadata: object {i} has shape/color {o.get('shape')!r}/{o.get('color')!r}")
        counts[(o["shape"], o["color"])] = counts.get((o["shape"], o["color"]), 0) + 1
    groups = tuple(ObjectGroup(s, c, n) for (s, c), n in counts.items())
    relation = metadata.get("relation")
    if relation is not None and (relation not in RELATIONS or len(groups) != 2):
        raise MMaDAError(f"shapes metadata: relation {relation!r} needs two objects and one of {RELATIONS}")
    return ShapesSpec(task, groups, relation, metadata.get("caption"))


def to_spec(metadata_or_caption: str | Mapping | ShapesSpec, task: str | None = None) -> ShapesSpec:
    if isinstance(metadata_or_caption, ShapesSpec):
        return _with_task(metadata_or_caption, task)
    if isinstance(metadata_or_caption, str):
        return parse_caption(metadata_or_caption, task)
    if isinstance(metadata_or_caption, Mapping):
        if "objects" in metadata_or_caption:
            return _with_task(spec_from_metadata(metadata_or_caption), task)
        if "caption" in metadata_or_caption:
            return parse_caption(metadata_or_caption["caption"], task or metadata_or_caption.get("task"))
    raise MMaDAError(f"expected a caption, shapes metadata or ShapesSpec, got {type(metadata_or_caption).__name__}")


# ---------------------------------------------------------------------------------------------
# image → objects


def _as_array(image) -> np.ndarray:
    """PIL image / uint8 HWC / float CHW or HWC in [0, 1] → float64 (H, W, 3) in 0..255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    arr = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if arr.ndim != 3:
        raise MMaDAError(f"expected an RGB image, got an array of shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.shape[-1] != 3:
        raise MMaDAError(f"expected 3 colour channels, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if arr.max() <= 1.0 + 1e-6:
        arr = arr * 255.0
    return arr


def classify_pixels(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: palette index (H, W), strength α (H, W) and angle to that colour in degrees (H, W)."""
    flat = img.reshape(-1, 3)  # (N, 3)
    norm = np.linalg.norm(flat, axis=1) + 1e-9  # (N,)
    cos = (flat @ _PALETTE_UNIT.T) / norm[:, None]  # (N, K)
    k = cos.argmax(1)  # (N,)
    alpha = (flat * _PALETTE[k]).sum(1) / (_PALETTE[k] ** 2).sum(1)  # projection scale onto colour k
    angle = np.degrees(np.arccos(np.clip(cos[np.arange(len(k)), k], -1, 1)))
    h, w = img.shape[:2]
    return k.reshape(h, w), alpha.reshape(h, w), angle.reshape(h, w)


# Blurs a decoder may apply (separable 1-D kernels): none, binomial (≈ Gaussian σ 0.7), 3-box.
_KERNELS = (np.array([1.0]), np.array([0.25, 0.5, 0.25]), np.array([1 / 3, 1 / 3, 1 / 3]))


def _blur(t: np.ndarray, kern: np.ndarray) -> np.ndarray:
    if len(kern) == 1:
        return t
    r = len(kern) // 2
    p = np.pad(t, r)
    rows = sum(kern[i] * p[:, i : i + t.shape[1]] for i in range(len(kern)))[r:-r]  # blur along x
    pr = np.pad(rows, ((r, r), (0, 0)))
    return sum(kern[i] * pr[i : i + t.shape[0]] for i in range(len(kern)))


_PAD = 2  # template margin for the blur to spread into


@functools.lru_cache(maxsize=4096)
def _local_template(shape: str, bw: int, bh: int, k: int) -> np.ndarray:
    """The renderer's geometry for ``shape`` in a ``bw``×``bh`` box with a ``_PAD`` margin,
    blurred by ``_KERNELS[k]``: (bh + 2·PAD, bw + 2·PAD). Integer shifts leave PIL's raster
    unchanged, so one template per box size serves every position."""
    size = (bw + 2 * _PAD, bh + 2 * _PAD)
    rgb = Image.new("RGB", size, (0, 0, 0))
    box = (_PAD, _PAD, _PAD + bw - 1, _PAD + bh - 1)
    draw_object(ImageDraw.Draw(rgb), ShapeObject(shape, _COLOR_NAMES[0], box))
    t = _blur((np.asarray(rgb)[..., 0] > 0).astype(np.float64), _KERNELS[k])
    t.flags.writeable = False  # shared through the cache
    return t


def _template(shape: str, bbox: tuple[int, int, int, int], size: tuple[int, int], k: int) -> np.ndarray:
    """``_local_template`` placed at ``bbox`` in a (H, W) = ``size[::-1]`` canvas."""
    w, h = size
    x0, y0, x1, y1 = bbox
    t = _local_template(shape, x1 - x0 + 1, y1 - y0 + 1, k)
    canvas = np.zeros((h + 2 * _PAD, w + 2 * _PAD))
    canvas[y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t  # canvas is offset by _PAD
    return canvas[_PAD : _PAD + h, _PAD : _PAD + w]


def _bbox_candidates(b: tuple[int, int, int, int], w: int, h: int) -> set[tuple[int, int, int, int]]:
    x0, y0, x1, y1 = b
    out = set()
    for d in (-1, 0, 1):  # grown / as found / shrunk by a pixel on every side
        for top in (0, 1):  # a blurred triangle loses its thin apex: also try the top a pixel higher
            c = (max(0, x0 + d), max(0, y0 + d - top), min(w - 1, x1 - d), min(h - 1, y1 - d))
            if c[2] - c[0] >= 2 and c[3] - c[1] >= 2:
                out.add(c)
    return out or {b}


def classify_shape(
    strength: np.ndarray, bbox: tuple[int, int, int, int], valid: np.ndarray | None = None
) -> tuple[str, float]:
    """Best shape for an object's strength map (H, W) in [0, 1] by analysis-by-synthesis.

    Each shape is rendered into candidate boxes around ``bbox``, blurred by each kernel of
    ``_KERNELS``, and compared with ``strength`` near the box over the ``valid`` pixels (H, W)
    bool (pixels of other objects are left out); returns the shape with the smallest squared
    error and a similarity in [0, 1] (1 − error / object mass; 1.0 for an exact render).
    """
    h, w = strength.shape
    x0, y0, x1, y1 = bbox
    win = (slice(max(0, y0 - 3), min(h, y1 + 4)), slice(max(0, x0 - 3), min(w, x1 + 4)))
    weight = np.ones_like(strength)[win] if valid is None else valid[win].astype(np.float64)
    target = strength[win] * weight
    mass = max(float(target.sum()), 1.0)
    best = ("square", np.inf)
    for shape in SHAPES:
        for b in _bbox_candidates(bbox, w, h):
            for kern in range(len(_KERNELS)):
                err = float(((_template(shape, b, (w, h), kern)[win] * weight - target) ** 2).sum())
                if err < best[1]:
                    best = (shape, err)
    return best[0], max(0.0, 1.0 - best[1] / mass)


def detect_objects(image, config: CheckerConfig | None = None) -> list[DetectedObject]:
    """Parse an image (PIL, HWC/CHW array or tensor) into palette-coloured objects."""
    from scipy import ndimage

    cfg = config or CheckerConfig()
    img = _as_array(image)
    h, w = img.shape[:2]
    k, alpha, angle = classify_pixels(img)
    min_area = max(3, round(cfg.min_area_frac * h * w))
    min_core = max(2, round(cfg.min_core_frac * h * w))
    four = ndimage.generate_binary_structure(2, 1)
    owner = np.zeros((h, w), dtype=np.int64)  # global object id per pixel (0 = none)
    found: list[tuple[int, int]] = []  # (object id, colour index)
    for ci in range(len(_COLOR_NAMES)):
        soft = (k == ci) & (alpha >= cfg.soft_alpha) & (angle <= cfg.soft_max_angle_deg)
        core = soft & (alpha >= cfg.core_alpha) & (angle <= cfg.max_angle_deg)
        if not core.any():
            continue
        core_lab, n_core = ndimage.label(core, structure=four)
        sizes = ndimage.sum(core, core_lab, index=np.arange(1, n_core + 1))
        keep = [i + 1 for i, sz in enumerate(sizes) if sz >= min_core]
        if not keep:
            continue
        # Grow each kept core into the soft pixels of its colour: a soft pixel joins the nearest
        # core within its own soft component (so blur-bridged neighbours are split at the middle).
        seeds = np.where(np.isin(core_lab, keep), core_lab, 0)
        _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
        soft_lab, _ = ndimage.label(soft, structure=four)
        nearest = np.where(soft & (soft_lab[iy, ix] == soft_lab), seeds[iy, ix], 0)
        for lab in keep:
            mask = nearest == lab
            if mask.sum() >= min_area:
                found.append((len(found) + 1, ci))
                owner[mask] = len(found)
    # Projection of every pixel onto every palette colour: (K, H, W)
    alpha_all = np.einsum("hwc,kc->khw", img, _PALETTE) / (_PALETTE**2).sum(1)[:, None, None]
    objects: list[DetectedObject] = []
    for oid, ci in found:
        mask = owner == oid
        # Bounding box: pixels at least half as strong as the palette colour (blur spreads an
        # edge symmetrically around 0.5).
        half = mask & (alpha >= 0.5)
        ys, xs = np.nonzero(half if half.any() else mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
        # This colour's strength near the object; pixels owned by other objects are left out.
        valid = (owner == oid) | (owner == 0)
        shape, sim = classify_shape(np.clip(alpha_all[ci], 0.0, 1.0), bbox, valid)
        objects.append(DetectedObject(shape, _COLOR_NAMES[ci], bbox, int(mask.sum()), sim))
    objects.sort(key=lambda o: (o.bbox[1], o.bbox[0]))
    return objects


# ---------------------------------------------------------------------------------------------
# scoring


def score_shapes_image(
    image,
    metadata_or_caption: str | Mapping | ShapesSpec,
    *,
    task: str | None = None,
    config: CheckerConfig | None = None,
) -> dict:
    """Check one image against a caption or ground-truth metadata.

    Returns ``{"correct": bool, "task", "score": fraction of criteria met (a smooth reward),
    "criteria": {"objects", "colors", "count", "position"} (bool, position None if no relation),
    "groups": per required group {shape, color, required, found, found_any_color, ok},
    "detected": [{shape, color, bbox, area, shape_match}]}``.

    Criteria: ``objects`` — every required shape is there (any colour); ``colors`` — every required
    shape is there in the required colour; ``count`` — the right number of each (exact for
    ``counting``, at least for other tasks); ``position`` — the relation holds between the
    largest matching objects' centres.
    """
    cfg = config or CheckerConfig()
    spec = to_spec(metadata_or_caption, task)
    objs = detect_objects(image, cfg)
    groups, matched = [], []
    for g in spec.groups:
        same = sorted((o for o in objs if o.shape == g.shape and o.color == g.color), key=lambda o: -o.area)
        any_color = [o for o in objs if o.shape == g.shape]
        count_ok = len(same) == g.count if spec.task == "counting" else len(same) >= g.count
        groups.append({
            "shape": g.shape, "color": g.color, "required": g.count,
            "found": len(same), "found_any_color": len(any_color), "ok": count_ok,
        })
        matched.append(same)
    criteria: dict[str, bool | None] = {
        "objects": all(gr["found_any_color"] >= 1 for gr in groups),
        "colors": all(gr["found"] >= 1 for gr in groups),
        "count": all(gr["ok"] for gr in groups),
        "position": None,
    }
    if spec.relation is not None:
        a, b = matched[0], matched[1]
        criteria["position"] = bool(a and b) and relation_holds(
            a[0].as_shape_object(), b[0].as_shape_object(), spec.relation, cfg.position_margin
        )
    checked = [v for v in criteria.values() if v is not None]
    return {
        "correct": all(checked),
        "task": spec.task,
        "caption": spec.caption,
        "score": sum(checked) / len(checked),
        "criteria": criteria,
        "groups": groups,
        "detected": [{**asdict(o), "bbox": list(o.bbox)} for o in objs],
    }


def geneval_summary(results: Iterable[Mapping]) -> dict:
    """Per-task accuracy and ``overall`` = mean over the tasks present (GenEval's aggregation)."""
    by_task: dict[str, list[bool]] = {}
    for r in results:
        by_task.setdefault(r["task"], []).append(bool(r["correct"]))
    if not by_task:
        raise MMaDAError("no scored images to summarise")
    acc = {t: sum(v) / len(v) for t, v in by_task.items()}
    ordered = {t: acc[t] for t in TASKS if t in acc} | {t: acc[t] for t in acc if t not in TASKS}
    return {
        "overall": sum(acc.values()) / len(acc),
        "tasks": ordered,
        "n": {t: len(by_task[t]) for t in ordered},
        "n_images": sum(len(v) for v in by_task.values()),
    }


def score_shapes_set(
    images: Sequence, specs: Sequence[str | Mapping | ShapesSpec], *, config: CheckerConfig | None = None
) -> tuple[dict, list[dict]]:
    """Score paired images and captions/metadata: ``(summary, per_image_results)``."""
    if len(images) != len(specs):
        raise MMaDAError(f"{len(images)} images for {len(specs)} captions/metadata; lengths must match")
    rows = [score_shapes_image(im, sp, config=config) for im, sp in zip(images, specs, strict=True)]
    return geneval_summary(rows), rows
