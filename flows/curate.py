"""Prefect flow ``curate``: a data spec in, verified WebDataset shards + manifest out.

The flow is thin orchestration over :mod:`mmada.data.curate` (the same stage functions the CLI
runs in-process): one task per source (fingerprint + chunk plan), per chunk (read, normalise,
filter), one for dedup/split/shard planning, one per shard, one to finalize. Tasks pass small
plain results (paths, counts, hashes) — never samples.

Caching: every chunk/shard task is keyed by content (spec hash + source fingerprints + code
version + tokenizer + the chunk/shard id) with JSON results persisted under ``<out>/_prefect``,
so a re-run after a crash skips finished chunks and shards (cached shards are re-verified against
their sha256). Both ``_work`` and ``_prefect`` are removed when the manifest is written; a later
run of the same content finds the complete manifest and returns at once.

Artifacts: a progress bar while it runs, the shard manifest as a table and the data card as
markdown. The same flow runs on the default thread runner or on Dask with identical bytes:

    mmada curate data_specs/arithmetic.yaml --prefect --out runs/data/arithmetic [--dask [ADDRESS]]
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import PrefectFuture

from mmada.data import curate as C
from mmada.data import io as dio
from mmada.data.errors import MMaDAError, ShardError
from mmada.data.output import claim_output, disk_errors, output_lock
from mmada.data.shards import Manifest, ShardInfo, verify_shard
from mmada.data.specs import CurationSpec

PREFECT_DIR = "_prefect"
IO_RETRIES = 2


def _content_key(_ctx: Any, params: dict[str, Any]) -> str:
    return params["content_key"]


def _retry_on_io(_task: Any, _run: Any, state: Any) -> bool:
    """Retry transient I/O errors (network, object store), not bad data or a bad spec."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError)) and not isinstance(exc, MMaDAError)


_CACHED = {"cache_key_fn": _content_key, "persist_result": True, "result_serializer": "json"}


@task(name="plan-source", retries=IO_RETRIES, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_on_io)
def plan_source_task(spec: CurationSpec, index: int) -> dict[str, Any]:
    return C.plan_source(spec, index).model_dump()


@task(name="curate-chunk", retries=IO_RETRIES, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_on_io, **_CACHED)
def chunk_task(spec: CurationSpec, plan: C.CurationPlan, source_index: int, chunk: dict[str, Any],
               content_key: str) -> dict[str, Any]:
    return C.process_chunk(spec, plan, source_index, chunk)


@task(name="plan-shards", retries=IO_RETRIES, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_on_io, **_CACHED)
def plan_shards_task(spec: CurationSpec, plan: C.CurationPlan, chunk_results: list[dict[str, Any]],
                     content_key: str) -> dict[str, Any]:
    return C.plan_shards(spec, plan, chunk_results)


@task(name="build-shard", retries=IO_RETRIES, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_on_io, **_CACHED)
def shard_task(spec: CurationSpec, plan: C.CurationPlan, plan_uri: str, index: int, content_key: str) -> dict[str, Any]:
    return C.build_shard(spec, plan, plan_uri, index)


@task(name="finalize", retries=IO_RETRIES, retry_delay_seconds=[1, 5], retry_condition_fn=_retry_on_io)
def finalize_task(spec: CurationSpec, plan: C.CurationPlan, chunk_results: list[dict[str, Any]],
                  shard_plan: dict[str, Any], shard_infos: list[dict[str, Any]], keep_work: bool) -> dict[str, Any]:
    return C.finalize(spec, plan, chunk_results, shard_plan, shard_infos, keep_work=keep_work).model_dump(mode="json")


# ------------------------------------------------------------------------------------------------


def result_storage(output: str) -> Any:
    """Where task results (cache records) persist: ``<out>/_prefect`` (a saved block for remote URLs)."""
    uri = dio.join(output, PREFECT_DIR)
    if dio.is_local(uri):
        _, path = dio.fs_and_path(uri)
        return Path(path)
    from prefect.filesystems import RemoteFileSystem

    block = RemoteFileSystem(basepath=uri)
    block.save(f"mmada-curate-{hashlib.sha256(uri.encode()).hexdigest()[:16]}", overwrite=True)
    return block


