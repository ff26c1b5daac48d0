"""The evaluation suites as library calls: typed arguments in, a written (and logged) report out.

Each ``mmada eval`` subcommand and the pipeline's ``evaluate`` stage call these functions; they load
the records (held out from curated data when asked), load the checkpoint and image tokenizer, run
the evaluator (:mod:`mmada.eval.runners`), write the report JSON, the per-sample JSONL and the
images, and log the report to MLflow:

    result = math_suite("builtin:arithmetic", protocol="gsm8k_flexible", n=64,
                        model=EvalModel(checkpoint="runs/ckpt"), sampler=SamplerSettings(steps=32, …),
                        out=EvalOutputs(report=Path("runs/eval/math.json"), tracking_uri=uri))
    result.report.metrics["accuracy"], result.run_id
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmada.data.images import image_grid
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval.classifier import get_digits_classifier, get_fashion_classifier
from mmada.eval.decontam import exclude_seen, held_out, questions_in, scene_key, scenes_in
from mmada.eval.report import EvalReport, ModelRef, log_report
from mmada.eval.runners import (
    BUILTIN_DEFAULT_N,
    LM_EVAL_TEMPLATE,
    evaluate_class,
    evaluate_clip,
    evaluate_math,
    evaluate_qa,
    evaluate_reconstruction,
    evaluate_t2i_shapes,
    generate_images,
    load_image_codec,
    load_records,
    shapes_vqa_items,
)
from mmada.files import save_png, write_jsonl
from mmada.inference import load_checkpoint

Difficulty = int | tuple[int, int]


@dataclass(frozen=True)
class EvalModel:
    """The model that generates the outputs (no ``checkpoint``: score outputs given in the data)."""

    checkpoint: str | None = None
    tokenizer: str | None = None
    """Tokenizer directory or ``builtin`` (default: the checkpoint's own)."""
    version: str | None = None
    """Version label in the report (default: a fingerprint of the weights)."""
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = 8
    overrides: dict | None = None
    """Config fields that leave the weights alone (``MMaDAConfig.with_overrides``), e.g. num_vq_tokens."""

    def load(self):
        """``(LoadedModel | None, ModelRef)``."""
        if self.checkpoint is None:
            return None, ModelRef(version=self.version)
        lm = load_checkpoint(self.checkpoint, tokenizer=self.tokenizer, device=self.device, dtype=self.dtype,
                             overrides=self.overrides)
        return lm, ModelRef.from_path(self.checkpoint, version=self.version)


@dataclass(frozen=True)
class EvalOutputs:
    """Where a suite's results go."""

    report: Path | None = None
    """The report JSON (default ``runs/eval/<suite>-<protocol>.json``)."""
    samples: Path | None = None
    """Per-sample JSONL (predictions, extracted answers, checks)."""
    images_dir: Path | None = None
    """Image grids as PNG."""
    tracking_uri: str | None = None
    """Log the report (params, metrics, report.json, images) as one MLflow run."""
    experiment: str = "mmada-eval"
    run_name: str | None = None
    run_key: dict[str, str] = field(default_factory=dict)
    """What makes this evaluation the same one again (tags, e.g. the model and the params hash): when given,
    the run of that name with these tags is logged into again instead of a new one (a rerun after a crash)."""


@dataclass
class SuiteResult:
    """What a suite produced: the report and where everything was written."""

    report: EvalReport
    report_path: Path
    samples_path: Path | None = None
    image_paths: list[Path] = field(default_factory=list)
    run_id: str | None = None
    """The MLflow run of the report (None without a tracking URI)."""


def save_report(report: EvalReport, out: EvalOutputs, *, rows: Sequence[Mapping] | None = None,
                images: Mapping[str, Image.Image] | None = None) -> SuiteResult:
    """Write the report, the sample rows and the images as ``out`` says; log them to MLflow."""
    path = out.report or Path(f"runs/eval/{report.suite}-{report.protocol}.json")
    report.write_json(path)
    result = SuiteResult(report, Path(path))
    if rows is not None and out.samples:
        result.samples_path = write_jsonl(out.samples, rows)
    if images and out.images_dir:
        result.image_paths = [save_png(Path(out.images_dir) / f"{name}.png", im) for name, im in images.items()]
    if out.tracking_uri:
        result.run_id = log_report(report, out.tracking_uri, experiment=out.experiment, run_name=out.run_name,
                                   run_key=out.run_key,
                                   images=images or {})
    return result


# ---------------------------------------------------------------------------------------------
# math


def difficulty_text(level: Difficulty | None) -> str | None:
    """``2`` → ``"2"``, ``(1, 3)`` → ``"1-3"`` (as ``mmada eval math --difficulty`` takes it)."""
    if level is None or isinstance(level, int):
        return None if level is None else str(level)
    return f"{level[0]}-{level[1]}"


def math_records(data: str, *, n: int | None, num_fewshot: int = 0, seed: int = 0, difficulty: Difficulty | None = None,
                 exclude_data: Sequence[str] | None = None, question_field: str = "question",
                 ) -> tuple[list[dict], dict | None]:
    """The problems (few-shot examples first), held out from the curated shard sets ``exclude_data`` when
    given; returns them and what was held out."""
    need = n + num_fewshot if n is not None else None
    if not exclude_data:
        return load_records(data, n=need, seed=seed, difficulty=difficulty), None
    seen = questions_in(exclude_data)
    if data.startswith("builtin:"):  # draw past seen problems until `need` unseen ones
        recs, removed = held_out(
            lambda count, start: load_records(data, n=count, seed=seed, start=start, difficulty=difficulty),
            need if need is not None else BUILTIN_DEFAULT_N, seen, question_field)
    else:
        recs, removed = exclude_seen(load_records(data, seed=seed, difficulty=difficulty), seen, question_field)
        recs = recs if need is None else recs[:need]
    return recs, {"exclude_data": list(exclude_data), "removed": removed, "known_questions": len(seen)}


def math_suite(data: str, *, protocol: str, model: EvalModel, sampler: SamplerSettings | None, out: EvalOutputs,
               n: int | None = None, data_seed: int = 0, num_fewshot: int = 0, fewshot_data: str | None = None,
               question_field: str = "question", answer_field: str = "answer", response_field: str = "response",
               match: str | None = None, chat: bool = True, think: bool = False, prompt_template: str | None = None,
               difficulty: Difficulty | None = None, exclude_data: Sequence[str] | None = None) -> SuiteResult:
    """Math accuracy under ``protocol`` (:func:`mmada.eval.runners.evaluate_math`)."""
    recs, held = math_records(data, n=n, num_fewshot=num_fewshot, seed=data_seed, difficulty=difficulty,
                              exclude_data=exclude_data, question_field=question_field)
    fewshot, recs = recs[:num_fewshot], recs[num_fewshot:]
    if fewshot_data:
        fewshot = load_records(fewshot_data, n=num_fewshot)
    lm, ref = model.load()
    report, rows = evaluate_math(
        recs, protocol=protocol, dataset=data, lm=lm, sampler=sampler, num_fewshot=num_fewshot,
        fewshot_records=fewshot, question_field=question_field, answer_field=answer_field,
        response_field=response_field, match=match, chat=chat, think=think,
        prompt_template=prompt_template or LM_EVAL_TEMPLATE, batch_size=model.batch_size, model_ref=ref)
    if held is not None:
        report.details["held_out"] = held
    if difficulty is not None:
        report.details["difficulty"] = difficulty_text(difficulty)
    return save_report(report, out, rows=rows)


# ---------------------------------------------------------------------------------------------
# understanding, generation, reconstruction


def held_out_scenes(data: str, *, n: int | None, seed: int, exclude_data: Sequence[str] | None,
                    with_question: bool) -> tuple[list[dict], dict | None]:
    """Built-in shapes scenes (``data``) not in the curated shards ``exclude_data`` (:func:`scene_key`);
    VQA items (``with_question``) are dropped one by one, t2i scenes whole. Returns the records (items
    for VQA) and what was held out."""
    recs = load_records(data, n=n, seed=seed)
    items = shapes_vqa_items(recs) if with_question and recs and "vqa" in recs[0] else recs
    if not exclude_data:
        return items, None
    if not data.startswith("builtin:shapes"):
        raise MMaDAError(f"exclude_data for image suites needs builtin:shapes scenes, not {data!r}")
    seen = scenes_in(exclude_data, with_question=with_question)
    meta = {r["id"]: r["metadata"] for r in recs}
    kept = [it for it in items if scene_key(meta[it["id"].rsplit("-q", 1)[0] if with_question else it["id"]],
                                            it["question"] if with_question else None) not in seen]
    return kept, {"exclude_data": list(exclude_data), "removed": len(items) - len(kept), "known_scenes": len(seen)}


def mmu_suite(data: str, *, model: EvalModel, sampler: SamplerSettings | None, out: EvalOutputs, n: int | None = None,
              data_seed: int = 0, image_tokenizer: str = "palette", prediction_field: str = "prediction",
              think: bool = False, exclude_data: Sequence[str] | None = None) -> SuiteResult:
    """Understanding QA accuracy (shapes VQA with ``builtin:shapes``; :func:`~mmada.eval.runners.evaluate_qa`);
    ``exclude_data``: drop questions about scenes that curated VQA shards asked (held out)."""
    items, held = held_out_scenes(data, n=n, seed=data_seed, exclude_data=exclude_data, with_question=True)
    lm, ref = model.load()
    codec = load_image_codec(image_tokenizer) if lm is not None else None
    report, rows = evaluate_qa(items, dataset=data, lm=lm, codec=codec, sampler=sampler, model_ref=ref,
                               prediction_field=prediction_field, think=think, batch_size=model.batch_size)
    if held is not None:
        report.details["held_out"] = held
    for r in rows:
        r.pop("image", None)
    return save_report(report, out, rows=rows)


def t2i_suite(*, checker: str, model: EvalModel, sampler: ImageSamplerSettings | None, out: EvalOutputs,
              images: str | None = None, data: str = "builtin:shapes", n: int | None = None, data_seed: int = 0,
              image_tokenizer: str = "palette", clip_model: str | None = None, fashion_root: str | None = None,
              cache_dir: str | None = None, think: SamplerSettings | None = None,
              exclude_data: Sequence[str] | None = None) -> SuiteResult:
    """Text-to-image: images generated by ``model`` from the captions of ``data`` or read from the JSONL
    ``images``, scored by ``checker`` (``shapes``: GenEval-like; ``digits``/``fashion``: class accuracy;
    ``clip``: CLIP score). ``think``: reasoning to image (``<|r2i|>``), the description written with these
    text-sampler settings first; the report records them and the shapes rows carry each description."""
    if (images is None) == (model.checkpoint is None):
        raise MMaDAError("give exactly one of --images (score existing images) or --checkpoint (generate)")
    source = "predictions_file" if images else "model"
    held = None
    if images:
        recs = load_records(images, n=n)
        pictures = [r["image"] for r in recs]
        if any(not hasattr(im, "size") for im in pictures):
            raise MMaDAError(f"{images}: every row needs an 'image' (a file path relative to the JSONL)")
        ref = model.load()[1]
        dataset = images
    else:
        recs, held = held_out_scenes(data, n=n, seed=data_seed, exclude_data=exclude_data, with_question=False)
        lm, ref = model.load()
        codec = load_image_codec(image_tokenizer, device=str(lm.device))
        traces: list[str] = []
        pictures = generate_images(lm, codec, [r["caption"] for r in recs], sampler, batch_size=model.batch_size,
                                   think=think, traces=traces)
        dataset = data
    if checker == "shapes":
        specs = [r.get("metadata") if isinstance(r.get("metadata"), dict) and "objects" in r["metadata"] else r["caption"]
                 for r in recs]
        report, rows, grid = evaluate_t2i_shapes(pictures, specs, dataset=dataset, sampler=sampler, source=source,
                                                 model_ref=ref, ids=[r.get("id", i) for i, r in enumerate(recs)],
                                                 captions=[r.get("caption") for r in recs])
        if think is not None:
            report = _with_reasoning(report, think)
            for row, trace in zip(rows, traces, strict=True):
                row["trace"] = trace
        if not images and held is not None:
            report.details["held_out"] = held
        return save_report(report, out, rows=rows, images={"generated_grid": grid})
    grid = image_grid(pictures[:32], ncol=8, scale=2)
    if checker == "clip":
        if not clip_model:
            raise MMaDAError("--checker clip needs --clip-model PATH (a local CLIPModel directory)")
        report = evaluate_clip(pictures, [r["caption"] for r in recs], clip_model, dataset=dataset, sampler=sampler,
                               source=source, model_ref=ref)
        return save_report(_with_reasoning(report, think), out, images={"generated_grid": grid})
    if checker == "digits":
        bundle = get_digits_classifier(cache_dir)
    else:
        if not fashion_root:
            raise MMaDAError("--checker fashion needs --fashion-root DIR with the Fashion-MNIST IDX files")
        bundle = get_fashion_classifier(fashion_root, cache_dir)
    labels = []
    for i, r in enumerate(recs):
        label = r.get("label", (r.get("metadata") or {}).get("label"))
        if label is None:
            raise MMaDAError(f"row {i} has no 'label' (the prompted class) for --checker {checker}")
        labels.append(label)
    report = evaluate_class(pictures, labels, bundle, dataset=dataset, sampler=sampler, source=source, model_ref=ref)
    return save_report(_with_reasoning(report, think), out, images={"generated_grid": grid})


def _with_reasoning(report, think: SamplerSettings | None):
    """r2i runs: the report names the mode and records the reasoning sampler whole."""
    if think is None:
        return report
    return report.model_copy(update={"details": {**report.details, "mode": "r2i",
                                                 "reasoning_sampler": think.model_dump()}})


def recon_suite(data: str, *, image_tokenizer: str, out: EvalOutputs, n: int | None = None,
                data_seed: int = 0) -> SuiteResult:
    """Image-tokenizer reconstructions: MSE/PSNR and an original-vs-reconstruction grid."""
    recs = load_records(data, n=n, seed=data_seed)
    report, grid = evaluate_reconstruction(load_image_codec(image_tokenizer), [r["image"] for r in recs],
                                           dataset=data)
    return save_report(report, out, images={"reconstructions": grid})
