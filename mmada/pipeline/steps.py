"""What each pipeline stage does: the one implementation behind ``dvc repro``, ``mmada pipeline`` and Prefect.

    ctx = StageContext.create(reporter=ConsoleReporter("pretrain"))
    run_stage("pretrain", load_params("params.yaml"), ctx)

* ``tokenizer``  trains the built-in BPE into ``runs/tokenizer`` (in process, ~1 s).
* ``curate-*``   curates one data spec into ``runs/data/<name>`` (in process; :func:`mmada.data.curate.curate`).
* ``vq``         launches ``mmada vq train`` (subprocess / torchrun / sbatch) and watches it.
* ``pretrain`` / ``sft`` / ``grpo``  launch ``mmada train`` the same way, into an MLflow run created
  beforehand; they pin ``model.init`` to the exact upstream version from its model reference and
  write the stage's reference, metrics JSON and loss/reward CSV.
* ``evaluate``   runs ``mmada eval math|mmu|t2i|recon`` on the referenced model and collects the reports.

Every stage first checks the outputs of its upstream stages exist (a clear error says which
stage to run), and writes its own outputs atomically (files via rename; directories built under
a temp name), its model reference last.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmada.errors import ConfigError, MMaDAError
from mmada.files import atomic_dir, sha256_file, sha256_json, write_csv, write_json, write_text
from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.launch import LaunchError, LaunchSpec, launch
from mmada.pipeline.params import EvalParams, PipelineParams, TokenizerParams, grpo_available
from mmada.pipeline.report import ConsoleReporter, Reporter

# A directory output counts as present only when its completion marker exists.
COMPLETE_MARKERS = {S.TOKENIZER_DIR: "tokenizer.json", S.VQ_DIR: "model.safetensors",
                    **{S.data_dir(n): "manifest.json" for n in S.DATASETS}}


@dataclass
class StageOutputs:
    """Where a stage writes its reference, metrics and curve (the DVC paths, or a Prefect run's folder)."""

    base: str = S.PIPELINE_DIR

    def ref(self, stage: str) -> Path:
        return Path(self.base) / "models" / f"{stage}.json"

    def metrics(self, stage: str) -> Path:
        return Path(self.base) / "metrics" / f"{stage}.json"

    def plot(self, stage: str) -> Path:
        return Path(self.base) / "plots" / f"{stage}.csv"

    def eval_dir(self) -> Path:
        return Path(self.base) / "eval"

    def work(self, stage: str, run_name: str) -> Path:
        return Path(self.base) / "work" / stage / run_name


@dataclass
class StageContext:
    reporter: Reporter
    launch: LaunchSpec = field(default_factory=LaunchSpec)
    outputs: StageOutputs = field(default_factory=StageOutputs)
    tracking_uri: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra lineage tags for MLflow runs and model versions (e.g. ``prefect.flow_run_id``)."""

    @classmethod
    def create(cls, reporter: Reporter, *, launch: LaunchSpec | None = None, outputs: StageOutputs | None = None,
               tags: dict[str, str] | None = None) -> StageContext:
        uri = T.tracking_uri()
        T.check_tracking(uri)
        env_tags = {}
        if os.environ.get("MMADA_PREFECT_FLOW_RUN_ID"):
            env_tags["prefect.flow_run_id"] = os.environ["MMADA_PREFECT_FLOW_RUN_ID"]
        if os.environ.get("MMADA_PIPELINE_RUNNER"):
            env_tags["pipeline.runner"] = os.environ["MMADA_PIPELINE_RUNNER"]
        return cls(reporter=reporter, launch=launch or LaunchSpec(), outputs=outputs or StageOutputs(),
                   tracking_uri=uri, tags={**env_tags, **(tags or {})})


def lineage(stage: str, section: Any) -> dict[str, str]:
    """Tags tying a run / model version to this pipeline: stage, params hash, git and DVC revision."""
    from mmada.tracking.lineage import git_commit

    section_json = section.model_dump(mode="json") if hasattr(section, "model_dump") else section
    tags = {"pipeline.stage": stage, "pipeline.params_sha256": sha256_json(section_json),
            "pipeline.git_rev": git_commit()}
    if Path("dvc.lock").is_file():
        tags["pipeline.dvc_lock_sha256"] = sha256_file("dvc.lock")
    return tags


# ------------------------------------------------------------------------------------------------
# upstream checks


def check_upstream(stage: S.Stage, *, skip: set[str] | None = None) -> None:
    """Raise :class:`MissingUpstreamError` naming the stage to run when an upstream output is missing."""
    for dep in stage.deps:
        producer = S.producer_of(dep)
        if producer is None or dep in (skip or set()):
            continue
        marker = COMPLETE_MARKERS.get(dep)
        path = Path(dep) / marker if marker else Path(dep)
        if not path.exists():
            raise T.MissingUpstreamError(
                f"stage {stage.name!r} needs {dep} (written by stage {producer.name!r}), which is missing or "
                f"incomplete: run `mmada pipeline --until {producer.name}` (or `dvc repro {producer.name}`) first")


# ------------------------------------------------------------------------------------------------
# tokenizer / curate


def run_tokenizer(p: TokenizerParams, ctx: StageContext, out: str = S.TOKENIZER_DIR) -> dict[str, Any]:
    from mmada.tokenization.text import builtin_corpus, train_bpe_tokenizer

    ctx.reporter.progress(0.0, "building the built-in corpus")
    texts = builtin_corpus()
    ctx.reporter.progress(0.5, f"training a {p.vocab_size}-token byte-level BPE on {len(texts)} texts")
    target = Path(out)
    with atomic_dir(target) as tmp:
        tok = train_bpe_tokenizer(texts, p.vocab_size, tmp)
    ctx.reporter.progress(1.0, f"{len(tok)} tokens -> {target}")
    return {"path": str(target), "vocab_size": len(tok)}


def run_curate(spec, ctx: StageContext, out: str) -> dict[str, Any]:
    from mmada.data.curate import curate

    def progress(phase: str, done: int, total: int) -> None:
        frac = (0.0 if phase == "chunks" else 0.5) + 0.5 * done / max(total, 1)
        ctx.reporter.progress(frac, f"{phase} {done}/{total}")

    m = curate(spec, out=out, progress=progress)
    rows = [{"shard": s.name, "split": s.split, "samples": s.count, "bytes": s.bytes, "sha256": s.sha256}
            for s in m.shards]
    ctx.reporter.table(rows, f"Shards of {m.name} at {out} (spec {m.spec_hash[:12]})")
    ctx.reporter.progress(1.0, f"{m.counts.kept} samples kept, {m.counts.rejected} rejected, "
                               f"{len(m.shards)} shards -> {out}")
    return {"path": out, "name": m.name, "kept": m.counts.kept, "rejected": m.counts.rejected,
            "shards": len(m.shards), "spec_hash": m.spec_hash}


# ------------------------------------------------------------------------------------------------
# launched training (vq, pretrain/sft/grpo)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _job_env(ctx: StageContext, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"MLFLOW_TRACKING_URI": ctx.tracking_uri, "PYTHONUNBUFFERED": "1"}
    return {**env, **(extra or {})}


def _write_yaml(path: Path, data: dict) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def _summary_line(lines: list[str], key: str) -> dict[str, Any] | None:
    for ln in reversed(lines):
        s = ln.strip()
        if s.startswith("{") and key in s:
            try:
                d = json.loads(s)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict) and key in d:
                return d
    return None


def _progress_poller(ctx: StageContext, run_id_fn, max_steps: int):
    def poll() -> None:
        run_id = run_id_fn()
        if not run_id:
            return
        try:
            got = T.latest_step(ctx.tracking_uri, run_id)
        except Exception:
            return
        if got is not None:
            step, loss = got
            done = min(step + 1, max_steps)
            ctx.reporter.progress(done / max_steps, f"step {done}/{max_steps} train/loss {loss:.4f}")

    return poll


def run_vq(cfg, ctx: StageContext, *, stage: str = "vq", out_dir: str = S.VQ_OUTPUT_DIR) -> dict[str, Any]:
    run_name = f"{cfg.name}-{_stamp()}"
    # Same config -> same checkpoint folder (a crashed run resumes); another config starts fresh.
    ckpt_dir = f"{out_dir}/checkpoints/{cfg.config_hash()[:12]}"
    cfg = cfg.model_copy(update={
        "output_dir": out_dir, "checkpoint": cfg.checkpoint.model_copy(update={"dir": ckpt_dir}),
        "tracking": cfg.tracking.model_copy(update={"uri": ctx.tracking_uri, "run_name": run_name})})
    work = ctx.outputs.work(stage, run_name)
    cfg_path = _write_yaml(work / "config.yaml", cfg.model_dump(mode="json"))
    found: dict[str, str] = {}

    def run_id() -> str | None:
        if "id" not in found:
            with contextlib.suppress(Exception):
                r = T.find_run(ctx.tracking_uri, cfg.experiment, run_name)
                if r is not None:
                    found["id"], found["exp"] = r.info.run_id, r.info.experiment_id
                    ctx.reporter.link(T.run_url(found["exp"], found["id"]), "MLflow run")
        return found.get("id")

    T.ensure_store(ctx.tracking_uri)
    ctx.reporter.progress(0.0, f"launching `mmada vq train` ({ctx.launch.kind}), {cfg.trainer.max_steps} steps")
    export = Path(out_dir) / "tokenizer"
    try:
        launch(ctx.launch, ["vq", "train", "--config", str(cfg_path.resolve())], workdir=work,
               job_name=f"mmada-{stage}", env=_job_env(ctx), on_line=ctx.reporter.line,
               poll=_progress_poller(ctx, run_id, cfg.trainer.max_steps))
    except BaseException:
        if run_id():
            T.end_run(ctx.tracking_uri, found["id"], "FAILED")
        raise
    if not (export / "model.safetensors").is_file():
        raise MMaDAError(f"`mmada vq train` finished but wrote no tokenizer at {export}")
    rid = json.loads((export / "config.json").read_text()).get("_mlflow_run_id") or run_id()
    if rid is None:
        raise MMaDAError(f"cannot find the MLflow run {run_name!r} of the image tokenizer in {ctx.tracking_uri}")
    exp_id = found.get("exp") or T.client(ctx.tracking_uri).get_run(rid).info.experiment_id
    tags = {**lineage(stage, cfg), **ctx.tags}
    T.set_tags(ctx.tracking_uri, rid, tags)
    raw = json.loads((Path(out_dir) / "metrics.json").read_text())
    metrics = {"steps": raw.get("steps"), "train_seconds": raw.get("train_seconds"),
               **{f"final_{k}": v for k, v in (raw.get("final") or {}).items()}}
    header, rows = T.curves(ctx.tracking_uri, rid, ["train/loss", "val/psnr"])
    write_csv(ctx.outputs.plot(stage), header, rows)
    write_json(ctx.outputs.metrics(stage), metrics)
    url = T.run_url(exp_id, rid)
    ctx.reporter.link(url, "MLflow run")
    ctx.reporter.markdown(_metrics_md(f"Image tokenizer ({stage})", metrics, url,
                                      extra=[f"Tokenizer: `{export}`",
                                             f"Reconstructions: `{Path(out_dir) / 'reconstructions'}`"]),
                          f"{stage} summary")
    ctx.reporter.progress(1.0, f"PSNR {metrics.get('final_psnr', float('nan')):.2f} dB -> {export}")
    return {"run_id": rid, "experiment_id": exp_id, "path": str(export), "metrics": metrics}


def pin_init(cfg, init_ref: dict[str, Any]):
    """``models:/NAME@ALIAS`` of the upstream model → ``models:/NAME/<version in the reference>``."""
    from mmada.tracking.registry import parse_model_uri

    init = cfg.model.init
    parsed = parse_model_uri(init or "")
    if parsed and parsed["name"] == init_ref["registered_model"]:
        return cfg.model_copy(update={"model": cfg.model.model_copy(update={"init": T.ref_model_uri(init_ref)})})
    return cfg


def _check_version(uri: str, ref: dict[str, Any], ref_path: Path, producer: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        T.client(uri).get_model_version(ref["registered_model"], ref["version"])
    except MlflowException:
        raise MMaDAError(
            f"{ref_path} names {ref['registered_model']} version {ref['version']}, which is not in the model "
            f"registry at {uri} (was the MLflow store deleted?): re-run it with `mmada pipeline --force --until "
            f"{producer}` (or `dvc repro -f {producer}`)") from None


def run_train(cfg, ctx: StageContext, *, stage: str, init_ref_path: Path | None = None) -> dict[str, Any]:
    """Launch ``mmada train`` for ``cfg`` and write the stage's reference, metrics and curve."""
    from mmada.training.config import validate_train_config

    init_ref = None
    if init_ref_path is not None:
        producer = S.get_stage(stage).extra.get("init_from", "")
        init_ref = T.read_ref(init_ref_path, producer=producer, needed_by=stage)
        _check_version(ctx.tracking_uri, init_ref, init_ref_path, producer)
        cfg = pin_init(cfg, init_ref)
    nodes, devices = ctx.launch.world()
    data = cfg.model_dump(mode="json")
    data["trainer"].update(num_nodes=nodes, devices=devices)
    cfg = validate_train_config(data, f"{stage} config")
    # Same config -> same folder (a crashed run resumes); another config starts fresh.
    cfg = cfg.model_copy(update={"output_dir": f"{cfg.output_dir}/{cfg.config_hash()[:12]}"})
    run_name = cfg.tracking.run_name or f"{cfg.name}-{_stamp()}"
    tags = {**lineage(stage, cfg), **ctx.tags}
    if init_ref is not None:
        tags["pipeline.init_ref"] = T.ref_model_uri(init_ref)
    run_id, exp_id = T.create_run(ctx.tracking_uri, cfg.experiment, run_name, tags)
    url = T.run_url(exp_id, run_id)
    ctx.reporter.link(url, "MLflow run")
    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": ctx.tracking_uri,
                                                                             "run_name": run_name})})
    work = ctx.outputs.work(stage, run_name)
    cfg_path = _write_yaml(work / "config.yaml", cfg.model_dump(mode="json"))
    max_steps = cfg.trainer.max_steps
    ctx.reporter.progress(0.0, f"launching `mmada train` ({ctx.launch.kind}), {max_steps} steps, "
                               f"from {cfg.model.init or 'fresh ' + str(cfg.model.preset)}")
    try:
        res = launch(ctx.launch, ["train", str(cfg_path.resolve())], workdir=work, job_name=f"mmada-{stage}",
                     env=_job_env(ctx, {"MLFLOW_RUN_ID": run_id}), on_line=ctx.reporter.line,
                     poll=_progress_poller(ctx, lambda: run_id, max_steps))
    except BaseException:
        T.end_run(ctx.tracking_uri, run_id, "FAILED")
        raise
    summary = _summary_line(res.lines, "global_step")
    if summary is None:
        raise LaunchError(f"`mmada train` ({stage}) exited 0 but printed no JSON summary line")
    if not summary.get("model_version"):
        raise MMaDAError(f"stage {stage!r} trained but registered no model version (MLflow unavailable? see "
                         f"{cfg.out_dir / 'mlflow_failed.jsonl'}); nothing was written for it")
    name, version = summary["registered_model"], str(summary["model_version"])
    mv = T.client(ctx.tracking_uri).get_model_version(name, version)
    export = Path(summary["export_dir"]) if summary.get("export_dir") else None
    weights = export / "model.safetensors" if export else None
    ref = {"stage": stage, "registered_model": name, "version": version, "alias": cfg.alias,
           "model_uri": f"models:/{name}/{version}", "source": mv.source, "run_id": summary["run_id"] or run_id,
           "experiment_id": exp_id, "tracking_uri": ctx.tracking_uri, "global_step": summary["global_step"],
           "sha256": sha256_file(weights) if weights and weights.is_file() else None,
           "config_hash": cfg.config_hash(), "params_sha256": tags["pipeline.params_sha256"],
           "init": cfg.model.init}
    T.set_version_tags(ctx.tracking_uri, name, version, {**tags, "pipeline.ref": str(ctx.outputs.ref(stage))})
    keys = [k for k in T.metric_keys(ctx.tracking_uri, run_id)
            if k.startswith("train/") and ("loss" in k or "reward" in k or k == "train/lr")]
    header, rows = T.curves(ctx.tracking_uri, run_id, keys)
    reward = [k for k in keys if "reward" in k]
    if reward:  # a plain `reward` column for the DVC plot (train/reward if logged, else the first reward key)
        pick = "train/reward" if "train/reward" in reward else reward[0]
        col = header.index(pick.replace("/", "_"))
        header, rows = [*header, "reward"], [[*r, r[col]] for r in rows]
    final = {k: v for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))}
    last = {h: r[i] for r in rows[-1:] for i, h in enumerate(header) if h != "step" and r[i] != ""}
    metrics = {"global_step": summary["global_step"], "model_version": int(version),
               **{f"final_{k}": v for k, v in last.items()}, **final}
    write_csv(ctx.outputs.plot(stage), header, rows)
    write_json(ctx.outputs.metrics(stage), metrics)
    write_json(ctx.outputs.ref(stage), ref)  # last: the reference means "complete"
    ctx.reporter.markdown(_train_md(stage, ref, metrics, url, cfg.out_dir), f"{stage} summary")
    ctx.reporter.progress(1.0, f"registered {name} version {version} (@{cfg.alias})")
    return ref


