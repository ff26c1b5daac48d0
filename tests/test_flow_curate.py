"""The Prefect ``curate`` flow on a real (temporary) Prefect API: same bytes as the library, artifacts,
resume after a killed run without rebuilding finished shards, and Dask = default runner byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmada.cli import main
from mmada.data.curate import curate
from mmada.data.specs import load_spec

REPO = Path(__file__).resolve().parents[1]
ARITH = {"name": "fl", "kind": "reasoning", "sources": [{"type": "builtin", "uri": "builtin:arithmetic", "n": 400}],
         "filters": {"verify_answer": True, "near_dedup": True}, "split": {"val_fraction": 0.1},
         "shards": {"max_samples": 80}, "chunk_size": 150}
IMAGES = {"name": "img", "kind": "t2i", "chunk_size": 40, "shards": {"max_samples": 50},
          "sources": [{"type": "builtin", "uri": "builtin:shapes", "n": 90},
                      {"type": "builtin", "uri": "sklearn:digits", "n": 60}]}


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def task_states(flow_run_id, task_name: str) -> list[str]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with client() as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=task_name)))
    return sorted(r.state.name for r in runs)


def test_flow_equals_library_and_emits_artifacts(prefect_test_harness, tmp_path):
    # (no capsys here: Prefect's console log handler would keep the captured stream after the test)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(ARITH))  # JSON is YAML
    assert main(["curate", str(spec_file), "--out", str(tmp_path / "lib"), "--quiet"]) == 0
    assert main(["curate", str(spec_file), "--out", str(tmp_path / "flow"), "--prefect"]) == 0
    assert files(tmp_path / "lib") == files(tmp_path / "flow")
    assert not (tmp_path / "flow" / "_prefect").exists() and not (tmp_path / "flow" / "_work").exists()
    manifest = json.loads((tmp_path / "flow" / "manifest.json").read_text())

    with client() as c:
        table = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fl-manifest"])))[0]
        card = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fl-datacard"])))[0]
        prog = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["fl-progress"])))[0]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["shard"] for r in rows] == [s["name"] for s in manifest["shards"]]
    assert [r["sha256"] for r in rows] == [s["sha256"] for s in manifest["shards"]]
    assert card.data.startswith("# Data card: fl") and "| arithmetic | builtin | 400 |" in card.data
    assert "near_duplicate" in card.data or "duplicate" in card.data
    assert float(prog.data) == 100.0


CHILD = textwrap.dedent("""
    import os, signal, sys, json
    from prefect.task_runners import ThreadPoolTaskRunner
    import mmada.data.curate as C
    from flows.curate import curate_flow
    from mmada.data.specs import load_spec

    real = C.write_shard

    def crashing(uri, samples, **kw):
        if uri.endswith("-train-000002.tar"):
            def gen():
                for i, s in enumerate(samples):
                    if i == 5:
                        os.kill(os.getpid(), signal.SIGKILL)  # die mid-write: a .partial file stays behind
                    yield s
            return real(uri, gen(), **kw)
        return real(uri, samples, **kw)

    C.write_shard = crashing
    spec = load_spec(json.loads(sys.argv[1]))
    # one worker: tasks run in submission order, so shards 0 and 1 finish before shard 2 starts
    curate_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(spec=spec, out=sys.argv[2])
