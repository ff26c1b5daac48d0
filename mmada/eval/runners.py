"""Evaluation jobs: data in, :class:`~mmada.eval.report.EvalReport` out.

These are the functions behind ``mmada eval …`` (and what a Prefect flow or DVC stage calls):

    evaluate_math        generate answers with the diffusion sampler (or read a predictions file),
                         extract under a named protocol, score
    evaluate_qa          MMU question answering (exact / normalised match); shapes VQA via an image codec
    evaluate_pope        POPE yes/no metrics
    evaluate_t2i_shapes  GenEval-like shapes score of images (generated or given)
    evaluate_class       class accuracy of generated images (digits / Fashion-MNIST classifier)
    evaluate_clip        CLIP score with a local CLIP model
    evaluate_reconstruction  image-tokenizer round trip: MSE / PSNR and an original-vs-reconstruction grid

Data sources (``load_records``): ``builtin:arithmetic``, ``builtin:shapes``, ``sklearn:digits``, a ``.jsonl`` / ``.json``
file, WebDataset ``.tar`` shards (the ``.json`` member of each sample), or a directory of those.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from PIL import Image

from mmada.builtin.arithmetic import generate_arithmetic
from mmada.builtin.shapes import generate_shapes, palette_codes, palette_image
from mmada.data.answers import check_protocol, extract_answer, gold_answer, is_equivalent, lm_eval_exact_match
from mmada.data.images import image_grid
from mmada.diffusion import generate_text
from mmada.diffusion.sampling import StepCallback
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval.classifier import class_accuracy, digits_to_image
from mmada.eval.clip_score import CLIPScorer
from mmada.eval.mmu import normalize_answer, pope_evaluate, qa_accuracy
from mmada.eval.report import EvalReport, ModelRef, flatten_metrics
from mmada.eval.shapes_checker import geneval_summary, score_shapes_image
from mmada.inference import generate_answers, generate_image_codes, generate_r2i
from mmada.models.vq import MAGVITv2
from mmada.tokenization.text import split_think

GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")  # lm-eval gsm8k ``until``

# ---------------------------------------------------------------------------------------------
# data


def _load_image_field(rec: dict, base: Path | None) -> dict:
    v = rec.get("image")
    if isinstance(v, str) and base is not None:
        p = (base / v) if not Path(v).is_absolute() else Path(v)
        if not p.is_file():
            raise MMaDAError(f"record {rec.get('id', '?')!r}: image file {p} not found")
        rec = {**rec, "image": Image.open(p).convert("RGB")}
    return rec


def _read_tar(path: Path) -> list[dict]:
    """WebDataset shard → one dict per sample: its ``.json`` member, plus a decoded image member."""
    samples: dict[str, dict] = {}
    with tarfile.open(path) as tf:
        for m in tf:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            data = tf.extractfile(m).read()
            s = samples.setdefault(key, {"__key__": key})
            if ext == "json":
                s.update(json.loads(data))
            elif ext in ("png", "jpg", "jpeg", "webp"):
                s["image"] = Image.open(io.BytesIO(data)).convert("RGB")
            elif ext in ("txt", "caption"):
                s.setdefault(ext, data.decode())
    return list(samples.values())


BUILTIN_DEFAULT_N = 200
"""Records generated from a ``builtin:`` source when no ``n`` is given."""


def load_records(source: str, *, n: int | None = None, seed: int = 0, start: int = 0,
                 difficulty: int | tuple[int, int] | None = None) -> list[dict]:
    """Records from ``builtin:arithmetic`` / ``builtin:shapes`` / ``sklearn:digits`` / jsonl / json / tar / a dir.

    ``difficulty`` (operations per problem, an int or an inclusive range) applies to
    ``builtin:arithmetic`` only; other sources raise rather than ignore it.
    """
    if difficulty is not None and source != "builtin:arithmetic":
        raise MMaDAError(f"difficulty applies to builtin:arithmetic only, not {source!r}")
    if source.startswith("builtin:"):
        name = source.split(":", 1)[1]
        count = BUILTIN_DEFAULT_N if n is None else n
        if name == "arithmetic":
            levels = {} if difficulty is None else {"difficulty": difficulty}
            return generate_arithmetic(count, seed=seed, start=start, **levels)
        if name == "shapes":
            return generate_shapes(count, seed=seed, start=start)
        raise MMaDAError(f"unknown built-in dataset {source!r}; expected builtin:arithmetic, builtin:shapes "
                         "or sklearn:digits")
    if source == "sklearn:digits":  # as the data layer's source: bilinear 32×32, "a handwritten digit N"
        from sklearn.datasets import load_digits


        d = load_digits()
        stop = len(d.target) if n is None else min(len(d.target), start + n)
        return [{"id": f"digit-{i}", "caption": f"a handwritten digit {int(d.target[i])}", "label": int(d.target[i]),
                 "image": digits_to_image(d.images[i], 32, "bilinear")} for i in range(start, stop)]
    p = Path(source)
    if p.is_dir():
        files = sorted([*p.glob("*.jsonl"), *p.glob("*.tar")])
        if not files:
            raise MMaDAError(f"{p}: no .jsonl or .tar files")
        recs = [r for f in files for r in load_records(str(f))]
    elif not p.is_file():
        raise MMaDAError(f"data source {source!r} is neither a file, a directory nor builtin:<name>")
    elif p.suffix == ".jsonl":
        recs = []
        for i, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                try:
                    recs.append(_load_image_field(json.loads(line), p.parent))
                except json.JSONDecodeError as exc:
                    raise MMaDAError(f"{p}:{i + 1}: invalid JSON ({exc.msg})") from None
    elif p.suffix == ".json":
        data = json.loads(p.read_text())
        if not isinstance(data, list):
            raise MMaDAError(f"{p}: expected a JSON list of records")
        recs = [_load_image_field(r, p.parent) for r in data]
    elif p.suffix == ".tar":
        recs = _read_tar(p)
    else:
        raise MMaDAError(f"{p}: unsupported data file type {p.suffix!r} (use .jsonl, .json or .tar)")
    return recs[start:] if n is None else recs[start : start + n]


# ---------------------------------------------------------------------------------------------
# math


LM_EVAL_TEMPLATE = "Question: {question}\nAnswer:"
"""lm-eval's gsm8k prompt (the default of :func:`evaluate_math`)."""