# ------------------------------------------------------------------------------------------------
# evaluate


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def _mmada(argv: list[str]) -> str:
    """Run ``mmada ARGV`` in this process; returns its stdout (also echoed); raises on failure."""
    from mmada.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(_Tee(buf, sys.stdout)):
        rc = main(argv)
    if rc:
        raise MMaDAError(f"`mmada {' '.join(argv)}` failed with status {rc}")
    return buf.getvalue()


def settings_argv(settings) -> list[str]:
    """Sampler settings as ``mmada eval`` flags, every field (``--cache prefix --no-stop-at-eos …``)."""
    argv: list[str] = []
    for name, value in settings.model_dump().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _eval_suites(p: EvalParams, image_tokenizer: str, recon: bool = True) -> list[tuple[str, list[str]]]:
    """The ``mmada eval`` commands of the stage (without the model/output arguments)."""
    text = settings_argv(p.sampler)
    math_prompt = ["--prompt-template", "{question}", "--think"] if p.math_prompt == "reasoning" else []
    suites: list[tuple[str, list[str]]] = [
        ("math", ["eval", "math", "--data", "builtin:arithmetic", "--n", str(p.math_n), "--data-seed",
                  str(p.data_seed), "--protocol", p.math_protocol, *math_prompt, *text]),
    ]
    if p.mmu_n:
        suites.append(("mmu", ["eval", "mmu", "--data", "builtin:shapes", "--n", str(p.mmu_n), "--data-seed",
                               str(p.data_seed), "--image-tokenizer", image_tokenizer, *text]))
    if p.t2i_n:
        suites.append(("t2i", ["eval", "t2i", "--checker", "shapes", "--data", "builtin:shapes", "--n",
                               str(p.t2i_n), "--data-seed", str(p.data_seed), "--image-tokenizer", image_tokenizer,
                               *settings_argv(p.image_sampler)]))
    if recon and p.recon_n:
        suites.append(("recon", ["eval", "recon", "--data", "builtin:shapes", "--n", str(p.recon_n), "--data-seed",
                                 str(p.data_seed), "--image-tokenizer", image_tokenizer]))
    return suites


