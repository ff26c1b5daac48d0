"""Class accuracy of generated images: a small CNN trained on the real class data.

"Does the image for the prompt *digit 7* show a 7?" is answered by a classifier trained on the
real images of that class set — sklearn's bundled digits (8×8, no download) or Fashion-MNIST from
local IDX files — and evaluated on generated images against the prompted class.

The classifier is tiny (two conv layers on 16×16 grey input), trains in seconds on a CPU, and is
cached as safetensors with its classes, held-out accuracy and training settings in the metadata
(no pickle). Any input size/channels work: images are converted to grey and resized to 16×16.

    bundle = get_digits_classifier()                    # trains once, then loads the cache
    bundle.meta["held_out_accuracy"]                    # accuracy on the 20 % held-out split
    class_accuracy(bundle, generated_images, prompted_labels)

Run ``mmada eval classifier --dataset digits`` to (re)train and print the held-out accuracy.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn
from torch.nn import functional as F

from mmada.errors import MMaDAError
from mmada.files import write_bytes

INPUT_SIZE = 16  # classifier input side (grey)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)


def default_cache_dir() -> Path:
    """``$MMADA_CACHE_DIR/eval`` or ``~/.cache/mmada/eval``."""
    root = os.environ.get("MMADA_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "mmada") / "eval"


class SmallCNN(nn.Module):
    """(B, 1, 16, 16) grey in [0, 1] → (B, n_classes) logits."""

    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = nn.Linear(2 * width * (INPUT_SIZE // 4) ** 2, 64)
        self.fc2 = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w, 8, 8)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2w, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@dataclass
class ClassifierBundle:
    model: SmallCNN
    classes: tuple[str, ...]
    meta: dict

    @torch.no_grad()
    def predict(self, images: Sequence) -> np.ndarray:
        """Predicted class indices (N,) for PIL images / uint8 or float arrays (any size, grey or RGB)."""
        if len(images) == 0:
            return np.zeros(0, dtype=np.int64)
        self.model.eval()
        x = torch.from_numpy(preprocess(images))  # (N, 1, 16, 16)
        return self.model(x).argmax(-1).numpy()

    def label_index(self, label) -> int:
        """A class index from an int, a class name (``"7"``, ``"sneaker"``) or a prompt ending in one."""
        if isinstance(label, int | np.integer):
            if not 0 <= int(label) < len(self.classes):
                raise MMaDAError(f"class index {label} out of range 0..{len(self.classes) - 1}")
            return int(label)
        s = str(label).strip().lower()
        if s in self.classes:
            return self.classes.index(s)
        for i, c in sorted(enumerate(self.classes), key=lambda ic: -len(ic[1])):  # "a photo of a sneaker"
            if s.endswith(" " + c) or s.endswith(" " + c + "."):
                return i
        raise MMaDAError(f"unknown class label {label!r}; classes are {self.classes}")


def _to_grey(im) -> np.ndarray:
    """One image → float32 (H, W) grey in [0, 1]."""
    if isinstance(im, Image.Image):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    a = np.asarray(im.detach().cpu() if hasattr(im, "detach") else im, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3:
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if a.shape[-1] == 3 else a[..., 0]
    if a.ndim != 2:
        raise MMaDAError(f"expected a 2-D grey or 3-channel image, got shape {np.shape(im)}")
    return a / 255.0 if a.max() > 1.0 + 1e-6 else a


def preprocess(images: Sequence) -> np.ndarray:
    """Images → float32 (N, 1, 16, 16): grey, area-resized to the classifier input."""
    out = np.empty((len(images), 1, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, im in enumerate(images):
        g = Image.fromarray((_to_grey(im) * 255).clip(0, 255).astype(np.uint8))
        out[i, 0] = np.asarray(g.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BOX), dtype=np.float32) / 255
    return out


# ---------------------------------------------------------------------------------------------
# data


def digits_to_image(x8: np.ndarray, size: int = 32, resample: str = "nearest") -> Image.Image:
    """An sklearn digit (8×8, values 0..16) → RGB ``size``² image, white on black."""
    g = Image.fromarray((np.asarray(x8, dtype=np.float64) * 255 / 16).round().astype(np.uint8))
    mode = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}[resample]
    return g.resize((size, size), mode).convert("RGB")


def load_digits_split(seed: int = 0, test_frac: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits as uint8 (N, 8, 8) in 0..255 with a seeded stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images * 255 / 16).round().astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=test_frac, random_state=seed, stratify=d.target)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST / Fashion-MNIST format, optionally ``.gz``) into a uint8 array."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise MMaDAError(f"{p}: not an IDX file (bad magic {data[:4]!r})")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise MMaDAError(f"{p}: only unsigned-byte IDX files are supported, got type code {dtype_code:#x}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise MMaDAError(f"{p}: header says {dims} ({int(np.prod(dims))} bytes) but body has {body.size} bytes")
    return body.reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (used to make test fixtures)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + a.tobytes())


def load_fashion_mnist(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST ``(x_train, y_train, x_test, y_test)`` from the standard IDX files under ``root``."""
    r = Path(root)

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (r / name).is_file():
                return r / name
        raise MMaDAError(f"Fashion-MNIST file {stem}[.gz] not found under {r}")

    parts = [read_idx(find(s)) for s in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    )]
    xtr, ytr, xte, yte = parts
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise MMaDAError(f"{r}: image and label counts differ ({len(xtr)}/{len(ytr)}, {len(xte)}/{len(yte)})")
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# training, saving, loading