def apply_stops(text: str, until: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string."""
    cut = len(text)
    for s in until:
        if s:
            i = text.find(s)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


def fewshot_prefix(examples: Sequence[Mapping], question_field: str, answer_field: str) -> str:
    """lm-eval gsm8k style: ``Question: …\\nAnswer: …\\n\\n`` per example (``solution`` wins over the answer)."""
    return "".join(
        f"Question: {ex[question_field]}\nAnswer: {ex.get('solution') or ex[answer_field]}\n\n" for ex in examples
    )


Match = Literal["exact", "equivalent"]


def default_match(protocol: str) -> Match:
    """GSM8K protocols default to lm-eval's string ``exact_match`` (parity); MATH-style to equivalence."""
    return "exact" if protocol.startswith("gsm8k") else "equivalent"


def score_response(
    response: str | None, gold: str | int | float, protocol: str, match: Match | None = None
) -> dict:
    """Extract under ``protocol`` and compare: ``{"extracted", "gold", "correct"}``.

    ``match="exact"`` is lm-eval's exact_match; ``"equivalent"`` is :func:`mmada.data.answers.is_equivalent`
    (the rule curation and the UniGRPO reward use).
    """
    match = match or default_match(protocol)
    if match not in ("exact", "equivalent"):
        raise MMaDAError(f"unknown match mode {match!r}; expected 'exact' or 'equivalent'")
    extracted = extract_answer(response, protocol)
    ref = gold_answer(gold, protocol)
    ok = lm_eval_exact_match(extracted, ref) if match == "exact" else is_equivalent(extracted, ref)
    return {"extracted": extracted, "gold": ref, "correct": ok}


def math_accuracy(
    records: Iterable[Mapping],
    protocol: str,
    *,
    response_field: str = "response",
    answer_field: str = "answer",
    match: Match | None = None,
) -> tuple[dict, list[dict]]:
    """Accuracy of ``records`` (each has a model response and a reference answer).

    Returns ``(metrics, per_record)``: metrics ``accuracy``, ``n``, ``no_answer_rate``; per-record rows
    carry ``extracted``/``gold``/``correct`` for inspection.
    """
    check_protocol(protocol)
    rows: list[dict] = []
    for i, rec in enumerate(records):
        for f in (response_field, answer_field):
            if f not in rec:
                raise MMaDAError(f"record {i} (id={rec.get('id', '?')!r}) has no field {f!r}")
        row = score_response(rec[response_field], rec[answer_field], protocol, match)
        row["id"] = rec.get("id", i)
        rows.append(row)
    if not rows:
        raise MMaDAError("no records to score")
    n = len(rows)
    return (
        {
            "accuracy": sum(r["correct"] for r in rows) / n,
            "no_answer_rate": sum(r["extracted"] is None for r in rows) / n,
            "n": n,
        },
        rows,
    )


def _batch_seed(settings, start: int):
    """The settings of the batch that starts at item ``start``: each batch draws from ``seed + start``,
    so a result does not depend on which other items shared its batch's random stream."""
    return settings.model_copy(update={"seed": settings.seed + start})


def evaluate_math(
    records: Sequence[Mapping],
    *,
    protocol: str,
    dataset: str,
    lm=None,
    sampler: SamplerSettings | None = None,
    num_fewshot: int = 0,
    fewshot_records: Sequence[Mapping] = (),
    question_field: str = "question",
    answer_field: str = "answer",
    response_field: str = "response",
    match: str | None = None,
    chat: bool = True,
    think: bool = False,
    prompt_template: str = LM_EVAL_TEMPLATE,
    batch_size: int = 8,
    model_ref: ModelRef | None = None,
) -> tuple[EvalReport, list[dict]]:
    """Math accuracy under ``protocol``; generates with ``lm`` (a ``LoadedModel``) or scores ``response_field``.

    Prompts: ``num_fewshot`` examples from ``fewshot_records`` in lm-eval's ``Question:/Answer:``
    format, then ``prompt_template`` (lm-eval's ``Question: {question}\\nAnswer:`` by default; ``{question}``
    alone asks the bare question, as the curated reasoning data does); with ``chat`` the whole prompt is
    the user turn of the chat template, and ``think`` prepends MMaDA's reasoning instruction to it.
    Generations are cut at lm-eval's gsm8k stop strings. Records with a ``difficulty`` (the built-in
    arithmetic) also get ``accuracy/difficulty_<k>``.
    """
    if "{question}" not in prompt_template:
        raise MMaDAError(f"prompt_template {prompt_template!r} must contain the placeholder {{question}}")
    check_protocol(protocol)
    if num_fewshot > len(fewshot_records):
        raise MMaDAError(f"num_fewshot={num_fewshot} but only {len(fewshot_records)} few-shot records were given")
    if not records:
        raise MMaDAError(f"{dataset}: no records to evaluate")
    recs = [dict(r) for r in records]
    if lm is not None:
        sampler = sampler or SamplerSettings()
        prefix = fewshot_prefix(fewshot_records[:num_fewshot], question_field, answer_field)
        for i in range(0, len(recs), batch_size):
            chunk = recs[i : i + batch_size]
            prompts = [prefix + prompt_template.replace("{question}", str(r[question_field])) for r in chunk]
            outs = generate_answers(lm, prompts, _batch_seed(sampler, i), chat=chat, think=think)
            for r, o in zip(chunk, outs, strict=True):
                r[response_field] = apply_stops(o, GSM8K_STOPS)
    match = match or default_match(protocol)
    metrics, rows = math_accuracy(
        recs, protocol, response_field=response_field, answer_field=answer_field, match=match
    )
    for row, r in zip(rows, recs, strict=True):
        row["response"] = r[response_field]
        row.setdefault("question", r.get(question_field))
    out = {"accuracy": metrics["accuracy"], "no_answer_rate": metrics["no_answer_rate"]}
    levels: dict[int, list[bool]] = {}
    for row, r in zip(rows, recs, strict=True):
        if isinstance(r.get("difficulty"), int):
            levels.setdefault(r["difficulty"], []).append(bool(row["correct"]))
    out |= {f"accuracy/difficulty_{k}": sum(v) / len(v) for k, v in sorted(levels.items())}
    report = EvalReport(
        suite="math", protocol=protocol, dataset=dataset, n=metrics["n"], num_fewshot=num_fewshot,
        model=model_ref or ModelRef(), source="model" if lm is not None else "predictions_file", sampler=sampler,
        metrics=out, details={"match": match, "chat": chat if lm is not None else None,
                 "think": think if lm is not None else None, "prompt_template": prompt_template,
                 "n_per_difficulty": {str(k): len(v) for k, v in sorted(levels.items())}},
    )
    return report, rows


# ---------------------------------------------------------------------------------------------
# image codecs (how images become tokens and back)


class ImageCodec(Protocol):
    name: str

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor: ...  # (B, N) long
    def decode(self, codes: torch.Tensor) -> list[Image.Image]: ...


class PaletteCodec:
    """The built-in world's fixed palette quantiser: 4×4 patches → nearest palette colour (8×8 = 64 codes)."""

    name = "palette"

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([palette_codes(im) for im in images])).long()

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        return [palette_image(c.cpu().numpy()) for c in codes]


