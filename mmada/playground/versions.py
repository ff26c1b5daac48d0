"""The model registry as the playground's version picker shows it.

A *version* is a registered MMaDA model version (its artifacts are the run's ``hf/`` export) or a
checkpoint directory given on the command line. For each the picker shows its name, number and
aliases, the stage tag, the parent it started from (and the parent's parent …), the metrics of the
evaluation runs that named it (``mmada.model_version`` tag, :func:`mmada.eval.report.log_report`) and
a link to its training run in the MLflow UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmada.errors import MMaDAError
from mmada.pipeline.tracking import run_url
from mmada.tracking.registry import EXPORT_ARTIFACT_PATH, parse_model_uri

EVAL_EXPERIMENT = "mmada-eval"


@dataclass
class Version:
    uri: str
    """``models:/NAME/VERSION`` (a registered version) or a checkpoint directory."""
    name: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    stage: str | None = None
    parent: str | None = None
    """``NAME/VERSION`` of the version it started from (lineage tag ``parent_model_version``)."""
    run_id: str | None = None
    experiment_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.name is None:
            return f"{self.uri} (directory)"
        at = " ".join(f"@{a}" for a in self.aliases)
        return f"{self.name} v{self.version}" + (f" {at}" if at else "") + (f" [{self.stage}]" if self.stage else "")


def list_versions(tracking_uri: str) -> list[Version]:
    """Every registered version whose artifacts are an MMaDA export, newest first within each model."""
    client = MlflowClient(tracking_uri)
    out: list[Version] = []
    try:
        models = client.search_registered_models(max_results=1000)
        for rm in sorted(models, key=lambda m: m.name):
            aliases: dict[str, list[str]] = {}
            for alias, v in (rm.aliases or {}).items():
                aliases.setdefault(str(v), []).append(alias)
            for mv in client.search_model_versions(f"name='{rm.name}'", max_results=1000):
                if not str(mv.source).rstrip("/").endswith("/" + EXPORT_ARTIFACT_PATH):
                    continue  # e.g. the image tokenizer's versions (artifacts tokenizer/)
                out.append(_version(client, mv, sorted(aliases.get(str(mv.version), []))))
    except MlflowException as exc:
        raise MMaDAError(f"cannot read the model registry at {tracking_uri}: {exc.message}") from None
    return sorted(out, key=lambda v: (v.name or "", -int(v.version or 0)))


def _version(client: MlflowClient, mv, aliases: list[str]) -> Version:
    exp_id = None
    if mv.run_id:
        try:
            exp_id = client.get_run(mv.run_id).info.experiment_id
        except MlflowException:
            exp_id = None  # the run was deleted: the version still loads from its source
    tags = dict(mv.tags or {})
    return Version(uri=f"models:/{mv.name}/{mv.version}", name=mv.name, version=str(mv.version), aliases=aliases,
                   stage=tags.get("stage"), parent=tags.get("parent_model_version"), run_id=mv.run_id,
                   experiment_id=exp_id, tags=tags)


def find_version(versions: list[Version], uri: str, tracking_uri: str) -> Version:
    """The version ``uri`` names (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a directory)."""
    parsed = parse_model_uri(uri)
    if parsed is None:
        if uri.startswith("models:/"):
            raise MMaDAError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
        if not (Path(uri) / "config.json").is_file():
            raise MMaDAError(f"{uri!r} is neither a registered version (models:/NAME@ALIAS) nor a checkpoint "
                             "directory (no config.json)")
        return Version(uri=uri)
    for v in versions:
        if v.name == parsed["name"] and (v.version == parsed.get("version") or parsed.get("alias") in v.aliases):
            return v
    what = f"alias @{parsed['alias']}" if "alias" in parsed else f"version {parsed.get('version')}"
    known = ", ".join(v.label for v in versions if v.name == parsed["name"]) or "none"
    raise MMaDAError(f"{uri}: the registry at {tracking_uri} has no {what} of {parsed['name']!r} "
                     f"(its versions: {known})")


def eval_metrics(tracking_uri: str, v: Version) -> dict[str, dict[str, float]]:
    """``{suite/protocol: {metric: value}}`` of the evaluation runs that named this version (latest run wins)."""
    if v.name is None:
        return {}
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(EVAL_EXPERIMENT)
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], f"tags.`mmada.model_version` = '{v.uri}'",
                              order_by=["attributes.start_time ASC"], max_results=200)
    out: dict[str, dict[str, float]] = {}
    for r in runs:
        key = f"{r.data.tags.get('mmada.eval.suite', '?')}/{r.data.tags.get('mmada.eval.protocol', '?')}"
        out[key] = dict(r.data.metrics)
    return out


def lineage(versions: list[Version], v: Version) -> list[Version]:
    """``v``, its parent, the parent's parent … (as far as the registry knows them)."""
    by_key = {f"{x.name}/{x.version}": x for x in versions}
    chain, seen = [v], {f"{v.name}/{v.version}"}
    while chain[-1].parent and chain[-1].parent in by_key and chain[-1].parent not in seen:
        seen.add(chain[-1].parent)
        chain.append(by_key[chain[-1].parent])
    return chain


def describe(tracking_uri: str, versions: list[Version], v: Version) -> str:
    """Markdown for the panel beside the picker: aliases, lineage, eval metrics, the MLflow run link."""
    if v.name is None:
        return f"**{v.uri}**: a checkpoint directory (not in the registry: no lineage or evaluations)."
    lines = [f"### {v.name} version {v.version}",
             f"- aliases: {', '.join('@' + a for a in v.aliases) or 'none'}",
             f"- stage: {v.stage or 'unknown'}"]
    chain = lineage(versions, v)
    lines.append("- lineage: " + " ← ".join(f"v{x.version}" + (f" ({x.stage})" if x.stage else "") for x in chain)
                 + (f" ← {chain[-1].parent} (not in the registry)" if chain[-1].parent and len(chain) == 1 else ""))
    for key in ("git_commit", "config_hash"):
        if key in v.tags:
            lines.append(f"- {key}: `{v.tags[key][:12]}`")
    if v.run_id and v.experiment_id:
        lines.append(f"- MLflow run: [{v.run_id[:8]}]({run_url(v.experiment_id, v.run_id)})")
    metrics = eval_metrics(tracking_uri, v)
    if metrics:
        lines += ["", "| evaluation | metric | value |", "|---|---|---|"]
        lines += [f"| {suite} | {k} | {val:.4g} |" for suite, ms in sorted(metrics.items()) for k, val in sorted(ms.items())]
    else:
        lines.append("- evaluations: none logged for this version")
    return "\n".join(lines)
