"""Load a version and run the samplers step by step: what the playground page shows as it happens.

Each run is a generator of frames. The sampler runs in a worker thread and reports every step through
its ``on_step`` callback (:func:`mmada.diffusion.sampling.generate_text` / ``generate_image``); the
generator turns each step into a frame as it arrives, so the page updates while the masks fill in.

    pg = Playground(tracking_uri, cache_dir="runs/playground")
    for frame in pg.chat("models:/mmada-tiny@sft", [{"role": "user", "content": "2+3?"}], SamplerSettings()):
        print(frame.step, frame.tokens)      # [(piece, "new" | "mask" | None), …]
    print(frame.answer, frame.stats)

Sampler settings come in as :class:`SamplerSettings` / :class:`ImageSamplerSettings`, validated by
the same ``make`` the CLI flags go through (:func:`settings_from_controls`).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval.runners import ImageCodec, PaletteCodec, load_image_codec, load_records, mmu_answers
from mmada.eval.shapes_checker import parse_caption, score_shapes_image
from mmada.inference import LoadedModel, generate_answers, generate_image_codes, load_checkpoint
from mmada.playground.versions import Version, find_version, list_versions
from mmada.tokenization.text import split_think
from mmada.tracking.registry import resolve_model

log = logging.getLogger("mmada.playground")
MASK_PIECE = "░"


def settings_from_controls(cls: type[SamplerSettings | ImageSamplerSettings], values: dict[str, Any]):
    """Settings from the page's controls, validated by ``cls.make`` as the CLI's flags are (an empty box
    of an optional field is None; errors are the CLI's one-line :class:`SamplerError`)."""
    clean = {}
    for name, v in values.items():
        if isinstance(v, str) and not v.strip() and _optional(cls.model_fields[name].annotation):
            v = None
        if isinstance(v, float) and v.is_integer() and cls.model_fields[name].annotation is int:
            v = int(v)  # number boxes send floats
        clean[name] = v
    return cls.make(**clean)


def _optional(annotation: Any) -> bool:
    return (typing.get_origin(annotation) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(annotation))


@dataclass
class TextFrame:
    step: int
    """Steps done so far (all blocks)."""
    tokens: list[tuple[str, str | None]]
    """The answer as decoded pieces: ``"new"`` committed at this step, ``"mask"`` still masked, None earlier."""
    done: bool = False
    answer: str | None = None
    thinking: str | None = None
    stats: str = ""


@dataclass
class ImageFrame:
    step: int
    strip: Image.Image
    """One decode per step so far, left to right; cells still masked after the step are greyed."""
    image: Image.Image | None = None
    done: bool = False
    verdict: str | None = None
    stats: str = ""


@dataclass
class Loaded:
    version: Version
    lm: LoadedModel
    codec: ImageCodec
    lock: threading.Lock = field(default_factory=threading.Lock)


class Playground:
    """Versions from the registry at ``tracking_uri``, loaded on first use and kept (one at a time per version)."""

    def __init__(self, tracking_uri: str, *, cache_dir: str | Path = "runs/playground", device: str = "cpu",
                 image_tokenizer: str | None = None, extra: list[str] | None = None, max_loaded: int = 2) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = Path(cache_dir)
        self.device = device
        self.image_tokenizer = image_tokenizer
        self.extra = list(extra or [])  # checkpoint directories named on the command line
        self.max_loaded = max_loaded
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ versions
    def versions(self) -> list[Version]:
        return [*list_versions(self.tracking_uri), *(Version(uri=d) for d in self.extra)]

    def find(self, uri: str) -> Version:
        if not uri:
            raise MMaDAError("no version selected: pick one in the version list")
        return find_version(self.versions(), uri, self.tracking_uri)

    def load(self, uri: str) -> Loaded:
        """The version ``uri`` loaded (downloaded once into ``cache_dir``); a clear error when it cannot be."""
        v = self.find(uri)
        with self._lock:
            if v.uri in self._loaded:
                return self._loaded[v.uri]
            path, _ = resolve_model(v.uri, tracking_uri=self.tracking_uri, cache_dir=self.cache_dir / "models",
                                    field="version")
            try:
                lm = load_checkpoint(path, device=self.device)
            except MMaDAError as exc:
                raise MMaDAError(f"{v.label}: {exc}") from None
            except Exception as exc:  # corrupt weights, a config this code cannot build …
                raise MMaDAError(f"{v.label}: cannot load {path} ({type(exc).__name__}: {exc})") from None
            codec = self._codec(v, lm)
            while len(self._loaded) >= self.max_loaded:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[v.uri] = Loaded(v, lm, codec)
            return self._loaded[v.uri]

    def _codec(self, v: Version, lm: LoadedModel) -> ImageCodec:
        """The image tokenizer: ``--image-tokenizer``, else the one the version trained with (its run's
        ``data.image_tokenizer`` param, when that directory is here), else the built-in world's palette."""
        spec = self.image_tokenizer
        if spec is None and v.run_id:
            from mlflow import MlflowClient

            param = MlflowClient(self.tracking_uri).get_run(v.run_id).data.params.get("data.image_tokenizer")
            if param and param != "None" and Path(param).is_dir():
                spec = param
        codec = load_image_codec(spec or "palette", device=str(lm.device))
        if isinstance(codec, PaletteCodec) and lm.model.config.num_vq_tokens != 64:
            log.warning("%s has %d image tokens; the palette codec makes 64", v.label, lm.model.config.num_vq_tokens)
        return codec

    # ------------------------------------------------------------------ text
    def chat(self, uri: str, messages: list[dict[str, str]], settings: SamplerSettings, *,
             think: bool = False) -> Iterator[TextFrame]:
        """A chat answer (to the last user message of ``messages``), one frame per denoising step."""
        if not messages or not str(messages[-1].get("content", "")).strip():
            raise MMaDAError("prompt: empty; type a message first")
        m = self.load(uri)
        yield from self._text(m, settings,
                              lambda cb: generate_answers(m.lm, [messages], settings, think=think, on_step=cb)[0])

    def understand(self, uri: str, image: Image.Image | None, question: str, settings: SamplerSettings
                   ) -> Iterator[TextFrame]:
        """An answer about ``image`` (``<|mmu|>`` image prefix + question), one frame per step."""
        if image is None:
            raise MMaDAError("image: none given; upload one or pick one from a shard")
        if not question.strip():
            raise MMaDAError("question: empty; ask something about the image")
        m = self.load(uri)
        size = 32 if isinstance(m.codec, PaletteCodec) else None  # the palette codec reads 4×4 patches of 32×32
        img = image.convert("RGB").resize((size, size)) if size else image.convert("RGB")
        yield from self._text(m, settings,
                              lambda cb: mmu_answers(m.lm, m.codec, [img], [question], settings, on_step=cb)[0])

    def _text(self, m: Loaded, settings: SamplerSettings, run: Callable[[Callable], str]) -> Iterator[TextFrame]:
        sp = m.lm.builder.special
        n = settings.gen_length
        decode = _piece_decoder(m.lm.tokenizer)
        seen = torch.full((n,), sp.mask)
        t0 = time.perf_counter()
        last: dict[str, Any] = {}
        for steps, ev in enumerate(_stream(run, m.lock)):  # steps: the steps done before this event
            if "result" in ev:
                answer = ev["result"]
                dt = time.perf_counter() - t0
                row = seen.tolist()
                cut = next((i for i, t in enumerate(row) if t in (sp.eos, sp.eot)), n)
                tokens = [(decode(t), None) for t in row[:cut]]
                thinking, final = split_think(answer)
                fwd = f", {last['forwards']} forward passes" if "forwards" in last else ""
                stats = (f"{cut} tokens in {dt:.2f} s: {cut / max(dt, 1e-9):.1f} tokens/s ({steps} steps{fwd}; "
                         f"{settings.describe()})")
                yield TextFrame(steps, tokens, True, final.strip(), thinking, stats)
                return
            last = ev
            row = ev["x"][0, -n:]  # (gen_length,) this step's answer tokens
            new = (row != seen) & (row != sp.mask)
            seen = row
            tokens = []
            for t, is_new in zip(row.tolist(), new.tolist()):
                if t == sp.mask:
                    tokens.append((MASK_PIECE, "mask"))
                elif t not in (sp.eos, sp.eot, sp.pad) or is_new:
                    tokens.append((decode(t) if t not in (sp.eos, sp.eot, sp.pad) else "⏎", "new" if is_new else None))
            yield TextFrame(steps + 1, tokens, stats=f"step {steps + 1}")

    # ------------------------------------------------------------------ images
    def image(self, uri: str, caption: str, settings: ImageSamplerSettings) -> Iterator[ImageFrame]:
        """Caption → image: one frame per MaskGIT step (the strip grows), then the image and the shapes
        checker's verdict when the caption is one the built-in world can state."""
        if not caption.strip():
            raise MMaDAError("caption: empty; describe the image to generate")
        m = self.load(uri)
        frames: list[Image.Image] = []
        t0 = time.perf_counter()
        for ev in _stream(lambda cb: generate_image_codes(m.lm, [caption], settings, on_step=cb), m.lock):
            if "result" in ev:
                img = m.codec.decode(ev["result"])[0]
                dt = time.perf_counter() - t0
                yield ImageFrame(len(frames), _strip(frames), img, True, shapes_verdict(img, caption),
                                 f"{settings.steps} MaskGIT steps in {dt:.2f} s ({settings.describe()}; "
                                 f"image tokenizer {m.codec.name})")
                return
            frames.append(_greyed(m.codec.decode(ev["sampled"][:1])[0], ev["remasked"][0]))
            yield ImageFrame(len(frames), _strip(frames), stats=f"step {len(frames)}/{settings.steps}")

    # ------------------------------------------------------------------ example images
    def examples(self, source: str, n: int = 12) -> list[dict[str, Any]]:
        """Up to ``n`` ``{image, question, answer}`` items of a curated shard directory or ``builtin:shapes``."""
        recs = load_records(source, n=n)
        items = []
        for r in recs:
            img = r.get("image")
            if not hasattr(img, "size"):
                continue
            qa = (r.get("vqa") or [{}])[0]
            question = qa.get("question") or r.get("question") or _first_user_turn(r) or "What is in the image?"
            items.append({"image": img, "question": question, "answer": qa.get("answer") or r.get("answer")})
        if not items:
            raise MMaDAError(f"{source}: no records with an image")
        return items


def example_sources(root: str | Path = "runs/data") -> list[str]:
    """Curated shard directories (``runs/data/<name>/…/*.tar`` with images) to pick images from, then the built-in world."""
    found = sorted({str(t.parent) for t in Path(root).glob("**/*.tar")}) if Path(root).is_dir() else []
    return [*found, "builtin:shapes"]


def _first_user_turn(r: dict) -> str | None:
    for m in r.get("messages") or r.get("conversations") or []:
        if isinstance(m, dict) and m.get("role", m.get("from")) in ("user", "human"):
            return str(m.get("content", m.get("value", ""))).replace("<image>", "").strip() or None
    return None


def shapes_verdict(image: Image.Image, caption: str) -> str | None:
    """The shapes checker's verdict on ``image``, or None when the caption is not one of the built-in world's."""
    try:
        parse_caption(caption)
    except MMaDAError:
        return None
    r = score_shapes_image(image, caption)
    crit = ", ".join(f"{k} {'✓' if ok else '✗'}" for k, ok in r["criteria"].items() if ok is not None)
    return f"shapes checker ({r['task']}): {'correct' if r['correct'] else 'wrong'}; {crit}; score {r['score']:.2f}"


def _piece_decoder(tokenizer) -> Callable[[int], str]:
    cache: dict[int, str] = {}

    def decode(t: int) -> str:
        if t not in cache:  # a token with no text of its own (an image code, a byte piece) shows as ‹id›
            cache[t] = tokenizer.decode([t], skip_special_tokens=False) or f"‹{t}›"
        return cache[t]

    return decode


def _stream(run: Callable[[Callable], Any], lock: threading.Lock) -> Iterator[dict]:
    """Run ``run(on_step)`` in a thread (one run per loaded model at a time); yield each step's event as it
    comes, then ``{"result": …}``. An exception in the run is re-raised here."""
    q: queue.Queue = queue.Queue()

    def work() -> None:
        with lock:
            try:
                q.put({"result": run(q.put)})
            except BaseException as exc:
                q.put({"error": exc})

    threading.Thread(target=work, name="playground-sampler", daemon=True).start()
    while True:
        ev = q.get()
        if "error" in ev:
            raise ev["error"]
        yield ev
        if "result" in ev:
            return


def _greyed(img: Image.Image, remasked: torch.Tensor) -> Image.Image:
    """``img`` with the cells of the still-masked image tokens (N = g² cells) washed out in grey."""
    img = img.convert("RGB")
    g = math.isqrt(remasked.numel())
    cw, ch = img.width / g, img.height / g
    draw = ImageDraw.Draw(img, "RGBA")
    for i in remasked.nonzero().flatten().tolist():
        r, c = divmod(i, g)
        draw.rectangle([c * cw, r * ch, (c + 1) * cw - 1, (r + 1) * ch - 1], fill=(128, 128, 128, 200))
    return img


def _strip(frames: list[Image.Image], height: int = 96) -> Image.Image:
    if not frames:
        return Image.new("RGB", (height, height), (128, 128, 128))
    w = round(frames[0].width * height / frames[0].height)
    strip = Image.new("RGB", (len(frames) * (w + 4) - 4, height), (255, 255, 255))
    for i, f in enumerate(frames):
        strip.paste(f.resize((w, height), Image.NEAREST), (i * (w + 4), 0))
    return strip
