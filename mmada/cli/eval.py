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

from mmada.cli._args import int_at_least
from mmada.cli._sampler_args import (
    add_sampler_args,
    given_sampler_fields,
    parse_config_overrides,
    sampler_from_args,
)
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.errors import MMaDAError
from mmada.eval.report import ModelRef
from mmada.eval.runners import evaluate_pope, load_records
from mmada.eval.suites import (
    EvalModel,
    EvalOutputs,
    SuiteResult,
    math_suite,
    mmu_suite,
    recon_suite,
    save_report,
    t2i_suite,
)


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
    g.add_argument("--batch-size", type=int_at_least(1), default=8)
    g.add_argument("--config-override", action="append", metavar="FIELD=VALUE",
                   help="change a config field that leaves the weights alone, e.g. num_vq_tokens=1024 (repeatable)")
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


def _model(args) -> EvalModel:
    return EvalModel(checkpoint=args.checkpoint, tokenizer=args.tokenizer, version=args.model_version,
                     device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                     overrides=parse_config_overrides(getattr(args, "config_override", None)))


def _outputs(args) -> EvalOutputs:
    return EvalOutputs(report=Path(args.out) if args.out else None,
                       samples=Path(args.samples_out) if args.samples_out else None,
                       images_dir=Path(args.images_dir) if args.images_dir else None,
                       tracking_uri=args.tracking_uri, experiment=args.experiment, run_name=args.run_name)


def _print(result: SuiteResult) -> int:
    held = result.report.details.get("held_out")
    if held is not None:
        print(f"held out: removed {held['removed']} problems whose question is in {', '.join(held['exclude_data'])}")
    print(result.report.table())
    print(f"report: {result.report_path}")
    if result.samples_path is not None:
        print(f"samples: {result.samples_path}")
    for path in result.image_paths:
        print(f"image: {path}")
    if result.run_id is not None:
        print(f"mlflow run: {result.run_id}")
    return 0


# ---------------------------------------------------------------------------------------------
# handlers


def _math(args) -> int:
    return _print(math_suite(
        args.data, protocol=args.protocol, model=_model(args), sampler=_sampler(args, SamplerSettings),
        out=_outputs(args), n=args.n, data_seed=args.data_seed, num_fewshot=args.num_fewshot,
        fewshot_data=args.fewshot_data, question_field=args.question_field, answer_field=args.answer_field,
        response_field=args.response_field, match=args.match, chat=not args.no_chat, think=args.think,
        prompt_template=args.prompt_template, difficulty=_difficulty(args.difficulty),
        exclude_data=args.exclude_data))


def _difficulty(text: str | None) -> int | tuple[int, int] | None:
    if text is None:
        return None
    lo, _, hi = text.partition("-")
    try:
        return int(lo) if not hi else (int(lo), int(hi))
    except ValueError:
        raise MMaDAError(f"--difficulty: expected K or LO-HI (operations per problem), got {text!r}") from None


def _mmu(args) -> int:
    # With a KV cache, the image prefix is encoded once (Fast-dLLM-style MMU prefill) unless told otherwise.
    once = getattr(args, "sampler_cache", "none") != "none" and "prompt_cache" not in given_sampler_fields(args)
    sampler = _sampler(args, SamplerSettings, **({"prompt_cache": "once"} if once else {}))
    return _print(mmu_suite(args.data, model=_model(args), sampler=sampler, out=_outputs(args), n=args.n,
                            data_seed=args.data_seed, image_tokenizer=args.image_tokenizer,
                            prediction_field=args.prediction_field))


def _pope(args) -> int:
    qs = load_records(args.questions)
    ans = load_records(args.answers) if args.answers else None
    report = evaluate_pope(qs, ans, dataset=args.questions, model_ref=ModelRef(version=args.model_version))
    return _print(save_report(report, _outputs(args)))


def _t2i(args) -> int:
    return _print(t2i_suite(
        checker=args.checker, model=_model(args), sampler=_sampler(args, ImageSamplerSettings), out=_outputs(args),
        images=args.images, data=args.data, n=args.n, data_seed=args.data_seed,
        image_tokenizer=args.image_tokenizer, clip_model=args.clip_model, fashion_root=args.fashion_root,
        cache_dir=args.cache_dir, think=sampler_from_args(SamplerSettings, args, prefix="think-") if args.think else None))


def _recon(args) -> int:
    return _print(recon_suite(args.data, image_tokenizer=args.image_tokenizer, out=_outputs(args), n=args.n,
                              data_seed=args.data_seed))


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
    p.add_argument("--n", type=int_at_least(1), default=None, help="number of problems (built-in default 200)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--protocol", required=True, choices=["gsm8k_strict", "gsm8k_flexible", "boxed", "answer_tag"])
    p.add_argument("--match", default=None, choices=["exact", "equivalent"],
                   help="exact = lm-eval exact_match (gsm8k default); equivalent = numeric/symbolic")
    p.add_argument("--num-fewshot", type=int_at_least(0), default=0, help="few-shot examples (taken from the data's start)")
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
    p.add_argument("--n", type=int_at_least(1), default=None)
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
    p.add_argument("--n", type=int_at_least(1), default=None)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--clip-model", default=None, help="local CLIPModel directory (for --checker clip)")
    p.add_argument("--fashion-root", default=None, help="Fashion-MNIST IDX directory (for --checker fashion)")
    p.add_argument("--cache-dir", default=None, help="classifier cache (default ~/.cache/mmada/eval)")
    p.add_argument("--think", action="store_true",
                   help="reasoning to image (<|r2i|>): a detailed description first (flags --think-*), then the image")
    _add_model(p, text=False, image=True)
    add_sampler_args(p, SamplerSettings, "reasoning sampler (--think)", prefix="think-")
    _add_output(p)
    p.set_defaults(func=_t2i)

    p = es.add_parser("recon", help="image-tokenizer reconstructions: MSE/PSNR and a comparison grid")
    p.add_argument("--data", default="builtin:shapes")
    p.add_argument("--n", type=int_at_least(1), default=32)
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