class MagvitCodec:
    """A MAGVIT-v2 checkpoint directory (``mmada.models.vq.MAGVITv2``) at a fixed resolution."""

    def __init__(self, path: str, resolution: int | None = None, device: str = "cpu"):
        self.vq = MAGVITv2.from_pretrained(path, device=device)
        self.resolution = resolution or self.vq.config.resolution
        self.name = f"magvitv2:{path}"

    def encode(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.vq.encode(self.vq.preprocess(list(images), resolution=self.resolution))

    def decode(self, codes: torch.Tensor) -> list[Image.Image]:
        px = self.vq.decode(codes)  # (B, 3, H, W) in [-1, 1]
        arr = ((px + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(a) for a in arr]


def load_image_codec(spec: str, *, device: str = "cpu", resolution: int | None = None) -> ImageCodec:
    """``palette`` or a MAGVIT-v2 checkpoint directory."""
    if spec == "palette":
        return PaletteCodec()
    if not Path(spec).is_dir():
        raise MMaDAError(f"image tokenizer {spec!r}: expected 'palette' or a MAGVIT-v2 checkpoint directory")
    return MagvitCodec(spec, resolution, device)


# ---------------------------------------------------------------------------------------------
# understanding


def shapes_vqa_items(records: Sequence[Mapping]) -> list[dict]:
    """Flatten built-in shapes records into ``{image, question, answer, id}`` QA items."""
    return [
        {"id": f"{r['id']}-q{j}", "image": r["image"], "question": qa["question"], "answer": qa["answer"]}
        for r in records for j, qa in enumerate(r["vqa"])
    ]


@torch.no_grad()
def mmu_answers(lm, codec: ImageCodec, images: Sequence[Image.Image], questions: Sequence[str],
                sampler: SamplerSettings, *, batch_size: int = 8, think: bool = False,
                on_step: StepCallback | None = None) -> list[str]:
    """Answer questions about images with the model: image codes → ``<|mmu|>`` prefix → block sampler
    (``think``: the question after MMaDA's reasoning instruction, as the curated VQA traces ask it;
    ``on_step``: the sampler's per-step callback)."""
    out: list[str] = []
    sp = lm.builder.special
    for i in range(0, len(images), batch_size):
        codes = codec.encode(images[i : i + batch_size])
        batch = lm.builder.mmu(codes, list(questions[i : i + batch_size]), think=think).to(lm.device)
        ids = generate_text(
            lm.model, batch.input_ids, sampler, attention_mask=batch.attention_mask, mask_id=sp.mask,
            eos_id=sp.eos, eot_id=sp.eot, generator=_batch_seed(sampler, i).generator(lm.device), on_step=on_step,
        )[:, batch.input_ids.shape[1] :]
        for row in ids.tolist():
            for stop in (sp.eos, sp.eot):
                if stop in row:
                    row = row[: row.index(stop)]
            out.append(lm.tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def evaluate_qa(
    items: Sequence[Mapping], *, dataset: str, predictions: Sequence[str] | None = None, lm=None,
    codec: ImageCodec | None = None, sampler: SamplerSettings | None = None, model_ref: ModelRef | None = None,
    prediction_field: str = "prediction", think: bool = False, batch_size: int = 8,
) -> tuple[EvalReport, list[dict]]:
    """MMU QA accuracy (normalised exact match + contains) from predictions or from the model.

    With ``think`` the model is asked as the curated reasoning VQA asks (MMaDA's instruction, then the
    question) and answers ``<think>trace</think> answer``: the answer after the trace is scored (the
    rule of the ``mmu_correctness`` reward); rows keep the whole ``response``. Each row has ``correct``
    (normalised exact match), so two evaluations compare item by item (:mod:`mmada.eval.paired`).
    """
    if not items:
        raise MMaDAError(f"{dataset}: no QA items")
    if lm is not None:
        if codec is None:
            raise MMaDAError("evaluating MMU with a model needs an image tokenizer (codec)")
        sampler = sampler or SamplerSettings(steps=8, gen_length=8, block_length=8)
        responses = mmu_answers(lm, codec, [it["image"] for it in items], [it["question"] for it in items], sampler,
                                think=think, batch_size=batch_size)
        preds = [split_think(r)[1] if think else r for r in responses]
    else:
        if predictions is None:
            missing = [i for i, it in enumerate(items) if prediction_field not in it]
            if missing:
                raise MMaDAError(f"QA item {missing[0]} has no {prediction_field!r} field and no model was given")
            predictions = [it[prediction_field] for it in items]
        preds = list(predictions)
        responses = preds
    m = qa_accuracy(preds, [it["answer"] for it in items])
    rows = [{"id": it.get("id", i), "question": it["question"], "answer": it["answer"], "prediction": p,
             "correct": normalize_answer(p) == normalize_answer(it["answer"])}
            | ({"response": r} if r != p else {})
            for i, (it, p, r) in enumerate(zip(items, preds, responses, strict=True))]
    report = EvalReport(
        suite="mmu", protocol="normalized_exact_match", dataset=dataset, n=m["n"], model=model_ref or ModelRef(),
        source="model" if lm is not None else "predictions_file", sampler=sampler, metrics={"exact_match": m["exact_match"], "contains_match": m["contains_match"]},
        details={"image_tokenizer": getattr(codec, "name", None), "think": think if lm is not None else None},
    )
    return report, rows


def evaluate_pope(questions: Sequence[Mapping], answers: Sequence[Mapping] | None, *, dataset: str,
                  model_ref: ModelRef | None = None, sampler: SamplerSettings | None = None) -> EvalReport:
    res = pope_evaluate(questions, answers)
    metrics = {k: res["overall"][k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    metrics |= {"mean_f1": res["mean_f1"], "mean_accuracy": res["mean_accuracy"]}
    metrics |= flatten_metrics({"split": {c: {k: v[k] for k in ("accuracy", "f1", "yes_ratio")}
                                          for c, v in res["splits"].items()}})
    return EvalReport(
        suite="pope", protocol="pope_llava", dataset=dataset, n=res["overall"]["n"], model=model_ref or ModelRef(),
        source="predictions_file", sampler=sampler, metrics=metrics,
        details={"confusion": {k: res["overall"][k] for k in ("tp", "fp", "tn", "fn")}},
    )


# ---------------------------------------------------------------------------------------------
# generation


def generate_images(lm, codec: ImageCodec, captions: Sequence[str], sampler: ImageSamplerSettings,
                    *, batch_size: int = 8, think: SamplerSettings | None = None,
                    traces: list[str] | None = None) -> list[Image.Image]:
    """Captions → images: MaskGIT decoding of image tokens (``generate_image_codes``) → codec decode.

    ``think``: reasoning to image (``generate_r2i``): a detailed description is written first with these
    text-sampler settings and the image is drawn from it; the descriptions are appended to ``traces``.
    """
    out: list[Image.Image] = []
    for i in range(0, len(captions), batch_size):
        batch = list(captions[i : i + batch_size])
        if think is None:
            codes = generate_image_codes(lm, batch, _batch_seed(sampler, i))
        else:
            res = generate_r2i(lm, batch, _batch_seed(think, i), _batch_seed(sampler, i))
            codes = res.codes
            if traces is not None:
                traces.extend(res.traces)
        out.extend(codec.decode(codes))
    return out


def evaluate_t2i_shapes(
    images: Sequence[Image.Image], specs: Sequence[str | Mapping], *, dataset: str,
    sampler: ImageSamplerSettings | None, source: str = "model", model_ref: ModelRef | None = None, grid_size: int = 32, ids: Sequence | None = None,
    captions: Sequence[str | None] | None = None,
) -> tuple[EvalReport, list[dict], Image.Image]:
    """GenEval-like shapes score; returns the report, per-image rows and a grid of the first images.

    Each row carries an ``id`` (``ids``, else the image's position) so two evaluations of the same
    prompts can be compared image by image (:mod:`mmada.eval.paired`), and its caption (``captions``
    where a spec is ground-truth metadata, which holds none).
    """
    if len(images) != len(specs):
        raise MMaDAError(f"{len(images)} images for {len(specs)} captions/metadata; lengths must match")
    for name, extra in (("ids", ids), ("captions", captions)):
        if extra is not None and len(extra) != len(images):
            raise MMaDAError(f"{len(extra)} {name} for {len(images)} images; lengths must match")
    if not images:
        raise MMaDAError(f"{dataset}: no images to score")
    rows = []
    for i, (im, sp) in enumerate(zip(images, specs, strict=True)):
        r = score_shapes_image(im, sp)
        rows.append({"id": i if ids is None else ids[i]}
                    | {k: r[k] for k in ("correct", "task", "caption", "score", "criteria", "groups", "detected")})
        if rows[-1]["caption"] is None and captions is not None:
            rows[-1]["caption"] = captions[i]
    summary = geneval_summary(rows)
    metrics = {"overall": summary["overall"]} | {f"task/{t}": v for t, v in summary["tasks"].items()}
    metrics["mean_criteria_score"] = float(np.mean([r["score"] for r in rows]))
    report = EvalReport(
        suite="t2i_shapes", protocol="geneval_shapes", dataset=dataset, n=len(rows), model=model_ref or ModelRef(),
        source=source, sampler=sampler, metrics=metrics, details={"n_per_task": summary["n"]},
    )
    # each image labelled with its position (the captions are in the rows) and the checker's verdict
    labels = [f"{i} {'ok' if r['correct'] else 'x'}" for i, r in enumerate(rows[:grid_size])]
    return report, rows, image_grid(list(images[:grid_size]), ncol=8, scale=2, labels=labels)


def evaluate_class(
    images: Sequence[Image.Image], labels: Sequence, bundle, *, dataset: str, sampler: ImageSamplerSettings | None,
    source: str = "model", model_ref: ModelRef | None = None,
) -> EvalReport:
    r = class_accuracy(bundle, images, labels)
    return EvalReport(
        suite="t2i_class", protocol=f"classifier:{bundle.meta.get('dataset')}", dataset=dataset, n=r["n"],
        model=model_ref or ModelRef(), source=source, sampler=sampler,
        metrics={"accuracy": r["accuracy"], "classifier_held_out_accuracy": r["classifier_held_out_accuracy"]},
        details={"per_class": r["per_class"], "classifier": {k: v for k, v in bundle.meta.items() if k != "classes"}},
    )


def evaluate_clip(
    images: Sequence[Image.Image], captions: Sequence[str], clip_path: str, *, dataset: str,
    sampler: ImageSamplerSettings | None, source: str = "model", model_ref: ModelRef | None = None,
) -> EvalReport:
    r = CLIPScorer(clip_path).score(images, captions)
    return EvalReport(
        suite="clip", protocol="clip_score_100cos_clip0", dataset=dataset, n=r["n"], model=model_ref or ModelRef(),
        source=source, sampler=sampler, metrics={"clip_score": r["clip_score"], "clip_score_torchmetrics": r["clip_score_torchmetrics"]},
        details={"clip_model": r["clip_model"]},
    )


def evaluate_reconstruction(
    codec: ImageCodec, images: Sequence[Image.Image], *, dataset: str, grid_size: int = 16
) -> tuple[EvalReport, Image.Image]:
    """Tokenizer round trip: per-pixel MSE and PSNR (0..255 scale) and an [original | reconstruction] grid."""
    if not images:
        raise MMaDAError(f"{dataset}: no images to reconstruct")
    recon = codec.decode(codec.encode(images))
    mse = []
    for a, b in zip(images, recon, strict=True):
        x = np.asarray(a.convert("RGB"), dtype=np.float64)
        y = np.asarray(b.convert("RGB").resize(a.size, Image.Resampling.BICUBIC), dtype=np.float64)
        mse.append(float(((x - y) ** 2).mean()))
    mean_mse = float(np.mean(mse))
    psnr = float(np.mean([10 * math.log10(255**2 / m) if m > 0 else 100.0 for m in mse]))
    pairs = [im for a, b in zip(images[:grid_size], recon[:grid_size], strict=True) for im in (a, b.resize(a.size))]
    report = EvalReport(
        suite="reconstruction", protocol="mse_psnr_uint8", dataset=dataset, n=len(images), model=ModelRef(name=codec.name),
        source="ground_truth", metrics={"mse": mean_mse, "psnr": psnr},
    )
    return report, image_grid(pairs, ncol=8, scale=2)


def run_all(reports: Iterable[EvalReport]) -> dict:
    """Combine several reports into one JSON-able dict ``{suite/protocol: report}`` (for DVC metrics)."""
    return {f"{r.suite}/{r.protocol}": r.model_dump(mode="json") for r in reports}

