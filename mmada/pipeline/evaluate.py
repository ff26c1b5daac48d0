"""The ``evaluate`` stage: the evaluation suites (:mod:`mmada.eval.suites`) on the referenced model.

Math, image understanding and text-to-image run on ``@grpo`` and, with ``evaluate.baseline: sft``,
on the ``@sft`` version it started from (same problems, same sampler settings, under
``results["baseline"]``); the image tokenizer's reconstructions run once. Each suite returns its
:class:`~mmada.eval.report.EvalReport` and MLflow run id; the stage tags the run with its lineage
and collects the metrics into ``runs/pipeline/metrics/eval.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmada.eval.paired import paired_flips, proportion_ci
from mmada.eval.suites import (
    EvalModel,
    EvalOutputs,
    SuiteResult,
    math_suite,
    mmu_suite,
    recon_suite,
    t2i_suite,
)
from mmada.files import atomic_dir, sha256_json, write_json
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.context import StageContext, check_version, lineage
from mmada.pipeline.params import EvalParams
from mmada.pipeline.report import fmt
from mmada.tracking.registry import resolve_model


def planned_suites(p: EvalParams, *, recon: bool = True) -> list[str]:
    """The suites the parameters ask for (reconstructions only for the evaluated model, not its baseline)."""
    return ["math", *(["mmu"] if p.mmu_n else []), *(["t2i"] if p.t2i_n else []),
            *(["recon"] if recon and p.recon_n else [])]


def run_suite(suite: str, p: EvalParams, *, model: EvalModel, image_tokenizer: str, out: EvalOutputs) -> SuiteResult:
    """One suite on the built-in problems/scenes of ``p.data_seed`` with the parameters' samplers, held out
    from the curated training shards when ``p.held_out`` (items the shards hold are dropped and counted)."""
    def held(name: str) -> list[str] | None:
        return [S.data_dir(name)] if p.held_out else None

    if suite == "math":
        reasoning = p.math_prompt == "reasoning"  # the bare question after MMaDA's <think> instruction
        return math_suite("builtin:arithmetic", protocol=p.math_protocol, model=model, sampler=p.sampler, out=out,
                          n=p.math_n, data_seed=p.data_seed, prompt_template="{question}" if reasoning else None,
                          think=reasoning, exclude_data=held("arithmetic"), difficulty=p.math_difficulty)
    if suite == "mmu":
        return mmu_suite("builtin:shapes", model=model, sampler=p.sampler, out=out, n=p.mmu_n, data_seed=p.data_seed,
                         image_tokenizer=image_tokenizer, think=p.mmu_prompt == "reasoning",
                         exclude_data=held("shapes_vqa"))
    if suite == "t2i":
        return t2i_suite(checker="shapes", model=model, sampler=p.image_sampler, out=out, data="builtin:shapes",
                         n=p.t2i_n, data_seed=p.data_seed, image_tokenizer=image_tokenizer,
                         exclude_data=held("shapes"))
    return recon_suite("builtin:shapes", image_tokenizer=image_tokenizer, out=out, n=p.recon_n, data_seed=p.data_seed)


def run_key(p: EvalParams, model_uri: str) -> dict[str, str]:
    """What makes an evaluation run the same one (a rerun of the stage logs into it, no second run)."""
    return {"pipeline.stage": "evaluate", "pipeline.params_sha256": sha256_json(p.model_dump(mode="json")),
            "pipeline.model": model_uri}


def run_evaluate(p: EvalParams, ctx: StageContext, *, model_ref_path: Path, image_tokenizer: str = S.VQ_DIR,
                 producer: str = "grpo") -> dict[str, Any]:
    """Evaluate the referenced model; with ``p.baseline == "sft"`` (and a @grpo model) also the @sft model it
    started from, on the same problems and sampler settings, under ``results["baseline"]``."""
    ref = T.read_ref(model_ref_path, producer=producer, needed_by="evaluate")
    check_version(ctx.tracking_uri, ref, model_ref_path, producer)
    models: list[tuple[str, dict[str, Any]]] = [("", ref)]
    base_path = Path(S.model_ref("sft"))
    if p.baseline == "sft" and producer == "grpo":
        base = T.read_ref(base_path, producer="sft", needed_by="evaluate (evaluate.baseline=sft)")
        check_version(ctx.tracking_uri, base, base_path, "sft")
        models.append(("baseline", base))
    plan = [(key, r, suite) for key, r in models for suite in planned_suites(p, recon=not key)]
    target = ctx.outputs.eval_dir()
    results: dict[str, Any] = {"model": f"{ref['registered_model']}/{ref['version']}"}
    with atomic_dir(target) as tmp:
        ckpts: dict[str, Path] = {}
        for i, (key, r, suite) in enumerate(plan):
            label = f"{r['registered_model']}/{r['version']}"
            model_uri = T.ref_model_uri(r)
            if label not in ckpts:
                ctx.reporter.progress(i / len(plan), f"fetching {model_uri}")
                ckpts[label], _ = resolve_model(model_uri, tracking_uri=ctx.tracking_uri,
                                                cache_dir=Path(S.PIPELINE_DIR) / "cache")
            what = f"{suite} on {label}" + (f" ({key})" if key else "")
            ctx.reporter.progress(i / len(plan), what)
            folder = tmp / key if key else tmp
            folder.mkdir(exist_ok=True)
            out = EvalOutputs(report=folder / f"{suite}.json", images_dir=folder / "images",
                              samples=folder / f"{suite}_samples.jsonl" if suite != "recon" else None,
                              tracking_uri=ctx.tracking_uri, run_name=f"eval-{suite}-{label.replace('/', '-v')}",
                              run_key=run_key(p, model_uri))
            model = EvalModel(checkpoint=str(ckpts[label]), version=label, batch_size=p.batch_size)
            res = run_suite(suite, p, model=model, image_tokenizer=image_tokenizer, out=out)
            if key:
                results.setdefault(key, {"model": label})[suite] = res.report.metrics
            else:
                results[suite] = res.report.metrics
            T.set_tags(ctx.tracking_uri, res.run_id, {**lineage("evaluate", p), **ctx.tags, "pipeline.model": model_uri})
            ctx.reporter.progress((i + 1) / len(plan), f"{what}: " + ", ".join(
                f"{k} {fmt(v)}" for k, v in res.report.metrics.items()))
        write_json(tmp / "model_ref.json", ref)
        results["tasks"] = task_table(tmp, baseline="baseline" in results)
    write_json(ctx.outputs.metrics("eval"), results)
    ctx.reporter.table(eval_rows(results), f"Evaluation of {results['model']}")
    ctx.reporter.markdown(eval_md(results, target), "evaluation summary")
    ctx.reporter.progress(1.0, f"{len(plan)} evaluations -> {ctx.outputs.metrics('eval')}")
    return results


# (name, samples file, row filter) of the per-task table: the three skills, t2i split by GenEval-like task
TASKS: list[tuple[str, str, str | None]] = [
    ("arithmetic", "math_samples.jsonl", None),
    ("shapes VQA", "mmu_samples.jsonl", None),
    *((f"t2i {t}", "t2i_samples.jsonl", t)
      for t in ("single_object", "colors", "two_objects", "counting", "position", "color_attr")),
]


def _verdicts(path: Path, task: str | None) -> dict[str, bool]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return {str(r["id"]): bool(r["correct"]) for r in rows if task is None or r.get("task") == task}


def _ci(k: int, n: int) -> dict[str, float]:
    lo, hi = proportion_ci(k, n)
    return {"low": lo, "high": hi}


def task_table(folder: Path, *, baseline: bool) -> dict[str, dict[str, Any]]:
    """Accuracy per task with its 95 % (Wilson) interval, for the evaluated model and, with ``baseline``, the
    @sft model on the same items with the same sampler seeds, plus the paired turned-correct / turned-wrong
    counts and the exact McNemar p-value (:mod:`mmada.eval.paired`). Keyed by task (a DVC metrics tree)."""
    table: dict[str, dict[str, Any]] = {}
    for name, file, task in TASKS:
        after = _verdicts(folder / file, task)
        if not after:
            continue
        k, n = sum(after.values()), len(after)
        row: dict[str, Any] = {"n": n, "correct": k, "accuracy": k / n, "ci95": _ci(k, n)}
        if baseline:
            before = _verdicts(folder / "baseline" / file, task)
            kb = sum(before.values())
            flips = paired_flips(before, after)
            row["baseline"] = {"correct": kb, "accuracy": kb / n, "ci95": _ci(kb, n)}
            row["paired"] = {"turned_correct": flips.gained, "turned_wrong": flips.lost, "p_value": flips.p_value}
        table[name] = row
    return table


def eval_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """``suite, metric, value`` rows of the evaluated model, plus ``baseline`` and ``delta`` where the
    baseline (@sft) was evaluated too."""
    base = results.get("baseline") or {}
    rows = []
    for suite, m in results.items():
        if suite in ("baseline", "tasks") or not isinstance(m, dict):
            continue
        for k, v in m.items():
            row: dict[str, Any] = {"suite": suite, "metric": k, "value": v}
            b = (base.get(suite) or {}).get(k)
            if base:
                row["baseline"] = b
                row["delta"] = v - b if isinstance(v, (int, float)) and isinstance(b, (int, float)) else None
            rows.append(row)
    return rows


def eval_md(results: dict[str, Any], folder: Path) -> str:
    base = results.get("baseline")
    head = f"### Evaluation of {results['model']}"
    if base:
        head += f" (baseline: {base['model']}, the @sft model UniGRPO started from)"
        lines = [head, "", "| suite | metric | value | baseline | delta |", "|---|---|---|---|---|"]
        lines += [f"| {r['suite']} | {r['metric']} | {fmt(r['value'])} | {fmt(r['baseline'])} | {fmt(r['delta'])} |"
                  for r in eval_rows(results)]
    else:
        lines = [head, "", "| suite | metric | value |", "|---|---|---|"]
        lines += [f"| {r['suite']} | {r['metric']} | {fmt(r['value'])} |" for r in eval_rows(results)]
    lines += ["", f"Samples and images: `{folder}`"]
    return "\n".join(lines)
