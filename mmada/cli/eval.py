"""``mmada eval …``: evaluation subcommands. Each prints a table and writes the report JSON.

    mmada eval math --data builtin:arithmetic --n 200 --checkpoint CKPT --protocol gsm8k_flexible
    mmada eval math --data preds.jsonl --protocol boxed                    # score existing responses
    mmada eval mmu  --data builtin:shapes --n 50 --checkpoint CKPT --image-tokenizer palette
    mmada eval pope --questions pope.jsonl --answers answers.jsonl
    mmada eval t2i  --data builtin:shapes --n 96 --checkpoint CKPT --image-tokenizer palette
    mmada eval t2i  --images gens.jsonl --checker digits                   # rows {image, label}
    mmada eval recon --data builtin:shapes --image-tokenizer VQ_DIR
    mmada eval classifier --dataset digits                                 # train/cache, held-out accuracy
    mmada eval harness -- --model mmada --model_args pretrained=CKPT --tasks gsm8k

``--out`` (default ``runs/eval/<suite>-<protocol>.json``) receives the report (DVC metrics);
``--tracking-uri`` logs params, metrics, the report and image grids to MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmada.cli._sampler_args import add_sampler_args, given_sampler_fields, sampler_from_args
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError


def _add_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="report JSON path (default runs/eval/<suite>-<protocol>.json)")
    g.add_argument("--samples-out", default=None, help="per-sample JSONL (predictions, extracted answers, checks)")
    g.add_argument("--images-dir", default=None, help="also save image grids here as PNG")
    g.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (e.g. sqlite:///runs/mlflow.db)")
    g.add_argument("--experiment", default="mmada-eval", help="MLflow experiment name")
    g.add_argument("--run-name", default=None)


def _add_model(p: argparse.ArgumentParser, *, text: bool = True, image: bool = False) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", default=None, help="checkpoint directory (omit to score given predictions)")
    g.add_argument("--tokenizer", default=None, help="tokenizer dir or 'builtin' (default: the checkpoint's)")
    g.add_argument("--model-version", default=None, help="version label (default: weights fingerprint)")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default=None, choices=["bf16", "fp32"])
    g.add_argument("--batch-size", type=int, default=8)
    if image:
        g.add_argument("--image-tokenizer", default="palette",
                       help="'palette' (the built-in world's fixed quantiser) or a MAGVIT-v2 dir")
    if text:
        add_sampler_args(p, SamplerSettings, "text sampler (defaults = the plain sampler)")
    else:
        add_sampler_args(p, ImageSamplerSettings, "MaskGIT sampler (defaults = the plain loop)")


def _sampler(args, cls, **defaults):
    """The settings of a run that generates (``--checkpoint``); for given outputs, the settings the
    user states with the sampler flags, or None."""
    if args.checkpoint is None and not given_sampler_fields(args):
        return None
    return sampler_from_args(cls, args, **defaults)


def _load_lm(args):
    from mmada.eval.report import ModelRef
    from mmada.inference import load_checkpoint

    if args.checkpoint is None:
        return None, ModelRef(version=args.model_version)
    lm = load_checkpoint(args.checkpoint, tokenizer=args.tokenizer, device=args.device, dtype=args.dtype)
    return lm, ModelRef.from_path(args.checkpoint, version=args.model_version)


def _finish(args, report, *, rows=None, images: dict | None = None) -> int:
    from mmada.eval.report import log_report
    from mmada.files import save_png, write_jsonl

    print(report.table())
    out = Path(args.out or f"runs/eval/{report.suite}-{report.protocol}.json")
    report.write_json(out)
    print(f"report: {out}")
    if rows is not None and args.samples_out:
        write_jsonl(args.samples_out, rows)
        print(f"samples: {args.samples_out}")
    if images and args.images_dir:
        for name, im in images.items():
            print(f"image: {save_png(Path(args.images_dir) / f'{name}.png', im)}")
    if args.tracking_uri:
        rid = log_report(report, args.tracking_uri, experiment=args.experiment, run_name=args.run_name,
                         images=images or {})
        print(f"mlflow run: {rid}")
    return 0


# ---------------------------------------------------------------------------------------------
# handlers


def _math(args) -> int:
    from mmada.eval.runners import LM_EVAL_TEMPLATE, evaluate_math, load_records

    recs, held_out = _math_records(args)
    fewshot, recs = recs[: args.num_fewshot], recs[args.num_fewshot :]
    if args.fewshot_data:
        fewshot = load_records(args.fewshot_data, n=args.num_fewshot)
    lm, ref = _load_lm(args)
    report, rows = evaluate_math(
        recs, protocol=args.protocol, dataset=args.data, lm=lm, sampler=_sampler(args, SamplerSettings),
        num_fewshot=args.num_fewshot, fewshot_records=fewshot, question_field=args.question_field,
        answer_field=args.answer_field, response_field=args.response_field, match=args.match,
        chat=not args.no_chat, think=args.think, prompt_template=args.prompt_template or LM_EVAL_TEMPLATE,
        batch_size=args.batch_size, model_ref=ref,
    )
    if held_out is not None:
        report.details["held_out"] = held_out
    if args.difficulty is not None:
        report.details["difficulty"] = args.difficulty
    return _finish(args, report, rows=rows)


def _difficulty(text: str | None) -> int | tuple[int, int] | None:
    if text is None:
        return None
    lo, _, hi = text.partition("-")
    try:
        return int(lo) if not hi else (int(lo), int(hi))
    except ValueError:
        raise MMaDAError(f"--difficulty: expected K or LO-HI (operations per problem), got {text!r}") from None


def _math_records(args) -> tuple[list[dict], dict | None]:
    """The problems (few-shot examples first), held out from ``--exclude-data`` when given."""
    from mmada.eval.decontam import exclude_seen, held_out, questions_in
    from mmada.eval.runners import BUILTIN_DEFAULT_N, load_records

    need = args.n + args.num_fewshot if args.n is not None else None
    level = _difficulty(args.difficulty)
    if not args.exclude_data:
        return load_records(args.data, n=need, seed=args.data_seed, difficulty=level), None
    seen = questions_in(args.exclude_data)
    if args.data.startswith("builtin:"):  # draw past seen problems until `need` unseen ones
        recs, removed = held_out(
            lambda count, start: load_records(args.data, n=count, seed=args.data_seed, start=start, difficulty=level),
            need if need is not None else BUILTIN_DEFAULT_N, seen, args.question_field)
    else:
        recs, removed = exclude_seen(load_records(args.data, seed=args.data_seed, difficulty=level), seen,
                                     args.question_field)
        recs = recs if need is None else recs[:need]
    print(f"held out: removed {removed} problems whose question is in {', '.join(args.exclude_data)}")
    return recs, {"exclude_data": list(args.exclude_data), "removed": removed, "known_questions": len(seen)}


def _mmu(args) -> int:
    from mmada.eval.runners import evaluate_qa, load_image_codec, load_records, shapes_vqa_items

    recs = load_records(args.data, n=args.n, seed=args.data_seed)
    items = shapes_vqa_items(recs) if recs and "vqa" in recs[0] else recs
    lm, ref = _load_lm(args)
    codec = load_image_codec(args.image_tokenizer) if lm is not None else None
    # With a KV cache, the image prefix is encoded once (Fast-dLLM-style MMU prefill) unless told otherwise.
    once = getattr(args, "sampler_cache", "none") != "none" and "prompt_cache" not in given_sampler_fields(args)
    sampler = _sampler(args, SamplerSettings, **({"prompt_cache": "once"} if once else {}))
    report, rows = evaluate_qa(
        items, dataset=args.data, lm=lm, codec=codec, sampler=sampler, model_ref=ref,
        prediction_field=args.prediction_field,
    )
    for r in rows:
        r.pop("image", None)
    return _finish(args, report, rows=rows)


def _pope(args) -> int:
    from mmada.eval.report import ModelRef
    from mmada.eval.runners import evaluate_pope, load_records

    qs = load_records(args.questions)
    ans = load_records(args.answers) if args.answers else None
    report = evaluate_pope(qs, ans, dataset=args.questions, model_ref=ModelRef(version=args.model_version))
    return _finish(args, report)


def _t2i(args) -> int:
    from mmada.eval.runners import (
        evaluate_class,
        evaluate_clip,
        evaluate_t2i_shapes,
        generate_images,
        load_image_codec,
        load_records,
    )

    if (args.images is None) == (args.checkpoint is None):
        raise MMaDAError("give exactly one of --images (score existing images) or --checkpoint (generate)")
    sampler = _sampler(args, ImageSamplerSettings)
    source = "predictions_file" if args.images else "model"
    if args.images:
        recs = load_records(args.images, n=args.n)
        images = [r["image"] for r in recs]
        if any(not hasattr(im, "size") for im in images):
            raise MMaDAError(f"{args.images}: every row needs an 'image' (a file path relative to the JSONL)")
        ref = _load_lm(args)[1]
        dataset = args.images
    else:
        recs = load_records(args.data, n=args.n, seed=args.data_seed)
        lm, ref = _load_lm(args)
        codec = load_image_codec(args.image_tokenizer, device=str(lm.device))
        images = generate_images(lm, codec, [r["caption"] for r in recs], sampler, batch_size=args.batch_size)
        dataset = args.data
    if args.checker == "shapes":
        specs = [r.get("metadata") if isinstance(r.get("metadata"), dict) and "objects" in r["metadata"] else r["caption"]
                 for r in recs]
        report, rows, grid = evaluate_t2i_shapes(images, specs, dataset=dataset, sampler=sampler, source=source,
                                                 model_ref=ref,
                                                 ids=[r.get("id", i) for i, r in enumerate(recs)],
                                                 captions=[r.get("caption") for r in recs])
        return _finish(args, report, rows=rows, images={"generated_grid": grid})
    from mmada.data.images import image_grid

    grid = image_grid(images[:32], ncol=8, scale=2)
    if args.checker == "clip":
        if not args.clip_model:
            raise MMaDAError("--checker clip needs --clip-model PATH (a local CLIPModel directory)")
        report = evaluate_clip(images, [r["caption"] for r in recs], args.clip_model, dataset=dataset,
                               sampler=sampler, source=source, model_ref=ref)
        return _finish(args, report, images={"generated_grid": grid})
    from mmada.eval.classifier import get_digits_classifier, get_fashion_classifier

    if args.checker == "digits":
        bundle = get_digits_classifier(args.cache_dir)
    else:
        if not args.fashion_root:
            raise MMaDAError("--checker fashion needs --fashion-root DIR with the Fashion-MNIST IDX files")
        bundle = get_fashion_classifier(args.fashion_root, args.cache_dir)
    labels = []
    for i, r in enumerate(recs):
        label = r.get("label", (r.get("metadata") or {}).get("label"))
        if label is None:
            raise MMaDAError(f"row {i} has no 'label' (the prompted class) for --checker {args.checker}")
        labels.append(label)
    report = evaluate_class(images, labels, bundle, dataset=dataset, sampler=sampler, source=source, model_ref=ref)
    return _finish(args, report, images={"generated_grid": grid})


def _recon(args) -> int:
    from mmada.eval.runners import evaluate_reconstruction, load_image_codec, load_records

    recs = load_records(args.data, n=args.n, seed=args.data_seed)
    report, grid = evaluate_reconstruction(load_image_codec(args.image_tokenizer), [r["image"] for r in recs],
                                           dataset=args.data)
    return _finish(args, report, images={"reconstructions": grid})


def _classifier(args) -> int:
    from mmada.eval.classifier import get_digits_classifier, get_fashion_classifier

    if args.dataset == "digits":
        b = get_digits_classifier(args.cache_dir, retrain=args.retrain)
    else:
        if not args.fashion_root:
            raise MMaDAError("--dataset fashion needs --fashion-root DIR with the Fashion-MNIST IDX files")
        b = get_fashion_classifier(args.fashion_root, args.cache_dir, retrain=args.retrain)
    for k, v in b.meta.items():
        if k != "classes":
            print(f"{k:>18} | {v}")
    return 0


def _harness(args) -> int:
    from mmada.eval.harness import main

    argv = list(args.lm_eval_args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    main(argv)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: math, understanding, generation, lm-eval harness")
    es = ev.add_subparsers(dest="eval_command", required=True, metavar="SUITE")

    p = es.add_parser("math", help="math accuracy under a named answer-extraction protocol")
    p.add_argument("--data", required=True, help="builtin:arithmetic, a .jsonl/.json/.tar file or a directory")
    p.add_argument("--n", type=int, default=None, help="number of problems (built-in default 200)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--protocol", required=True, choices=["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"])
    p.add_argument("--match", default=None, choices=["exact", "equivalent"],
                   help="exact = lm-eval exact_match (gsm8k default); equivalent = numeric/symbolic")
    p.add_argument("--num-fewshot", type=int, default=0, help="few-shot examples (taken from the data's start)")
    p.add_argument("--fewshot-data", default=None, help="take the few-shot examples from this source instead")
    p.add_argument("--question-field", default="question")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--response-field", default="response", help="field holding responses when no --checkpoint")
    p.add_argument("--no-chat", action="store_true", help="raw prompt continuation instead of the chat template")
    p.add_argument("--prompt-template", default=None,
                   help="the question prompt, with {question}; default lm-eval's 'Question: {question}\\nAnswer:'. "
                        "'{question}' alone asks it as the curated reasoning data does")
    p.add_argument("--think", action="store_true",
                   help="prepend MMaDA's <think> reasoning instruction to the user turn (as in reasoning SFT data)")
    p.add_argument("--difficulty", default=None, metavar="K|LO-HI",
                   help="builtin:arithmetic only: operations per problem (default 1-3)")
    p.add_argument("--exclude-data", nargs="+", default=None, metavar="DIR",
                   help="curated shard sets (e.g. the SFT data): drop problems whose question occurs in them, "
                        "drawing further built-in problems to keep --n")
    _add_model(p)
    _add_output(p)
    p.set_defaults(func=_math)

    p = es.add_parser("mmu", help="understanding QA accuracy (normalised exact match)")
    p.add_argument("--data", required=True, help="builtin:shapes (its VQA) or a .jsonl of question/answer[/prediction]")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--prediction-field", default="prediction")
    _add_model(p, image=True)
    _add_output(p)
    p.set_defaults(func=_mmu)

    p = es.add_parser("pope", help="POPE yes/no hallucination metrics from POPE-format JSONL")
    p.add_argument("--questions", required=True, help="POPE questions JSONL (question_id, label, category)")
    p.add_argument("--answers", default=None, help="answers JSONL (question_id, text); omit if in --questions")
    p.add_argument("--model-version", default=None)
    _add_output(p)
    p.set_defaults(func=_pope)

    p = es.add_parser("t2i", help="text-to-image: GenEval-like shapes score, class accuracy or CLIP score")
    p.add_argument("--checker", default="shapes", choices=["shapes", "digits", "fashion", "clip"])
    p.add_argument("--images", default=None, help="JSONL of {image: path, caption|metadata|label} to score")
    p.add_argument("--data", default="builtin:shapes", help="prompts to generate from (with --checkpoint)")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--clip-model", default=None, help="local CLIPModel directory (for --checker clip)")
    p.add_argument("--fashion-root", default=None, help="Fashion-MNIST IDX directory (for --checker fashion)")
    p.add_argument("--cache-dir", default=None, help="classifier cache (default ~/.cache/mmada/eval)")
    _add_model(p, text=False, image=True)
    _add_output(p)
    p.set_defaults(func=_t2i)

    p = es.add_parser("recon", help="image-tokenizer reconstructions: MSE/PSNR and a comparison grid")
    p.add_argument("--data", default="builtin:shapes")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--image-tokenizer", default="palette")
    _add_output(p)
    p.set_defaults(func=_recon)

    p = es.add_parser("classifier", help="train (once) / load the class-accuracy classifier and show its accuracy")
    p.add_argument("--dataset", default="digits", choices=["digits", "fashion"])
    p.add_argument("--fashion-root", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--retrain", action="store_true")
    p.set_defaults(func=_classifier)

    p = es.add_parser("harness", help="run lm-evaluation-harness with --model mmada registered")
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, help="arguments for lm_eval (after --)")
    p.set_defaults(func=_harness)
