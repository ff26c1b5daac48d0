"""``builtin:shapes`` — a small verifiable visual world of coloured shapes.

Scenes hold 1–4 flat-coloured shapes (circle, square, triangle) on a black background. Every
scene keeps its ground truth (shape, colour, bounding box of each object), so captions, VQA
answers, reasoning traces and a generated image's correctness can all be checked exactly.
Scene *tasks* follow GenEval's split so the same world serves generation metrics:

    single_object   "a red circle"
    two_objects     "a red circle and a blue square"
    counting        "three green triangles"
    colors          "a yellow square"                      (colour is the point)
    position        "a red circle to the left of a blue square"
    color_attr      "a red circle and a green triangle"    (two objects, both colours must bind)

Rendering is pure PIL without anti-aliasing (palette colours survive exactly).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 240),
    "yellow": (240, 220, 30),
    "purple": (160, 50, 200),
    "white": (245, 245, 245),
}
BACKGROUND = (0, 0, 0)
SHAPES = ("circle", "square", "triangle")
TASKS = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive pixel box

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass(frozen=True)
class ShapeScene:
    task: str
    objects: tuple[ShapeObject, ...]
    caption: str
    image_size: int
    relation: str | None = None  # for task "position": objects[0] <relation> objects[1]

    def metadata(self) -> dict:
        return {
            "task": self.task,
            "image_size": self.image_size,
            "relation": self.relation,
            "objects": [asdict(o) for o in self.objects],
        }


def _plural(shape: str) -> str:
    return shape + "s"


def _article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str, margin: float = 0.0) -> bool:
    """Whether object ``a`` is ``relation`` object ``b`` (centre comparison with an optional margin)."""
    (ax, ay), (bx, by) = a.center, b.center
    return {
        "left of": ax + margin < bx,
        "right of": ax > bx + margin,
        "above": ay + margin < by,
        "below": ay > by + margin,
    }[relation]


def draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject) -> None:
    x0, y0, x1, y1 = obj.bbox
    fill = COLORS[obj.color]
    if obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render_scene(objects, image_size: int = 32) -> Image.Image:
    """Render objects (``ShapeObject`` or dicts with shape/color/bbox) to an RGB image."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        if isinstance(o, dict):
            o = ShapeObject(o["shape"], o["color"], tuple(o["bbox"]))
        draw_object(draw, o)
    return img


