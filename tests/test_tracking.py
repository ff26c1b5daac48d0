"""MLflow tracking: retried/reported calls, the async Lightning logger, the registry round trip, and a
training run that survives an unreachable tracking server. Real SQLite stores in temp dirs."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch

from mmada.errors import ConfigError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer
from mmada.tracking import artifact_root_for, default_tracking_uri
from mmada.tracking.client import Tracker, replay_fallback
from mmada.tracking.logger import TrackerLogger
from mmada.tracking.registry import parse_model_uri, register_export, resolve_model
from tests.test_training_support import (
    TINY_OVERRIDES,
    curated_data,
    fresh_mlflow_uri,
    one_thread,
    tiny_config,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture
def http_env(monkeypatch):
    """The short MLflow HTTP retry settings a Tracker sets for http URIs, undone after the test."""
    from mmada.tracking.client import _HTTP_DEFAULTS

    for k, v in _HTTP_DEFAULTS.items():
        monkeypatch.setenv(k, os.environ.get(k, v))


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here once the socket is closed


def test_default_uri_is_sqlite_in_runs(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = default_tracking_uri()
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert artifact_root_for(uri) == (tmp_path / "runs" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert default_tracking_uri() == "http://mlflow:5000" and artifact_root_for("http://mlflow:5000") is None


def test_retries_then_reports_without_raising(tmp_path):
    t = Tracker("sqlite:///unused.db", max_retries=2, backoff=0.001, fallback_path=tmp_path / "failed.jsonl")
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionError("server restarting")
        return x * 2

    assert t.call("flaky", flaky, 21) == 42 and len(calls) == 3 and t.failures == 0

    def down():
        raise ConnectionError("connection refused")

    assert t.try_call("down", down) == (False, None)
    assert t.failures == 1
    rec = json.loads((tmp_path / "failed.jsonl").read_text().splitlines()[0])
    assert rec["call"] == "down" and "connection refused" in rec["error"]

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    bad = []

    def invalid():
        bad.append(1)
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

    t.call("invalid", invalid)
    assert bad == [1]  # a permanent error is reported at once, not retried


def test_unreachable_server_never_blocks_or_raises(tmp_path, http_env):
    t = Tracker(closed_port_uri(), max_retries=1, backoff=0.01, fallback_path=tmp_path / "failed.jsonl")
    t0 = time.time()
    assert t.start_run("mmada-test") is None and not t.online
    for step in range(5):
        t.log_metrics({"train/loss": 5.0 - step}, step=step)  # queued: returns at once
    t.close("FINISHED")
    assert time.time() - t0 < 60
    lines = [json.loads(x) for x in (tmp_path / "failed.jsonl").read_text().splitlines()]
    kept = [x for x in lines if "metrics" in x]
    assert [x["step"] for x in kept] == [0, 1, 2, 3, 4] and kept[-1]["metrics"] == {"train/loss": 1.0}


def test_logger_sends_in_background_and_fallback_replays(tmp_path_factory, tmp_path):
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    t = Tracker(uri, fallback_path=tmp_path / "failed.jsonl")
    run_id = t.start_run("mmada-test", run_name="logger", artifact_location=artifact_root_for(uri))
    logger = TrackerLogger(t, "mmada-test")
    assert logger.version == run_id
    for step in range(4):
        logger.log_metrics({"train/loss": 4.0 - step, "train/lr": 0.1}, step=step)
    assert t.flush(30)
    hist = t.client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(0, 4.0), (1, 3.0), (2, 2.0), (3, 1.0)]
    t.log_params({"a": "1"})
    t.log_params({"a": "2", "b": "3"})  # a re-attached run may not change params: kept as tags
    run = t.client.get_run(run_id)
    assert run.data.params == {"a": "1", "b": "3"} and run.data.tags["resumed.a"] == "2"
    t.close()
    assert t.client.get_run(run_id).info.status == "FINISHED"
    offline = tmp_path / "offline.jsonl"
    offline.write_text(json.dumps({"time": 1.0, "call": "log_batch(metrics)", "run_id": run_id,
                                   "metrics": {"late": 7.0}, "step": 9}) + "\n")
    assert replay_fallback(offline, uri) == 1
    assert [(m.step, m.value) for m in t.client.get_metric_history(run_id, "late")] == [(9, 7.0)]


def test_register_and_resolve_round_trip(tmp_path_factory, tmp_path):
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    cfg = MMaDAConfig.from_preset("tiny", **TINY_OVERRIDES)
    torch.manual_seed(0)
    model = MMaDAModelLM(cfg)
    export = tmp_path / "export"
    model.save_pretrained(export)
    load_text_tokenizer("builtin").save_pretrained(str(export))
    t = Tracker(uri)
    t.start_run("mmada-test", artifact_location=artifact_root_for(uri))
    v1 = register_export(t, export, "mmada-test", alias="pretrain", tags={"stage": "pretrain", "git_commit": "abc"},
                         step=10)
    v2 = register_export(t, export, "mmada-test", alias="sft", tags={"stage": "sft"}, step=20)
    assert (v1, v2) == ("1", "2")
    # once per run and step: the same export again is the same version (its alias set again)
    assert register_export(t, export, "mmada-test", alias="pretrain", tags={"stage": "pretrain"}, step=10) == "1"
    mv = t.client.get_model_version_by_alias("mmada-test", "pretrain")
    assert str(mv.version) == "1" and mv.tags["git_commit"] == "abc" and mv.run_id == t.run_id
    path, info = resolve_model("models:/mmada-test@pretrain", tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert info["version"] == "1" and info["name"] == "mmada-test" and path.name == "mmada-test-v1"
    loaded = MMaDAModelLM.from_pretrained(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert (path / "tokenizer.json").is_file()
    again, info2 = resolve_model("models:/mmada-test/2", tracking_uri=uri, cache_dir=tmp_path / "cache")
    assert info2["version"] == "2" and again.name == "mmada-test-v2"
    assert parse_model_uri("models:/a@b") == {"name": "a", "alias": "b"}
    with pytest.raises(ConfigError, match=r"model\.init: cannot resolve 'models:/mmada-test@grpo'"):
        resolve_model("models:/mmada-test@grpo", tracking_uri=uri, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        resolve_model(str(tmp_path), tracking_uri=uri, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="models:/NAME@ALIAS"):
        resolve_model("models:/a/b/c", tracking_uri=uri, cache_dir=tmp_path / "cache")


def test_training_survives_a_dead_tracking_server(tmp_path_factory, tmp_path, http_env):
    """Server down for the whole run: training finishes, the export exists, the losses are kept on disk."""
    from mmada.training import load_train_config, train

    data = curated_data(tmp_path_factory)
    cfg = load_train_config(tiny_config(data, tmp_path / "dead", closed_port_uri(), steps=4,
                                        tracking={"max_retries": 0}, checkpoint={"every_n_steps": 2}))
    result = train(cfg)
    assert result.global_step == 4 and result.run_id is None and result.model_version is None
    assert (result.export_dir / "model.safetensors").is_file()
    lines = [json.loads(x) for x in (Path(cfg.out_dir) / "mlflow_failed.jsonl").read_text().splitlines()]
    steps = sorted(x["step"] for x in lines if "train/loss" in x.get("metrics", {}))
    assert steps == [0, 1, 2, 3]
