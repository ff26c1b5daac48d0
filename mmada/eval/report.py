"""Evaluation reports that always say *how* a number was produced.

Protocol mismatches are the most common reason reproduced numbers disagree, so an
:class:`EvalReport` cannot be built without its protocol, dataset, sample count, few-shot count,
model reference and where the outputs came from; it carries the sampler settings
(:mod:`mmada.diffusion.settings`) exactly as the outputs were generated with (``null`` when nothing
was generated). It prints as a table, saves as JSON (DVC reads ``metrics`` from it), and logs to
MLflow with its images.

    report = EvalReport(suite="math", protocol="gsm8k_flexible", dataset="builtin:arithmetic", n=200,
                        model=ModelRef.from_path("runs/ckpt"), sampler=SamplerSettings(steps=64, …),
                        metrics={"accuracy": 0.41})
    print(report.table()); report.write_json("eval/math.json")
    log_report(report, tracking_uri, images={"grid": grid_png})
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from PIL import Image
from pydantic import Field

from mmada.config import Strict
from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.files import save_png, write_json
from mmada.tracking.client import ensure_experiment

FULL_HASH_LIMIT = 2 * 1024**3  # hash weight contents up to 2 GiB; larger → header/size fingerprint


class ModelRef(Strict):
    """Which model produced the outputs."""

    path: str | None = None
    version: str | None = None
    """A registry version (``models:/name/3``), a user label, or a content fingerprint of the weights."""
    name: str | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike | None, version: str | None = None, name: str | None = None) -> ModelRef:
        if path is None:
            return cls(path=None, version=version, name=name)
        return cls(path=str(path), version=version or weights_fingerprint(path), name=name)


def weights_fingerprint(path: str | os.PathLike) -> str | None:
    """``sha256:<12 hex>`` of a checkpoint's safetensors files (contents up to 2 GiB, else their
    headers and sizes, prefixed ``meta:``); None if the directory has no safetensors."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else ([p] if p.suffix == ".safetensors" else [])
    if not files:
        return None
    h = hashlib.sha256()
    full = sum(f.stat().st_size for f in files) <= FULL_HASH_LIMIT
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            if full:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                n = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(n, 1 << 24)))
                h.update(str(f.stat().st_size).encode())
    return ("sha256:" if full else "meta:") + h.hexdigest()[:12]


class EvalReport(Strict):
    """One evaluation result with everything needed to interpret and reproduce it."""

    suite: str
    """What was evaluated: ``math``, ``mmu``, ``pope``, ``t2i_shapes``, ``t2i_class``, ``clip``, …"""
    protocol: str
    """Named protocol: answer extraction (``gsm8k_flexible``…), ``pope_llava``, ``geneval_shapes``, …"""
    dataset: str
    n: int = Field(ge=0)
    num_fewshot: int = Field(default=0, ge=0)
    model: ModelRef
    source: Literal["model", "predictions_file", "ground_truth"] = "model"
    """``model``: generated in this run; ``predictions_file``: scored from given outputs; ``ground_truth``:
    no generation at all (e.g. tokenizer reconstructions)."""
    sampler: SamplerSettings | ImageSamplerSettings | None = None
    """The sampler settings the outputs were generated with, whole (for a predictions file: as stated by
    the user; None: not applicable or unknown)."""
    metrics: dict[str, float]
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    mmada_version: str = Field(default_factory=lambda: _package_version())

    def table(self) -> str:
        """A two-column text table: the settings, then the metrics."""
        rows: list[tuple[str, str]] = [
            ("suite", self.suite), ("protocol", self.protocol), ("dataset", self.dataset), ("n", str(self.n)),
            ("few-shot", str(self.num_fewshot)), ("model", str(self.model.path)), ("version", str(self.model.version)),
            ("outputs from", self.source),
        ]
        rows += [(k, _fmt(v)) for k, v in self.sampler_record().items()]
        rows.append(("", ""))
        rows += [(k, _fmt(v)) for k, v in self.metrics.items()]
        w = max(len(k) for k, _ in rows)
        line = "-" * (w + 3 + max(len(v) for _, v in rows))
        body = "\n".join(f"{k:<{w}} | {v}" if k else line for k, v in rows)
        return f"{line}\n{body}\n{line}"

    def sampler_record(self) -> dict[str, Any]:
        """``{"sampler.steps": 64, …}`` (``{"sampler": None}`` when there are no settings)."""
        return self.sampler.record() if self.sampler is not None else {"sampler": None}

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_json(path, self.model_dump(mode="json"))


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _package_version() -> str:
    try:
        return version("mmada")
    except Exception:  # running from a source tree without installed metadata
        return "unknown"