""")


def test_killed_run_resumes_without_rebuilding_finished_shards(prefect_test_harness, tmp_path):
    from flows.curate import curate_flow

    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_API_URL": prefect_test_harness, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(ARITH), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    names = sorted(p.name for p in out.iterdir())
    assert "manifest.json" not in names  # an unfinished output never looks complete
    assert {"fl-train-000000.tar", "fl-train-000001.tar"} <= set(names) and "fl-train-000002.tar" not in names
    assert any(n.startswith(".fl-train-000002.tar.") and n.endswith(".partial") for n in names)
    before = {n: (out / n).stat() for n in ("fl-train-000000.tar", "fl-train-000001.tar")}

    spec = load_spec(ARITH)
    state = curate_flow(spec=spec, out=str(out), return_state=True)
    assert state.is_completed()
    run_id = state.state_details.flow_run_id
    shard_states = task_states(run_id, "build-shard")
    n_shards = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert shard_states == ["Cached"] * 2 + ["Completed"] * (n_shards - 2)
    assert set(task_states(run_id, "curate-chunk")) == {"Cached"}
    for n, st in before.items():  # the finished shards were not rewritten
        assert (out / n).stat().st_ino == st.st_ino and (out / n).stat().st_mtime_ns == st.st_mtime_ns

    clean = tmp_path / "clean"
    curate(spec, out=str(clean))
    assert files(out) == files(clean)  # resumed result == clean run, and no .partial left
    assert not (out / "_prefect").exists() and not (out / "_work").exists()


def test_dask_runner_output_equals_default_runner_byte_for_byte(prefect_test_harness, tmp_path):
    from distributed import LocalCluster

    from flows.curate import run_curate

    spec = load_spec(IMAGES)
    m_default = run_curate(spec, str(tmp_path / "default"))
    # an existing cluster (the address path); `--dask` without an address starts one like it
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        m_dask = run_curate(spec, str(tmp_path / "dask"), runner="dask", dask_address=cluster.scheduler_address)
    assert m_dask == m_default and len(m_default.shards) >= 3
    assert files(tmp_path / "default") == files(tmp_path / "dask")
    assert {s.name: s.counts.read for s in m_dask.sources} == {"shapes": 90, "digits": 60}


def test_io_errors_are_retried_but_bad_data_is_not(prefect_test_harness, tmp_path, monkeypatch):
    import mmada.data.curate as C
    from flows.curate import curate_flow
    from mmada.data.errors import DataError

    real, calls = C.process_chunk, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("object store hiccup")
        return real(*args, **kw)

    monkeypatch.setattr(C, "process_chunk", flaky)
    small = {**ARITH, "sources": [{"type": "builtin", "uri": "builtin:arithmetic", "n": 40}], "chunk_size": 1000}
    state = curate_flow(spec=load_spec(small), out=str(tmp_path / "a"), return_state=True)
    assert state.is_completed() and len(calls) == 2

    def broken(*args, **kw):
        calls.append(1)
        raise DataError("source is not what the spec says")

    calls.clear()
    monkeypatch.setattr(C, "process_chunk", broken)
    state = curate_flow(spec=load_spec(small), out=str(tmp_path / "b"), return_state=True)
    assert state.is_failed() and len(calls) == 1
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_flow_writes_to_fsspec_urls(prefect_test_harness):
    import fsspec

    from flows.curate import run_curate
    from mmada.data.shards import ShardSet

    small = {**ARITH, "sources": [{"type": "builtin", "uri": "builtin:arithmetic", "n": 60}]}
    m = run_curate(load_spec(small), "memory://flow-out/arith")
    ss = ShardSet.open("memory://flow-out/arith")
    ss.verify()
    assert sum(1 for _ in ss.iter_samples()) == m.counts.kept
    fs = fsspec.filesystem("memory")
    assert not fs.exists("/flow-out/arith/_prefect") and not fs.exists("/flow-out/arith/_work")
    fs.rm("/flow-out", recursive=True)


def test_flow_parameters_render_as_a_ui_form():
    from prefect.utilities.callables import parameter_schema

    from flows.curate import curate_flow

    schema = parameter_schema(curate_flow.fn).model_dump()
    assert list(schema["properties"]) == ["spec", "out", "force", "keep_work", "overwrite"]
    defs = schema["definitions"]
    assert {"CurationSpec", "Gsm8kSource", "LlavaSource", "IdxSource", "BuiltinSource", "FilterSpec"} <= set(defs)
    assert defs["ShardSpec"]["properties"]["max_samples"]["minimum"] == 1


def test_unknown_runner_is_refused():
    from flows.curate import run_curate

    with pytest.raises(ValueError, match="runner"):
        run_curate(load_spec(ARITH), runner="ray")
