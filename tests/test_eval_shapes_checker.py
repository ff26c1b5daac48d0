"""The GenEval-like shapes checker: exact on rendered ground truth, catches perturbations, survives
decoder-like noise and blur."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mmada.builtin.shapes import COLORS, SHAPES, TASKS, generate_shapes, render_scene
from mmada.errors import MMaDAError
from mmada.eval import geneval_summary, parse_caption, score_shapes_image, score_shapes_set
from mmada.eval.shapes_checker import spec_from_metadata


@pytest.fixture(scope="module")
def scenes():
    return generate_shapes(300, seed=11)


def _render(meta: dict, size: int = 32) -> Image.Image:
    return render_scene(meta["objects"], size)


def test_exact_on_rendered_ground_truth(scenes):
    summary, rows = score_shapes_set([r["image"] for r in scenes], [r["metadata"] for r in scenes])
    assert summary["overall"] == 1.0
    assert set(summary["tasks"]) == set(TASKS) and all(v == 1.0 for v in summary["tasks"].values())
    # detected objects are exactly the ground truth (shape, colour, bbox)
    for r, row in zip(scenes[:60], rows[:60]):
        got = sorted((d["shape"], d["color"], tuple(d["bbox"])) for d in row["detected"])
        want = sorted((o["shape"], o["color"], tuple(o["bbox"])) for o in r["metadata"]["objects"])
        assert got == want


def test_caption_alone_is_enough(scenes):
    for r in scenes[:120]:
        res = score_shapes_image(r["image"], r["caption"], task=r["task"])
        assert res["correct"] and res["task"] == r["task"]
        spec, ref = parse_caption(r["caption"]), spec_from_metadata(r["metadata"])
        assert sorted(map(dataclasses.astuple, spec.groups)) == sorted(map(dataclasses.astuple, ref.groups))
        assert spec.relation == ref.relation


def test_caption_parser_variants_and_errors():
    s = parse_caption("A photo of three GREEN triangles.")
    assert s.task == "counting" and s.groups[0].count == 3 and s.groups[0].color == "green"
    s = parse_caption("a red circle to the left of a blue square")
    assert s.task == "position" and s.relation == "left of"
    assert parse_caption("a red circle and a blue square", task="color_attr").task == "color_attr"
    with pytest.raises(MMaDAError, match="cannot parse shapes caption 'a dog'"):
        parse_caption("a dog")
    with pytest.raises(MMaDAError, match="unknown shapes task"):
        parse_caption("a red circle", task="counting_stuff")


def _other(options, *avoid):
    return next(x for x in options if x not in avoid)


def test_perturbations_are_detected(scenes):
    checked = {"color": 0, "count": 0, "position": 0, "missing": 0, "shape": 0}
    for r in scenes[:120]:
        meta, objs = r["metadata"], r["metadata"]["objects"]
        used_colors = {o["color"] for o in objs}
        # wrong colour of one object
        bad = [dict(o) for o in objs]
        bad[0]["color"] = _other(COLORS, *used_colors)
        res = score_shapes_image(_render({"objects": bad}), meta)
        assert not res["correct"], (r["caption"], "colour")
        assert res["criteria"]["count"] is False
        checked["color"] += 1
        if meta["task"] in ("single_object", "colors"):
            assert res["criteria"]["colors"] is False and res["criteria"]["objects"] is True
        # wrong shape of one object
        bad = [dict(o) for o in objs]
        bad[0]["shape"] = _other(SHAPES, *{o["shape"] for o in objs})
        res = score_shapes_image(_render({"objects": bad}), meta)
        assert not res["correct"] and res["criteria"]["count"] is False
        checked["shape"] += 1
        if meta["task"] == "counting":  # one object fewer
            res = score_shapes_image(_render({"objects": objs[1:]}), meta)
            assert not res["correct"] and res["criteria"]["count"] is False
            assert res["groups"][0]["found"] == len(objs) - 1
            checked["count"] += 1
        if len(objs) == 2 and meta["task"] != "counting":  # a missing object
            res = score_shapes_image(_render({"objects": objs[:1]}), meta)
            assert not res["correct"] and res["criteria"]["objects"] is False
            checked["missing"] += 1
        if meta["task"] == "position":  # swapped places
            a, b = dict(objs[0]), dict(objs[1])
            a["bbox"], b["bbox"] = objs[1]["bbox"], objs[0]["bbox"]
            res = score_shapes_image(_render({"objects": [a, b]}), meta)
            assert not res["correct"] and res["criteria"]["position"] is False
            assert res["criteria"]["colors"] is True  # everything else is still right
            checked["position"] += 1
    assert min(checked.values()) >= 15, checked


def _degrade(img: Image.Image, rng: np.random.Generator, blur: ImageFilter.Filter, sigma: float,
             drift: bool) -> Image.Image:
    a = np.asarray(img.filter(blur), dtype=np.float64)
    if drift:  # decoder colour drift: per-image channel gain and offset on the foreground
        a = a * rng.uniform(0.88, 1.08, 3) + rng.uniform(-12, 12, 3) * (a.sum(-1, keepdims=True) > 30)
    a = a + rng.normal(0, sigma, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


@pytest.mark.parametrize(
    ("name", "blur", "sigma", "drift"),
    [("gauss0.6+noise8+drift", ImageFilter.GaussianBlur(0.6), 8.0, True),
     ("box1+noise8", ImageFilter.BoxBlur(1), 8.0, False)],
)
def test_robust_to_mild_noise_and_blur(scenes, name, blur, sigma, drift):
    rng = np.random.default_rng(0)
    imgs = [_degrade(r["image"], rng, blur, sigma, drift) for r in scenes[:150]]
    summary, _ = score_shapes_set(imgs, [r["metadata"] for r in scenes[:150]])
    # measured on 600 scenes (seed 11): 1.000 (Gaussian σ0.6 + noise σ8 + drift), 0.998 (3×3 box + noise σ8)
    assert summary["overall"] >= 0.97, (name, summary)


def test_accepts_arrays_tensors_and_other_sizes(scenes):
    r = scenes[3]
    arr = np.asarray(r["image"])
    ten = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    for x in (arr, ten):
        assert score_shapes_image(x, r["metadata"])["correct"]
    big = generate_shapes(24, seed=5, image_size=64)
    assert score_shapes_set([b["image"] for b in big], [b["caption"] for b in big])[0]["overall"] == 1.0
    with pytest.raises(MMaDAError, match="RGB image"):
        score_shapes_image(np.zeros((32, 32)), r["metadata"])


def test_blank_image_is_wrong_and_summary_is_mean_of_tasks():
    res = score_shapes_image(Image.new("RGB", (32, 32)), "two red circles")
    assert not res["correct"] and res["criteria"]["objects"] is False and res["detected"] == []
    rows = [{"task": "counting", "correct": True}, {"task": "counting", "correct": False},
            {"task": "position", "correct": True}]
    s = geneval_summary(rows)
    assert s["tasks"] == {"counting": 0.5, "position": 1.0} and s["overall"] == 0.75