def run_evaluate(p: EvalParams, ctx: StageContext, *, model_ref_path: Path, image_tokenizer: str = S.VQ_DIR,
                 producer: str = "grpo") -> dict[str, Any]:
    """Evaluate the referenced model; with ``p.baseline == "sft"`` (and a @grpo model) also the @sft model it
    started from, on the same problems and sampler settings, under ``results["baseline"]``."""
    from mmada.tracking.registry import resolve_model

    ref = T.read_ref(model_ref_path, producer=producer, needed_by="evaluate")
    _check_version(ctx.tracking_uri, ref, model_ref_path, producer)
    models: list[tuple[str, dict[str, Any]]] = [("", ref)]
    base_path = Path(S.model_ref("sft"))
    if p.baseline == "sft" and producer == "grpo":
        base = T.read_ref(base_path, producer="sft", needed_by="evaluate (evaluate.baseline=sft)")
        _check_version(ctx.tracking_uri, base, base_path, "sft")
        models.append(("baseline", base))
    plan = [(key, r, s) for key, r in models
            for s in _eval_suites(p, image_tokenizer, recon=not key)]
    target = ctx.outputs.eval_dir()
    results: dict[str, Any] = {"model": f"{ref['registered_model']}/{ref['version']}"}
    with atomic_dir(target) as tmp:
        ckpts: dict[str, Path] = {}
        for i, (key, r, (suite, argv)) in enumerate(plan):
            label = f"{r['registered_model']}/{r['version']}"
            model_uri = T.ref_model_uri(r)
            if label not in ckpts:
                ctx.reporter.progress(i / len(plan), f"fetching {model_uri}")
                ckpts[label], _ = resolve_model(model_uri, tracking_uri=ctx.tracking_uri,
                                                cache_dir=Path(S.PIPELINE_DIR) / "cache")
            ctx.reporter.progress(i / len(plan), f"{suite} on {label}" + (f" ({key})" if key else ""))
            folder = tmp / key if key else tmp
            folder.mkdir(exist_ok=True)
            argv = [*argv, "--tracking-uri", ctx.tracking_uri, "--out", str(folder / f"{suite}.json"),
                    "--images-dir", str(folder / "images"), "--run-name", f"eval-{suite}-{label.replace('/', '-v')}"]
            if suite != "recon":
                argv += ["--checkpoint", str(ckpts[label]), "--model-version", label, "--batch-size",
                         str(p.batch_size), "--samples-out", str(folder / f"{suite}_samples.jsonl")]
            out = _mmada(argv)
            report = json.loads((folder / f"{suite}.json").read_text())
            if key:
                results.setdefault(key, {"model": label})[suite] = report["metrics"]
            else:
                results[suite] = report["metrics"]
            rid = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("mlflow run:")), None)
            if rid:
                T.set_tags(ctx.tracking_uri, rid, {**lineage("evaluate", p), **ctx.tags, "pipeline.model": model_uri})
        write_json(tmp / "model_ref.json", ref)
    write_json(ctx.outputs.metrics("eval"), results)
    ctx.reporter.table(eval_rows(results), f"Evaluation of {results['model']}")
    ctx.reporter.markdown(_eval_md(results, target), "evaluation summary")
    ctx.reporter.progress(1.0, f"{len(plan)} evaluations -> {ctx.outputs.metrics('eval')}")
    return results


