"""`mmada serve` for real: a Prefect server, the served deployments and the MLflow UI on 127.0.0.1.

Started once for this module in the tiny project clone (after its pipeline ran), with a fake
``sbatch``/``srun`` first on PATH. Deployments are triggered through the API exactly as the UI's
Run button does (``create_flow_run_from_deployment`` with parameters); a headless Chromium checks
the two UIs and saves screenshots under ``runs/test-artifacts/``; Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mmada.pipeline.params import load_params, params_dict
from tests.test_pipeline_support import REPO, env_for
from tests.test_training_support import free_port

ARTIFACTS = REPO / "runs" / "test-artifacts"




@pytest.fixture(scope="module")
def served(tiny_project, fake_slurm):
    clone, _ = tiny_project
    pp, mp, gp = free_port(), free_port(), free_port()
    env = env_for(clone, PATH=f"{fake_slurm}:{Path(sys.executable).parent}:/usr/bin:/bin")
    log = clone / "serve-test.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mmada", "serve", "--prefect-port", str(pp), "--mlflow-port",
                                 str(mp), "--playground-port", str(gp)], cwd=clone, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 420
    while "mmada serve: ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mmada serve did not start:\n{log.read_text()[-5000:]}")
        time.sleep(1)
    info = {"proc": proc, "clone": clone, "api": f"http://127.0.0.1:{pp}/api", "ui": f"http://127.0.0.1:{pp}",
            "mlflow": f"http://127.0.0.1:{mp}", "log": log, "slurm": fake_slurm}
    yield info
    if proc.poll() is None:  # a test failed before the Ctrl-C test: stop everything the same way
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prefect(served):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Client:
        def __enter__(self):
            self._settings = temporary_settings(updates={PREFECT_API_URL: served["api"]})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            self._client.__exit__(*exc)
            self._settings.__exit__(*exc)

    return _Client()


def run_deployment(served, name: str, parameters: dict, timeout: float = 400):
    """Create a flow run from a deployment (the UI's Run → Custom run) and wait for a final state."""
    with prefect(served) as c:
        dep = c.read_deployment_by_name(name)
        fr = c.create_flow_run_from_deployment(dep.id, parameters=parameters)
        deadline = time.monotonic() + timeout
        while not fr.state.is_final():
            assert time.monotonic() < deadline, f"{name} did not finish:\n{served['log'].read_text()[-3000:]}"
            time.sleep(2)
            fr = c.read_flow_run(fr.id)
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        arts = c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[fr.id])))
    return fr, {a.key: a for a in arts if a.key}, tasks


def params(served) -> dict:
    """The resolved configs of the clone's params.yaml: what the run forms start from."""
    return params_dict(load_params(served["clone"] / "params.yaml", served["clone"]))