def _place(rng: random.Random, n: int, image_size: int, tries: int = 200) -> list[tuple[int, int, int, int]] | None:
    """Sample ``n`` non-overlapping square boxes (with a 1-pixel gap) inside the image."""
    lo, hi = max(5, image_size * 9 // 32), max(6, image_size * 13 // 32)
    if n >= 3:  # smaller objects so that 3-4 fit
        lo, hi = max(5, image_size * 7 // 32), max(6, image_size * 10 // 32)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(tries):
        if len(boxes) == n:
            return boxes
        s = rng.randint(lo, hi)
        x0, y0 = rng.randint(1, image_size - s - 1), rng.randint(1, image_size - s - 1)
        box = (x0, y0, x0 + s - 1, y0 + s - 1)
        if all(box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1] for b in boxes):
            boxes.append(box)
    return boxes if len(boxes) == n else None


def sample_scene(rng: random.Random, task: str, image_size: int = 32) -> ShapeScene:
    """Sample one scene of the given task (see module docstring)."""
    if task not in TASKS:
        raise ValueError(f"unknown shapes task {task!r}; expected one of {TASKS}")
    while True:
        if task in ("single_object", "colors"):
            shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            boxes = _place(rng, 1, image_size)
            objs = [ShapeObject(shape, color, boxes[0])] if boxes else None
            caption = f"{_article(color)} {color} {shape}"
            relation = None
        elif task == "counting":
            shape, color, k = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.randint(2, 4)
            boxes = _place(rng, k, image_size)
            objs = [ShapeObject(shape, color, b) for b in boxes] if boxes else None
            caption = f"{NUMBER_WORDS[k]} {color} {_plural(shape)}"
            relation = None
        else:  # two_objects, color_attr, position: two distinct (shape, colour) objects
            s1, s2 = rng.sample(SHAPES, 2)
            c1, c2 = rng.sample(list(COLORS), 2)
            boxes = _place(rng, 2, image_size)
            objs = [ShapeObject(s1, c1, boxes[0]), ShapeObject(s2, c2, boxes[1])] if boxes else None
            relation = None
            if objs and task == "position":
                # Name the clearest relation so the caption is unambiguous.
                (ax, ay), (bx, by) = objs[0].center, objs[1].center
                if abs(ax - bx) >= abs(ay - by):
                    relation = "left of" if ax < bx else "right of"
                else:
                    relation = "above" if ay < by else "below"
                if max(abs(ax - bx), abs(ay - by)) < image_size / 4:
                    objs = None  # too close to call; resample
                else:
                    caption = f"{_article(c1)} {c1} {s1} {relation if relation in ('above', 'below') else 'to the ' + relation} {_article(c2)} {c2} {s2}"
            if objs and task != "position":
                caption = f"{_article(c1)} {c1} {s1} and {_article(c2)} {c2} {s2}"
        if objs:
            return ShapeScene(task=task, objects=tuple(objs), caption=caption, image_size=image_size, relation=relation)


def vqa_for_scene(scene: ShapeScene, rng: random.Random) -> list[dict]:
    """Questions about a scene with exact answers and a short visual reasoning trace."""
    objs = scene.objects
    # what is where, without pixel coordinates: a tiny model learns this trace in a few hundred steps (with
    # coordinates it was still emitting "at ( (2,, 2" after 300); relations are stated where asked
    desc = "; ".join(f"a {o.color} {o.shape}" for o in objs)
    seen = f"I see {len(objs)} object{'s' if len(objs) > 1 else ''}: {desc}."
    qa = []
    o = rng.choice(objs)
    qa.append({"question": f"What color is the {o.shape}?", "answer": o.color,
               "thinking": f"{seen} The {o.shape} is {o.color}."})
    shape = rng.choice(SHAPES)
    k = sum(1 for x in objs if x.shape == shape)
    qa.append({"question": f"How many {_plural(shape)} are there?", "answer": str(k),
               "thinking": f"{seen} Counting {_plural(shape)}: {k}."})
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    present = any(x.color == color and x.shape == shape for x in objs)
    qa.append({"question": f"Is there {_article(color)} {color} {shape}?", "answer": "yes" if present else "no",
               "thinking": f"{seen} {'There is' if present else 'There is no'} {color} {shape}."})
    if scene.relation is not None:
        a, b = objs
        qa.append({"question": f"What shape is {scene.relation} the {b.color} {b.shape}?", "answer": a.shape,
                   "thinking": f"{seen} The {a.color} {a.shape} is {scene.relation} the {b.color} {b.shape}."})
    return qa


def generate_shapes(
    n: int, *, seed: int = 0, image_size: int = 32, tasks: tuple[str, ...] = TASKS, start: int = 0
) -> list[dict]:
    """Generate ``n`` scene records (``start … start+n-1`` of the stream for ``seed``).

    Each record: ``id``, ``image`` (PIL RGB, ``image_size``²), ``caption``, ``task``, ``metadata``
    (ground-truth objects and relation) and ``vqa`` (list of question/answer/thinking dicts).
    Tasks cycle in order so every chunk is balanced.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown shapes tasks {bad or tasks!r}; expected a subset of {TASKS}")
    out = []
    for i in range(start, start + n):
        rng = random.Random(f"shapes:{seed}:{i}")
        scene = sample_scene(rng, tasks[i % len(tasks)], image_size)
        out.append({
            "id": f"shapes-{seed}-{i:08d}",
            "image": render_scene(scene.objects, image_size),
            "caption": scene.caption,
            "task": scene.task,
            "metadata": scene.metadata(),
            "vqa": vqa_for_scene(scene, rng),
        })
    return out


# ------------------------------------------------------------------------------------------------
# A fixed palette quantiser: an image tokenizer that needs no training (tests, quick evaluations).

PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32)  # (7, 3)


def palette_codes(img: Image.Image, grid: int = 8) -> np.ndarray:
    """(H, W, 3) image → (grid²,) palette indices of the mean colour of each patch."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    H, W, _ = a.shape
    patches = a.reshape(grid, H // grid, grid, W // grid, 3).mean(axis=(1, 3)).reshape(-1, 3)  # (grid², 3)
    return ((patches[:, None] - PALETTE[None]) ** 2).sum(-1).argmin(-1)


def palette_image(codes: np.ndarray, scale: int = 4) -> Image.Image:
    """(grid²,) palette indices → an RGB image of ``grid·scale`` pixels a side."""
    grid = math.isqrt(len(codes))
    rgb = PALETTE[np.clip(codes, 0, len(PALETTE) - 1)].reshape(grid, grid, 3).astype(np.uint8)
    return Image.fromarray(rgb).resize((grid * scale, grid * scale), Image.NEAREST)