def eval_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """``suite, metric, value`` rows of the evaluated model, plus ``baseline`` and ``delta`` where the
    baseline (@sft) was evaluated too."""
    base = results.get("baseline") or {}
    rows = []
    for suite, m in results.items():
        if suite == "baseline" or not isinstance(m, dict):
            continue
        for k, v in m.items():
            row: dict[str, Any] = {"suite": suite, "metric": k, "value": v}
            b = (base.get(suite) or {}).get(k)
            if base:
                row["baseline"] = b
                row["delta"] = v - b if isinstance(v, (int, float)) and isinstance(b, (int, float)) else None
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# markdown summaries (Prefect artifacts)


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _metrics_md(title: str, metrics: dict[str, Any], url: str, extra: list[str] | None = None) -> str:
    lines = [f"### {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
    lines += ["", f"[MLflow run]({url})", *[f"- {e}" for e in extra or []]]
    return "\n".join(lines)


def latest_samples(out_dir: Path) -> tuple[list[dict], Path | None]:
    """Answers and the t2i grid of the newest ``samples/step_*`` folder a training run wrote."""
    steps = sorted((out_dir / "samples").glob("step_*"))
    if not steps:
        return [], None
    last = steps[-1]
    answers = json.loads((last / "answers.json").read_text()) if (last / "answers.json").is_file() else []
    grid = last / "t2i_grid.png"
    return answers, grid if grid.is_file() else None


def _train_md(stage: str, ref: dict[str, Any], metrics: dict[str, Any], url: str, out_dir: Path) -> str:
    md = _metrics_md(f"{stage}: {ref['registered_model']} version {ref['version']} (@{ref['alias']})", metrics, url,
                     extra=[f"Model: `{ref['model_uri']}` (sha256 `{(ref.get('sha256') or '')[:16]}`)"])
    answers, grid = latest_samples(out_dir)
    if answers:
        md += "\n\n**Sample answers**\n\n" + "\n".join(f"- *{a.get('prompt', '')}* → `{a.get('answer', '')}`"
                                                      for a in answers[:4])
    if grid:
        md += f"\n\nGenerated images: `{grid}`"
    return md


def _eval_md(results: dict[str, Any], folder: Path) -> str:
    base = results.get("baseline")
    head = f"### Evaluation of {results['model']}"
    if base:
        head += f" (baseline: {base['model']}, the @sft model UniGRPO started from)"
        lines = [head, "", "| suite | metric | value | baseline | delta |", "|---|---|---|---|---|"]
        lines += [f"| {r['suite']} | {r['metric']} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | {_fmt(r['delta'])} |"
                  for r in eval_rows(results)]
    else:
        lines = [head, "", "| suite | metric | value |", "|---|---|---|"]
        lines += [f"| {r['suite']} | {r['metric']} | {_fmt(r['value'])} |" for r in eval_rows(results)]
    lines += ["", f"Samples and images: `{folder}`"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# dispatch


def run_stage(name: str, params: PipelineParams, ctx: StageContext | None = None, *,
              model_ref: str | None = None) -> Any:
    """Run one stage of the pipeline with ``params`` (``model_ref`` overrides what ``evaluate`` evaluates)."""
    stage = S.get_stage(name)
    ctx = ctx or StageContext.create(ConsoleReporter(name))
    skip = {S.model_ref("grpo"), S.model_ref("sft")} if (name == "evaluate" and model_ref) else set()
    check_upstream(stage, skip=skip)
    if stage.kind == "tokenizer":
        return run_tokenizer(params.tokenizer, ctx)
    if stage.kind == "curate":
        ds = stage.extra["dataset"]
        return run_curate(getattr(params.curate, ds), ctx, S.data_dir(ds))
    if stage.kind == "vq":
        return run_vq(params.vq, ctx)
    if stage.kind == "train":
        cfg = getattr(params, name)
        if cfg is None:
            if not grpo_available():
                raise MMaDAError(f"stage {name!r} is not available in this build: `mmada train` has no "
                                 f"{name!r} stage yet (mmada.training.config.STAGE_TASKS)")
            raise ConfigError(f"params.yaml: {name}: no config; fill it with `mmada pipeline params --write`")
        init_from = stage.extra.get("init_from")
        return run_train(cfg, ctx, stage=name, init_ref_path=Path(S.model_ref(init_from)) if init_from else None)
    if stage.kind == "evaluate":
        path = Path(model_ref) if model_ref else Path(S.model_ref(stage.extra["model_from"]))
        return run_evaluate(params.evaluate, ctx, model_ref_path=path,
                            producer=stage.extra["model_from"] if not model_ref else "(given --model-ref)")
    raise AssertionError(stage.kind)