def get_json(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


# ------------------------------------------------------------------------------------------------


def test_every_deployment_is_served(served):
    from flows.serve import deployment_names

    with prefect(served) as c:
        deps = c.read_deployments()
        flows = {f.id: f.name for f in c.read_flows()}
    names = {f"{flows[d.flow_id]}/{d.name}" for d in deps}
    assert names == set(deployment_names(str(served["clone"] / "params.yaml")))
    assert {"pipeline/tiny", "train/pretrain", "train/sft", "evaluate/tiny", "curate/arithmetic"} <= names
    sft = next(d for d in deps if flows[d.flow_id] == "train" and d.name == "sft")
    schema = sft.parameter_openapi_schema
    assert {"config", "launch"} <= set(schema["properties"])
    # the form carries the configs' bounds and choices
    assert schema["definitions"]["OptimSpec"]["properties"]["lr"]["exclusiveMinimum"] == 0
    assert schema["definitions"]["LaunchSpec"]["properties"]["kind"]["enum"] == ["local", "torchrun", "sbatch"]


def test_run_button_trains_through_sbatch(served):
    cfg = params(served)["sft"]
    cfg["trainer"]["max_steps"] = 2
    launch = {"kind": "sbatch", "partition": "debug", "poll_seconds": 1}
    fr, arts, tasks = run_deployment(served, "train/sft", {"config": cfg, "launch": launch})
    assert fr.state.is_completed(), f"{fr.state.message}\n{served['log'].read_text()[-3000:]}"
    assert arts["sft-progress"].data == 100
    link = arts["sft-mlflow-run"].data
    assert f"{served['mlflow']}/#/experiments/" in link and "/runs/" in link  # MMADA_MLFLOW_UI from mmada serve
    assert "mmada-tiny version" in arts["sft-summary"].data and "@sft" in arts["sft-summary"].data
    assert [t.name for t in tasks if t.name.startswith("launch-training")]
    calls = (served["slurm"] / "calls.log").read_text()
    assert "--parsable --wait" in calls and "-m mmada train" in calls
    out = next((served["clone"] / "runs" / "flows").glob(f"*-{str(fr.id)[:8]}"))
    ref = json.loads((out / "models" / "sft.json").read_text())
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{served['clone'] / 'runs' / 'mlflow.db'}")
    mv = c.get_model_version_by_alias("mmada-tiny", "sft")
    assert str(mv.version) == ref["version"] and mv.tags["prefect.flow_run_id"] == str(fr.id)
    assert (out / "work" / "sft").is_dir() and list((out / "work" / "sft").glob("*/mmada-sft.sbatch"))


def test_invalid_parameters_are_rejected_naming_the_field(served):
    from prefect.exceptions import PrefectHTTPStatusError

    cfg = params(served)["sft"]
    bad = json.loads(json.dumps(cfg))
    bad["optim"]["lr"] = -1
    with prefect(served) as c:
        dep = c.read_deployment_by_name("train/sft")
        with pytest.raises(PrefectHTTPStatusError) as e:
            c.create_flow_run_from_deployment(dep.id, parameters={"config": bad})
        assert "config.optim.lr" in str(e.value) and "minimum of 0" in str(e.value)
        with pytest.raises(PrefectHTTPStatusError) as e:
            c.create_flow_run_from_deployment(dep.id, parameters={"config": cfg, "launch": {"kind": "slurm"}})
        assert "launch.kind" in str(e.value)
    # rules beyond the JSON schema (model validators) fail the run before anything starts, naming the field
    both = json.loads(json.dumps(cfg))
    both["model"]["preset"] = "tiny"
    fr, _, tasks = run_deployment(served, "train/sft", {"config": both})
    assert fr.state.is_failed() and "set exactly one of model.preset" in fr.state.message
    assert not tasks


def test_pipeline_and_evaluate_deployments(served):
    fr, arts, tasks = run_deployment(served, "pipeline/tiny", {"params": params(served),
                                                               "stages": ["tokenizer", "curate-digits"]})
    assert fr.state.is_completed(), fr.state.message
    assert arts["tokenizer-progress"].data == 100 and arts["pipeline-progress"].data == 100
    # the stage subprocesses' typed events became artifacts: progress, the shard table
    assert arts["curate-digits-progress"].data == 100
    assert {r["split"] for r in json.loads(arts["curate-digits-table"].data)} == {"train", "val"}
    assert "mmada pipeline summary" in arts["pipeline-summary"].data
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == ["stage-curate-digits", "stage-tokenizer"]
    ev = {**params(served)["evaluate"], "math_n": 1, "mmu_n": 0, "t2i_n": 1, "recon_n": 0}
    fr, arts, _ = run_deployment(served, "evaluate/tiny", {"params": ev, "model": "models:/mmada-tiny@pretrain"})
    assert fr.state.is_completed(), fr.state.message
    assert "| math | accuracy |" in arts["evaluate-summary"].data
    assert {r["suite"] for r in json.loads(arts["evaluate-table"].data)} == {"math", "t2i"}
    with prefect(served) as c:
        from prefect.exceptions import PrefectHTTPStatusError

        dep = c.read_deployment_by_name("evaluate/tiny")
        with pytest.raises(PrefectHTTPStatusError, match="model"):
            c.create_flow_run_from_deployment(dep.id, parameters={"params": ev, "model": "mmada-tiny"})


def test_mlflow_rest_after_the_pipeline(served):
    base = f"{served['mlflow']}/api/2.0/mlflow"
    exps = {e["name"]: e["experiment_id"] for e in get_json(f"{base}/experiments/search", {"max_results": 100})
            ["experiments"]}
    assert {"vq-tokenizer", "mmada-pretrain", "mmada-sft", "mmada-grpo", "mmada-eval"} <= set(exps)
    runs = get_json(f"{base}/runs/search", {"experiment_ids": [exps["mmada-pretrain"]]})["runs"]
    run = runs[0]
    assert run["info"]["status"] == "FINISHED"
    assert {p["key"] for p in run["data"]["params"]} >= {"optim.lr", "trainer.max_steps"}
    assert "train/loss" in {m["key"] for m in run["data"]["metrics"]}
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["pipeline.stage"] == "pretrain" and "data.lm.arithmetic" in tags and tags["git_commit"]
    model = get_json(f"{base}/registered-models/get?name=mmada-tiny")["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert {"pretrain", "sft", "grpo"} <= set(aliases)
    versions = get_json(f"{base}/model-versions/search?filter=name%3D%27mmada-tiny%27")["model_versions"]
    assert len(versions) >= 3 and all(v["source"].startswith("runs:/") for v in versions)
    grpo = next(v for v in versions if v["version"] == aliases["grpo"])
    vtags = {t["key"]: t["value"] for t in grpo.get("tags", [])}
    # lineage: @grpo's parent is an sft version (not necessarily today's @sft: earlier tests re-ran sft)
    parent = next(v for v in versions if f"mmada-tiny/{v['version']}" == vtags.get("parent_model_version"))
    assert {t["key"]: t["value"] for t in parent.get("tags", [])}["stage"] == "sft"
    assert "shapes_t2i" in vtags["grpo.reward_funcs"] and vtags["grpo.estimator"] == "unigrpo", vtags


def _chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1400,1000", "--virtual-time-budget=20000", *args],
                          capture_output=True, text=True, timeout=120)


needs_chromium = pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                                    reason="needs Debian's chromium (apt-get install -y chromium)")


