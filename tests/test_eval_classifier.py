"""Class-accuracy classifier (sklearn digits, Fashion-MNIST IDX) and generated-image class accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import ImageFilter

from mmada.errors import MMaDAError
from mmada.eval.classifier import (
    FASHION_CLASSES,
    class_accuracy,
    digits_to_image,
    get_digits_classifier,
    get_fashion_classifier,
    load_classifier,
    load_digits_split,
    read_idx,
    write_idx,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("clf_cache")
    return get_digits_classifier(cache), cache


def test_digits_classifier_trains_caches_and_reloads(digits):
    bundle, cache = digits
    assert bundle.meta["held_out_accuracy"] >= 0.95  # measured 0.992 on the 360 held-out digits (seed 0)
    assert bundle.meta["n_test"] == 360 and bundle.meta["dataset"] == "sklearn-digits"
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    again = get_digits_classifier(cache)  # loads from the cache, no retraining
    _, _, xte, _ = load_digits_split(0)
    imgs = [digits_to_image(x / 255 * 16) for x in xte[:50]]
    assert np.array_equal(again.predict(imgs), bundle.predict(imgs))
    assert load_classifier(files[0]).meta == bundle.meta


def test_generated_image_class_accuracy(digits):
    bundle, _ = digits
    _, _, xte, yte = load_digits_split(0)
    rng = np.random.default_rng(0)
    gens = []  # "generated" digits: bilinear upscale, blur and noise, as a decoder might produce
    for x in xte:
        im = digits_to_image(x / 255 * 16, 32, "bilinear").filter(ImageFilter.GaussianBlur(0.7))
        a = np.asarray(im, dtype=np.float64) + rng.normal(0, 12, (32, 32, 3))
        gens.append(np.clip(a, 0, 255).astype(np.uint8))
    good = class_accuracy(bundle, gens, [int(y) for y in yte])
    assert good["accuracy"] >= 0.93 and set(good["per_class"]) == set("0123456789")
    wrong = class_accuracy(bundle, gens, [str((int(y) + 1) % 10) for y in yte])  # mismatched prompts
    assert wrong["accuracy"] <= 0.05
    # labels may be prompts ending in the class name; tensors (C, H, W) in [0, 1] work too
    t = torch.from_numpy(gens[0]).permute(2, 0, 1).float() / 255
    r = class_accuracy(bundle, [t], [f"a handwritten digit {int(yte[0])}"])
    assert r["n"] == 1
    with pytest.raises(MMaDAError, match="unknown class label 'eleven'"):
        class_accuracy(bundle, gens[:1], ["eleven"])


def test_idx_roundtrip_and_errors(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte.gz", a)
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(MMaDAError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(MMaDAError, match="body has 3 bytes"):
        read_idx(tmp_path / "short")


def test_fashion_classifier_from_local_idx(tmp_path):
    # A stand-in Fashion-MNIST: 28×28 IDX files made from sklearn digits (10 classes), so the real
    # reader → train → cache path runs offline.
    xtr, ytr, xte, yte = load_digits_split(1)
    up = lambda x: np.stack([np.asarray(digits_to_image(i / 255 * 16, 28).convert("L")) for i in x])  # noqa: E731
    root = tmp_path / "fashion"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte.gz", up(xtr))
    write_idx(root / "train-labels-idx1-ubyte.gz", ytr)
    write_idx(root / "t10k-images-idx3-ubyte", up(xte))
    write_idx(root / "t10k-labels-idx1-ubyte", yte)
    b = get_fashion_classifier(root, tmp_path / "cache", epochs=6)
    assert b.classes == FASHION_CLASSES and b.meta["held_out_accuracy"] > 0.85
    assert b.label_index("ankle boot") == 9 and b.label_index("a photo of a sneaker") == 7
    with pytest.raises(MMaDAError, match=r"train-images-idx3-ubyte.*not found"):
        get_fashion_classifier(tmp_path / "empty", tmp_path / "cache2")


def test_cli_t2i_digits_class_accuracy(digits, tmp_path):
    import json

    from mmada.cli import main
    from mmada.eval.runners import load_records

    _, cache = digits
    recs = load_records("sklearn:digits", n=40, start=1000)  # the data layer's rendering: bilinear 32×32
    rows = []
    for i, r in enumerate(recs):
        r["image"].save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": r["caption"], "metadata": {"label": r["label"]}})
    (tmp_path / "gens.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "digits.json"
    assert main(["eval", "t2i", "--checker", "digits", "--images", str(tmp_path / "gens.jsonl"),
                 "--cache-dir", str(cache), "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["suite"] == "t2i_class" and rep["n"] == 40 and rep["metrics"]["accuracy"] >= 0.9
    assert rep["metrics"]["classifier_held_out_accuracy"] == digits[0].meta["held_out_accuracy"]
    assert len(list(cache.glob("*.safetensors"))) == 1  # reused the cached classifier
