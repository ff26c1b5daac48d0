"""The model registry: export → registered version with an alias, and ``models:/`` → a local dir.

One registered model per MMaDA size (``mmada-tiny``, ``mmada-8b``); every finished stage adds a version
whose artifacts are an HF ``save_pretrained`` directory (safetensors + config + tokenizer files),
logged under the run as ``hf/``. The stage alias (``pretrain``, ``sft``, ``grpo``) moves to the
new version; lineage tags say where it came from (:mod:`mmada.tracking.lineage`). An image tokenizer
registered by its training run is a version of its own model whose artifacts are ``tokenizer/``.

    version = register_export(tracker, "runs/train/x/export", "mmada-tiny", alias="pretrain", tags=...)
    path, info = resolve_model("models:/mmada-tiny@pretrain", cache_dir="runs/train/y/init")
    model = MMaDAModelLM.from_pretrained(path)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmada.errors import ConfigError
from mmada.files import atomic_dir
from mmada.tracking import playground_url
from mmada.tracking.client import Tracker

EXPORT_ARTIFACT_PATH = "hf"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def register_export(tracker: Tracker, export_dir: str | Path, name: str, *, alias: str | None,
                    tags: dict[str, str] | None = None, artifact_path: str = EXPORT_ARTIFACT_PATH,
                    description: str | None = None, step: int | None = None) -> str | None:
    """Log ``export_dir`` as the run's ``artifact_path`` artifacts and register it; returns the version (or None).

    Idempotent per run: a run registers one version (per training ``step``, tagged ``global_step``, when
    given). When the tracker's run already has that version (a rerun of a finished run, or a crash
    between the registry row and the alias), it is returned, nothing is logged or registered again, and
    the alias is (re)set on it.
    """
    if not tracker.online:
        return None
    client = tracker.client
    key = {"global_step": str(step)} if step is not None else {}
    existing = run_version(tracker, name, key)
    if existing is not None:
        version = existing
    else:
        if not tracker.log_artifacts(export_dir, artifact_path):
            return None

        def ensure_model() -> None:
            try:
                client.get_registered_model(name)
            except MlflowException:
                try:
                    client.create_registered_model(name, description=description)
                except MlflowException:  # registered concurrently
                    client.get_registered_model(name)

        ok, _ = tracker.try_call(f"create registered model {name!r}", ensure_model)
        if not ok:
            return None
        mv = tracker.call("create_model_version", client.create_model_version, name,
                          f"runs:/{tracker.run_id}/{artifact_path}", run_id=tracker.run_id,
                          tags={k: str(v) for k, v in {**(tags or {}), **key}.items()})
        if mv is None:
            return None
        version = str(mv.version)
        tracker.call("describe the version", client.update_model_version, name, version,
                     description=f"Try it in the playground: {playground_url(f'models:/{name}/{version}')}")
    if alias:
        tracker.call(f"set alias {alias!r}", client.set_registered_model_alias, name, alias, version)
    tracker.set_tags({"registered_model": f"{name}/{version}"})
    return version


def run_version(tracker: Tracker, name: str, tags: dict[str, str] | None = None) -> str | None:
    """The newest version of ``name`` registered from the tracker's run (with these tags), or None."""
    if "'" in name or any("'" in k + v or "`" in k for k, v in (tags or {}).items()):
        return None  # not expressible in a registry filter; such names are never matched
    where = " and ".join([f"name = '{name}'", f"run_id = '{tracker.run_id}'",
                          *(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())])
    found = tracker.call("search_model_versions", tracker.client.search_model_versions, where)
    return str(max(int(v.version) for v in found)) if found else None


def parse_model_uri(uri: str) -> dict[str, str] | None:
    m = _MODEL_URI.match(uri)
    return {k: v for k, v in m.groupdict().items() if v is not None} if m else None


def resolve_model(uri: str, *, tracking_uri: str, cache_dir: str | Path,
                  field: str = "model.init") -> tuple[Path, dict[str, Any] | None]:
    """A model directory named by ``uri`` → (local directory, registry version info or None).

    ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (a registered version) is downloaded once into
    ``cache_dir/NAME-vVERSION``, ``runs:/RUN_ID/PATH`` (a run's artifact folder) into
    ``cache_dir/run-RUN_ID-PATH`` (temp dir + rename, so concurrent ranks never see half a
    download); a local directory is returned as it is.
    """
    parsed = parse_model_uri(uri)
    if parsed is None and not uri.startswith("runs:/"):
        if uri.startswith("models:/"):
            raise ConfigError(f"{field}: {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
        path = Path(uri)
        if not (path / "config.json").is_file():
            raise ConfigError(f"{field}: {uri!r} is not a checkpoint directory (no config.json)")
        return path, None

    client = MlflowClient(tracking_uri)
    if parsed is None:  # runs:/RUN_ID/PATH
        run_id, _, path = uri[len("runs:/"):].partition("/")
        if not run_id or not path.strip("/"):
            raise ConfigError(f"{field}: {uri!r} is not runs:/RUN_ID/PATH")
        info, source = None, uri
        target = Path(cache_dir) / f"run-{run_id}-{path.strip('/').replace('/', '-')}"
    else:
        name = parsed["name"]
        try:
            if "alias" in parsed:
                mv = client.get_model_version_by_alias(name, parsed["alias"])
            else:
                mv = client.get_model_version(name, parsed["version"])
        except MlflowException as exc:
            raise ConfigError(f"{field}: cannot resolve {uri!r} in the registry at {tracking_uri}: {exc.message}") from None
        info = {"name": name, "version": str(mv.version), "run_id": mv.run_id, "source": mv.source,
                "alias": parsed.get("alias")}
        source = mv.source
        target = Path(cache_dir) / f"{name}-v{mv.version}"
    if (target / "config.json").is_file():
        return target, info
    with atomic_dir(target, replace=False) as tmp:  # another rank may finish first: keep its copy
        # Download through the version's own source: `models:/` URIs would be resolved against the
        # process-wide registry URI, not `tracking_uri`.
        try:
            if source.startswith("runs:/"):
                run_id, _, path = source[len("runs:/"):].partition("/")
                local = Path(client.download_artifacts(run_id, path, str(tmp)))
            else:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp),
                                                                 tracking_uri=tracking_uri))
        except MlflowException as exc:
            raise ConfigError(f"{field}: cannot download {uri!r} from {tracking_uri}: {exc.message}") from None
        if not (local / "config.json").is_file():
            raise ConfigError(f"{field}: {uri!r} ({source}) holds no config.json: not a model export")
        if local != tmp:  # the artifact folder's files become the cache entry itself
            for f in list(local.iterdir()):
                f.rename(tmp / f.name)
            local.rmdir()
    return target, info