def artifact_key(name: str, what: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{name}-{what}".lower())


def _is_cached(fut: PrefectFuture) -> bool:
    return fut.state.name == "Cached"


def emit_artifacts(manifest: Manifest, output: str) -> None:
    rows = [{"shard": s.name, "split": s.split, "samples": s.count, "bytes": s.bytes, "sha256": s.sha256}
            for s in manifest.shards]
    create_table_artifact(rows, key=artifact_key(manifest.name, "manifest"),
                          description=f"Shards of {manifest.name} at {output} (spec {manifest.spec_hash[:12]})")
    card = dio.read_bytes(dio.join(output, manifest.datacard)).decode("utf-8")
    create_markdown_artifact(card, key=artifact_key(manifest.name, "datacard"),
                             description=f"Data card of {manifest.name}")


@flow(name="curate", log_prints=True, persist_result=False)
def curate_flow(spec: CurationSpec, out: str | None = None, force: bool = False, keep_work: bool = False,
                overwrite: bool = False) -> dict[str, Any]:
    """Curate ``spec`` into WebDataset shards + manifest.json at ``out`` (default: ``spec.output``).

    Args:
        spec: the data spec (the Prefect UI renders it as a form).
        out: output URI overriding ``spec.output``.
        force: rebuild even if a complete output of the same content exists (ignores caches).
        keep_work: keep the ``_work`` intermediates (for debugging).
        overwrite: replace another dataset's output at ``out`` (refused otherwise).
    """
    log = get_run_logger()
    source_plans = [f.result() for f in [plan_source_task.submit(spec, i) for i in range(len(spec.sources))]]
    plan = C.make_plan(spec, [C.SourcePlan.model_validate(p) for p in source_plans], out)
    log.info("curating %s (spec %s) into %s", spec.name, plan.spec_hash[:12], plan.output)
    with output_lock(plan.output):  # one curation per output at a time
        return _curate_locked(spec, plan, force=force, keep_work=keep_work, overwrite=overwrite)


def _curate_locked(spec: CurationSpec, plan: C.CurationPlan, *, force: bool, keep_work: bool,
                   overwrite: bool) -> dict[str, Any]:
    log = get_run_logger()
    if not force and (done := C.existing_output(spec, plan)) is not None:
        log.info("%s already holds this exact content (manifest verified); nothing to do", plan.output)
        emit_artifacts(done, plan.output)
        return done.model_dump(mode="json")
    with disk_errors(plan.output):
        claim_output(spec.name, plan.output, overwrite=overwrite)

    storage = result_storage(plan.output)
    progress = create_progress_artifact(progress=0.0, key=artifact_key(spec.name, "progress"),
                                        description=f"curating {spec.name}")

    def opts(t: Any, refresh: bool) -> Any:
        return t.with_options(result_storage=storage, refresh_cache=True if (force or refresh) else None)

    # chunks -------------------------------------------------------------------------------------
    chunk_ids = plan.chunk_ids()
    chunk_futs = []
    for si, c in chunk_ids:
        paths = C.chunk_paths(plan, spec.sources[si].name, c["index"])
        missing = not all(dio.exists(paths[k]) for k in ("tar", "meta", "rejects"))
        chunk_futs.append(opts(chunk_task, missing).submit(
            spec, plan, si, c, content_key=plan.content_key("chunk", si, c["index"])))
    chunk_results = []
    for k, f in enumerate(chunk_futs):  # progress: chunks 0-50 %, shards 50-95 %, manifest 100 %
        chunk_results.append(f.result())
        update_progress_artifact(progress, progress=50.0 * (k + 1) / len(chunk_futs))
    n_cached = sum(_is_cached(f) for f in chunk_futs)
    log.info("%d chunks curated (%d from cache)", len(chunk_futs), n_cached)

    # dedup / split / shard plan -------------------------------------------------------------------
    plan_missing = not (dio.exists(dio.join(plan.work, "plan.json")) and dio.exists(dio.join(plan.work, "dedup.jsonl")))
    sp = opts(plan_shards_task, plan_missing).submit(
        spec, plan, chunk_results, content_key=plan.content_key("shard-plan")).result()

    # shards ---------------------------------------------------------------------------------------
    def submit_shard(i: int, refresh: bool) -> PrefectFuture:
        name = sp["shards"][i]["name"]
        missing = not dio.exists(dio.join(plan.output, name))
        return opts(shard_task, refresh or missing).submit(
            spec, plan, sp["plan"], i, content_key=plan.content_key("shard", i, name))

    shard_futs = [submit_shard(i, False) for i in range(len(sp["shards"]))]
    infos: list[dict[str, Any]] = []
    n_shards = max(1, len(shard_futs))
    rebuilt, reused = 0, 0
    for i, f in enumerate(shard_futs):
        info = f.result()
        if _is_cached(f):
            try:  # a cached shard must still be the bytes it was: re-verify before trusting it
                verify_shard(plan.output, ShardInfo.model_validate(info))
                reused += 1
            except ShardError as exc:
                log.warning("cached shard %s failed verification (%s); rebuilding", info["name"], exc)
                info = submit_shard(i, True).result()
                rebuilt += 1
        else:
            rebuilt += 1
        infos.append(info)
        update_progress_artifact(progress, progress=50.0 + 45.0 * (i + 1) / n_shards)
    log.info("%d shards: %d built, %d reused from a previous run", len(infos), rebuilt, reused)

    manifest = Manifest.model_validate(finalize_task.submit(spec, plan, chunk_results, sp, infos, keep_work).result())
    update_progress_artifact(progress, progress=100.0)
    emit_artifacts(manifest, plan.output)
    if not keep_work:
        dio.remove_tree(dio.join(plan.output, PREFECT_DIR))
    log.info("done: %d read = %d kept + %d rejected", manifest.counts.read, manifest.counts.kept,
             manifest.counts.rejected)
    return manifest.model_dump(mode="json")


def dask_runner(address: str | None = None, n_workers: int = 2):
    """A DaskTaskRunner: the scheduler at ``address``, or a local cluster of ``n_workers`` processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


def run_curate(spec: CurationSpec, out: str | None = None, *, force: bool = False, keep_work: bool = False,
               overwrite: bool = False, runner: str = "default", dask_address: str | None = None,
               n_workers: int = 2) -> Manifest:
    """Run :func:`curate_flow` on the default runner or on Dask (``runner="dask"``)."""
    fl = curate_flow
    if runner == "dask":
        fl = curate_flow.with_options(task_runner=dask_runner(dask_address, n_workers))
    elif runner != "default":
        raise ValueError(f"runner must be 'default' or 'dask', got {runner!r}")
    return Manifest.model_validate(fl(spec=spec, out=out, force=force, keep_work=keep_work, overwrite=overwrite))