@needs_chromium
def test_ui_prefect_lists_the_deployments(served):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    from flows.serve import deployment_names

    n = len(deployment_names(str(served["clone"] / "params.yaml")))
    dom = _chromium("--dump-dom", f"{served['ui']}/deployments").stdout
    assert f'<span class="results-count">{n} Deployments</span>' in dom
    for name in ("arithmetic", "pretrain", "sft"):  # deployment names (first page, sorted by name)
        assert f">{name}<" in dom, name
    for flow_name in ("curate", "train", "tokenizer"):  # each row also names its flow
        assert f'title="{flow_name}">{flow_name}</span>' in dom, flow_name
    shot = ARTIFACTS / "prefect-deployments.png"
    shot.unlink(missing_ok=True)
    _chromium(f"--screenshot={shot}", f"{served['ui']}/deployments")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_ui_mlflow_shows_the_registered_model(served):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"{served['mlflow']}/#/models/mmada-tiny"
    dom = _chromium("--dump-dom", url).stdout
    assert "mmada-tiny" in dom and "Version 1" in dom and "pretrain" in dom and "sft" in dom
    shot = ARTIFACTS / "mlflow-registered-model.png"
    shot.unlink(missing_ok=True)
    _chromium(f"--screenshot={shot}", url)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_work_pool_deployments_run_on_a_process_worker(served):
    """The cluster layout: deployments on a `process` pool, run by a worker (here: --run-once)."""
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = "gpu-login"
    env = env_for(served["clone"], PREFECT_API_URL=served["api"])
    with prefect(served) as c:
        c.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    r = subprocess.run([sys.executable, "-m", "flows.serve", "--deploy", pool, "--suffix=-hpc"], cwd=served["clone"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    with prefect(served) as c:
        deps = [d for d in c.read_deployments() if d.name.endswith("-hpc")]
        assert len(deps) == len(served_names(served)) and {d.work_pool_name for d in deps} == {pool}
        dep = c.read_deployment_by_name("tokenizer/builtin-hpc")
        assert dep.job_variables["working_dir"] == str(served["clone"])
        fr = c.create_flow_run_from_deployment(dep.id, parameters={"out": "runs/tokenizer-hpc"})
    w = subprocess.run([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--run-once"],
                       cwd=served["clone"], env=env, capture_output=True, text=True, timeout=300)
    with prefect(served) as c:
        fr = c.read_flow_run(fr.id)
    assert fr.state.is_completed(), w.stdout[-3000:] + w.stderr[-3000:]
    assert (served["clone"] / "runs" / "tokenizer-hpc" / "tokenizer.json").is_file()


def served_names(served) -> list[str]:
    from flows.serve import deployment_names

    return deployment_names(str(served["clone"] / "params.yaml"))


def test_ctrl_c_stops_all_three(served):
    proc = served["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(90) == 0
    log = served["log"].read_text()
    assert "stopped: prefect server, mlflow server, playground, flow server" in log
    for url in (f"{served['api']}/health", f"{served['mlflow']}/health"):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=3)


def test_serve_refuses_a_busy_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "mmada", "serve", "--prefect-port", str(port), "--no-deployments"],
                           cwd=tmp_path, env=env_for(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in r.stderr and "--prefect-port" in r.stderr