def _augment_views(x: np.ndarray, image_size: int) -> list[np.ndarray]:
    """Views the generator may produce: nearest and bilinear upscales to ``image_size`` (grey uint8)."""
    views = []
    for mode in (Image.Resampling.NEAREST, Image.Resampling.BILINEAR):
        views.append(np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), mode)) for im in x]))
    return views


def train_classifier(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: Sequence[str],
    *,
    image_size: int = 32,
    epochs: int = 25,
    seed: int = 0,
    dataset: str = "custom",
) -> ClassifierBundle:
    """Train :class:`SmallCNN` on grey uint8 (N, h, w) images upscaled to ``image_size``.

    Training sees nearest and bilinear upscales, random ±1-pixel shifts and Gaussian pixel noise
    (σ 0.05), so that decoded generations (soft, noisy) are classified like real images. The
    held-out accuracy is measured on ``x_test`` (nearest upscale, no noise) and stored in ``meta``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest (and reproducibly) on one thread
    try:
        return _train(x_train, y_train, x_test, y_test, classes, image_size, epochs, seed, dataset)
    finally:
        torch.set_num_threads(threads)


def _train(x_train, y_train, x_test, y_test, classes, image_size, epochs, seed, dataset) -> ClassifierBundle:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xs = [torch.from_numpy(preprocess(list(v))) for v in _augment_views(x_train, image_size)]
    x = torch.cat(xs)  # (2N, 1, 16, 16)
    y = torch.from_numpy(np.concatenate([y_train] * len(xs)))
    model = SmallCNN(len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x) + 127) // 128))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i : i + 128]
            xb = x[idx]
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            xb = (xb + 0.05 * torch.randn(xb.shape, generator=g)).clamp(0, 1)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    bundle = ClassifierBundle(model.eval(), tuple(classes), {})
    test_imgs = _augment_views(x_test, image_size)[0]
    acc = float((bundle.predict(list(test_imgs)) == y_test).mean())
    bundle.meta = {
        "dataset": dataset,
        "classes": list(classes),
        "held_out_accuracy": acc,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "image_size": image_size,
        "input_size": INPUT_SIZE,
        "epochs": epochs,
        "seed": seed,
        "arch": "SmallCNN(width=16)",
    }
    return bundle


def save_classifier(bundle: ClassifierBundle, path: str | os.PathLike) -> Path:
    """Save weights + metadata as safetensors (written to a temp file, then renamed)."""
    state = {k: v.contiguous() for k, v in bundle.model.state_dict().items()}
    return write_bytes(Path(path), save(state, metadata={"mmada_classifier": json.dumps(bundle.meta)}))


def load_classifier(path: str | os.PathLike) -> ClassifierBundle:
    """Load a classifier saved by :func:`save_classifier` (safetensors only)."""
    p = Path(path)
    if not p.is_file():
        raise MMaDAError(f"classifier file not found: {p}")
    with safe_open(str(p), framework="pt") as f:
        raw = (f.metadata() or {}).get("mmada_classifier")
    if raw is None:
        raise MMaDAError(f"{p} is not an mmada classifier (no 'mmada_classifier' metadata)")
    meta = json.loads(raw)
    model = SmallCNN(len(meta["classes"]))
    model.load_state_dict(load_file(str(p)))
    return ClassifierBundle(model.eval(), tuple(meta["classes"]), meta)


def get_digits_classifier(
    cache_dir: str | os.PathLike | None = None, *, image_size: int = 32, retrain: bool = False, seed: int = 0
) -> ClassifierBundle:
    """The digits classifier: loaded from ``cache_dir`` or trained once on sklearn digits and cached."""
    path = Path(cache_dir or default_cache_dir()) / f"digits_cnn_{image_size}px_seed{seed}.safetensors"
    if path.is_file() and not retrain:
        return load_classifier(path)
    xtr, ytr, xte, yte = load_digits_split(seed)
    bundle = train_classifier(xtr, ytr, xte, yte, DIGIT_CLASSES, image_size=image_size, seed=seed, dataset="sklearn-digits")
    save_classifier(bundle, path)
    return bundle


def get_fashion_classifier(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 32,
    retrain: bool = False,
    seed: int = 0,
    epochs: int = 10,
) -> ClassifierBundle:
    """A Fashion-MNIST classifier trained on the IDX files under ``root`` (cached like the digits one)."""
    path = Path(cache_dir or default_cache_dir()) / f"fashion_cnn_{image_size}px_seed{seed}.safetensors"
    if path.is_file() and not retrain:
        return load_classifier(path)
    xtr, ytr, xte, yte = load_fashion_mnist(root)
    bundle = train_classifier(
        xtr, ytr, xte, yte, FASHION_CLASSES, image_size=image_size, seed=seed, epochs=epochs, dataset=f"fashion-mnist:{root}"
    )
    save_classifier(bundle, path)
    return bundle


def class_accuracy(bundle: ClassifierBundle, images: Sequence, labels: Sequence) -> dict:
    """Accuracy of the classifier's predictions on (generated) ``images`` vs the prompted ``labels``."""
    if len(images) != len(labels):
        raise MMaDAError(f"{len(images)} images for {len(labels)} labels; lengths must match")
    if not images:
        raise MMaDAError("no images to classify")
    target = np.array([bundle.label_index(lab) for lab in labels])
    pred = bundle.predict(images)
    per_class = {
        bundle.classes[c]: float((pred[target == c] == c).mean()) for c in sorted(set(target.tolist()))
    }
    return {
        "accuracy": float((pred == target).mean()),
        "n": len(images),
        "per_class": per_class,
        "classifier_held_out_accuracy": bundle.meta.get("held_out_accuracy"),
        "predictions": pred.tolist(),
    }