def flatten_metrics(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numeric dicts → ``{"a/b": x}`` (non-numeric leaves dropped; bools → 0/1)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out |= flatten_metrics(v, key + "/")
        elif isinstance(v, bool | int | float) and not (isinstance(v, float) and not math.isfinite(v)):
            out[key] = float(v)
    return out


# ---------------------------------------------------------------------------------------------
# MLflow


def _same_run(client: MlflowClient, exp_id: str, name: str, key: Mapping[str, str]) -> str | None:
    """The newest run of ``exp_id`` named ``name`` whose tags include ``key``, or None."""
    if any("'" in k + v or "`" in k for k, v in key.items()) or "'" in name:
        return None  # not expressible in a filter: never matched
    where = " and ".join([f"attributes.run_name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in key.items())])
    found = client.search_runs([exp_id], where, order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def log_report(
    report: EvalReport,
    tracking_uri: str,
    *,
    experiment: str = "mmada-eval",
    run_name: str | None = None,
    images: Mapping[str, Image.Image] | None = None,
    extra_artifacts: Sequence[str | os.PathLike] = (),
    parent_run_id: str | None = None,
    run_key: Mapping[str, str] | None = None,
) -> str:
    """Log a report as one MLflow run: params (settings), metrics, tags and artifacts; returns the run id.

    Params: protocol, dataset, n, num_fewshot, model path/version and every sampler field. Tags
    ``mmada.eval.suite`` and ``mmada.model_version`` let the registry compare versions. Artifacts:
    ``report.json`` and ``images/<name>.png``.

    ``run_key``: tags that identify this evaluation (set on the run); a run of the same name that has
    them already (one an interrupted attempt left) is logged into again, so a rerun adds no second run.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    tags = {
        "mmada.eval.suite": report.suite,
        "mmada.eval.protocol": report.protocol,
        "mmada.model_path": str(report.model.path),
        "mmada.model_version": str(report.model.version),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags |= dict(run_key or {})
    name = run_name or f"eval-{report.suite}-{report.protocol}"
    rid = _same_run(client, exp_id, name, run_key) if run_key else None
    if rid is None:
        rid = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    else:
        client.update_run(rid, status="RUNNING")
    try:
        params = {
            "suite": report.suite, "protocol": report.protocol, "dataset": report.dataset, "n": report.n,
            "num_fewshot": report.num_fewshot, "model.path": report.model.path, "model.version": report.model.version,
            "source": report.source,
        } | report.sampler_record()
        ts = int(_dt.datetime.now().timestamp() * 1000)
        client.log_batch(
            rid,
            metrics=[Metric(k, float(v), ts, 0) for k, v in report.metrics.items()],
            params=[Param(k, ("null" if v is None else str(v))[:500]) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        with tempfile.TemporaryDirectory() as tmp:
            report.write_json(Path(tmp) / "report.json")
            client.log_artifact(rid, str(Path(tmp) / "report.json"))
            for name, im in (images or {}).items():
                f = save_png(Path(tmp) / "images" / f"{name}.png", im)
                client.log_artifact(rid, str(f), artifact_path="images")
        for a in extra_artifacts:
            client.log_artifact(rid, str(a))
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
