"""The stage list, dvc.yaml, params.yaml and the bad-input paths of `mmada pipeline` (fast, no training).

Each error test checks the exit status, that the message names the field/stage and says what to
do, and that nothing was written.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmada.config import read_yaml
from mmada.errors import ConfigError
from mmada.pipeline import stages as S
from mmada.pipeline.params import NAMED, PipelineParams, load_params, profile_params
from tests.test_pipeline_support import REPO, copy_configs, env_for

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def project(tmp_path):
    """``tmp_path`` holding the project's params.yaml and the config files it names (returned)."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return copy_configs(tmp_path)


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(cwd, *args, **env)`` → (status, stdout, stderr) of ``mmada ARGS`` run in-process in ``cwd``."""
    from mmada.cli import main

    def run(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse errors
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_checked_in_dvc_yaml_is_the_generated_one():
    assert (REPO / "dvc.yaml").read_text() == S.dvc_yaml_text(), "run `mmada pipeline generate`"
    r = subprocess.run([sys.executable, "-m", "mmada", "pipeline", "generate", "--check"], cwd=REPO,
                       env=env_for(REPO), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr


def test_dvc_yaml_structure():
    d = yaml.safe_load(S.dvc_yaml_text())["stages"]
    assert list(d) == ["tokenizer", "curate-arithmetic", "curate-shapes", "curate-shapes_vqa", "curate-digits", "vq",
                       "pretrain", "sft", "grpo", "evaluate"]
    for name, st in d.items():
        assert st["cmd"] == f"python -m mmada pipeline stage {name}"
        for p in st["params"]:  # every params key exists in params.yaml
            node = PARAMS
            for part in p.split("."):
                assert part in node, f"{name}: params key {p!r} is not in params.yaml"
                node = node[part]
    # models are small uncached references; metrics and curves are uncached files
    assert d["pretrain"]["outs"] == [{S.model_ref("pretrain"): {"cache": False}}]
    assert d["sft"]["plots"] == [{S.plot_file("sft"): {"cache": False, "x": "step", "y": "train_loss",
                                                       "title": "SFT loss"}}]
    assert d["grpo"]["plots"][0][S.plot_file("grpo")]["y"] == "reward"
    assert d["evaluate"]["metrics"] == [{S.metrics_file("eval"): {"cache": False}}]
    assert S.model_ref("pretrain") in d["sft"]["deps"] and S.model_ref("sft") in d["grpo"]["deps"]
    assert S.model_ref("grpo") in d["evaluate"]["deps"]
    # what the built-in world generates re-runs when its generators change (the tokenizer's corpus included)
    for name in ("tokenizer", "curate-arithmetic", "curate-shapes", "curate-shapes_vqa", "curate-digits", "vq",
                 "evaluate"):
        assert "mmada/builtin" in d[name]["deps"], name
    # the config file each params section names is a dep of its stage (DVC resolves it from params.yaml)
    assert d["sft"]["deps"][0] == "${sft.config}" and d["curate-shapes"]["deps"][0] == "${curate.shapes.spec}"
    assert {dep for st in d.values() for dep in st["deps"] if dep.startswith("$")} == {
        f"${{{section}.{key}}}" for section, key in NAMED.items()}


def test_every_dep_is_produced_upstream_and_the_order_is_topological():
    seen: set[str] = set()
    for s in S.STAGES:
        for dep in s.deps:
            producer = S.producer_of(dep)
            if producer is None:
                assert (REPO / dep).exists(), f"{s.name}: source dep {dep} does not exist"
            else:
                assert producer.name in s.upstream and producer.name in seen, (s.name, dep)
        assert set(s.upstream) <= seen, s.name
        seen.add(s.name)
    assert S.upstream_closure(["sft"]) == ["tokenizer", "curate-arithmetic", "curate-shapes", "curate-shapes_vqa",
                                          "curate-digits", "vq", "pretrain", "sft"]
    assert S.downstream_closure(["sft"]) == ["sft", "grpo", "evaluate"]


def test_params_yaml_names_the_configs_and_holds_only_what_differs():
    assert profile_params("demo", REPO) == PARAMS, "run `mmada pipeline params --write`"
    p = load_params(REPO / "params.yaml", REPO)
    for section, key in NAMED.items():
        node = PARAMS
        for part in section.split("."):
            node = node[part]
        base = read_yaml(REPO / node[key])
        for k, v in node.items():  # nothing repeats the file, except the keys `dvc exp run -S` sets
            if k != key and isinstance(v, dict) and isinstance(base.get(k), dict):
                same = {kk for kk, vv in v.items() if base[k].get(kk) == vv}
                assert same <= {"lr", "max_steps"}, f"{section}.{k} repeats {same} of {node[key]}"
    sft = read_yaml(REPO / "configs/train/tiny_sft.yaml")
    assert p.sft.optim.min_lr_scale == sft["optim"]["min_lr_scale"]  # from the file
    pre = read_yaml(REPO / "configs/train/tiny_pretrain.yaml")
    assert p.pretrain.trainer.max_steps == PARAMS["pretrain"]["trainer"]["max_steps"] != pre["trainer"]["max_steps"]
    assert p.curate.arithmetic.sources[0].n == PARAMS["curate"]["arithmetic"]["sources"]["0"]["n"]
    assert p.curate.arithmetic.sources[0].difficulty == (1, 1)  # the demo's one-step problems
    assert p.curate.arithmetic.sources[0].max_operand == 9  # the rest of the source from the spec
    full = profile_params("full", REPO)
    assert full["vq"] == {"config": "configs/vq/tiny.yaml"} and full["sft"]["trainer"] == {"max_steps": 400}


def test_params_yaml_is_valid_and_matches_the_stage_paths():
    p = load_params(REPO / "params.yaml", REPO)
    for stage in ("pretrain", "sft"):
        cfg = getattr(p, stage)
        deps = set(S.get_stage(stage).deps)
        for stream in cfg.data.streams.values():
            assert set(stream.manifests) <= deps, f"{stage} reads shards that are not its DVC deps"
        assert cfg.data.image_tokenizer == S.VQ_DIR
    assert p.pretrain.model.tokenizer == S.TOKENIZER_DIR
    assert p.sft.model.init == "models:/mmada-tiny@pretrain"
    for name in S.DATASETS:
        spec = getattr(p.curate, name)
        assert spec.output == S.data_dir(name) and spec.tokenizer == S.TOKENIZER_DIR
    assert p.vq.output_dir == S.VQ_OUTPUT_DIR
    assert isinstance(p, PipelineParams)


def test_bad_params_name_the_field(project, cli):
    bad = json.loads(json.dumps(PARAMS))
    bad["pretrain"]["optim"]["lr"] = -1
    bad["evaluate"]["math_protocol"] = "vibes"
    (project / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as e:
        load_params(project / "params.yaml", project)
    assert "pretrain.optim.lr" in str(e.value) and "evaluate.math_protocol" in str(e.value)
    rc, _, err = cli(project, "pipeline", "stage", "tokenizer")
    assert rc == 2 and "error: params.yaml: pretrain.optim.lr: Input should be greater than 0" in err
    assert not (project / "runs").exists()
    rc, _, err = cli(project, "pipeline", "params", "--check")
    assert rc == 2 and "pretrain.optim.lr" in err and "evaluate.math_protocol" in err
    rc, _, err = cli(project, "pipeline", "stage", "tokenizer", "--params", "nope.yaml")
    assert rc == 2 and "mmada pipeline params --write" in err
    # a bad value in a file params.yaml names is reported at its place in the resolved config
    sft = project / "configs/train/tiny_sft.yaml"
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    sft.write_text(sft.read_text().replace("min_lr_scale: 0.1", "min_lr_scale: 7"))
    rc, _, err = cli(project, "pipeline", "params", "--check")
    assert rc == 2 and "error: params.yaml: sft.optim.min_lr_scale: Input should be less than or equal to 1" in err
    for change, message in [({"sft": {"config": "configs/train/nope.yaml"}}, "sft.config: 'configs/train/nope.yaml' "
                              "does not exist"),
                             ({"vq": {"max_steps": 5}}, "vq.config: missing: name the file"),
                             ({"curate": {"digits": {"spec": "data_specs/digits.yaml", "sources": {"1": {"n": 5}}}}},
                              "curate.digits.sources: '1' is not an item of the list it merges into (1 items)")]:
        (project / "params.yaml").write_text(yaml.safe_dump({**PARAMS, **change}))
        rc, _, err = cli(project, "pipeline", "params", "--check")
        assert rc == 2 and f"error: params.yaml: {message}" in err, err


def test_params_show_and_write(project, cli):
    rc, out, _ = cli(project, "pipeline", "params")
    shown = yaml.safe_load(out)
    assert rc == 0 and shown["sft"]["optim"]["min_lr_scale"] == 0.1 and shown["sft"]["trainer"]["max_steps"] == 450
    assert shown["curate"]["arithmetic"]["sources"][0]["n"] == 3000
    rc, out, _ = cli(project, "pipeline", "params", "--write", "--profile", "full", "--params", "full.yaml")
    assert rc == 0 and "wrote full.yaml (full sizes)" in out
    full = load_params(project / "full.yaml", project)
    assert full.sft.trainer.max_steps == 400 and full.pretrain.model.tokenizer == S.TOKENIZER_DIR


@pytest.mark.usefixtures("project")
def test_stage_out_of_order_says_what_to_run(tmp_path, cli):
    rc, _, err = cli(tmp_path, "pipeline", "stage", "sft")
    assert rc == 2
    assert "stage 'sft' needs runs/pipeline/models/pretrain.json (written by stage 'pretrain')" in err
    assert "dvc repro pretrain" in err
    rc, _, err = cli(tmp_path, "pipeline", "stage", "curate-shapes")
    assert rc == 2 and "needs runs/tokenizer" in err and "--until tokenizer" in err
    rc, _, err = cli(tmp_path, "pipeline", "stage", "evaluate", "--model-ref", "missing.json")
    assert rc == 2 and "needs runs/vq/tiny/tokenizer (written by stage 'vq')" in err
    # an incomplete upstream directory (no completion marker) counts as missing
    (tmp_path / S.VQ_DIR).mkdir(parents=True)
    (tmp_path / S.VQ_DIR / "config.json").write_text("{}")
    rc, _, err = cli(tmp_path, "pipeline", "stage", "evaluate", "--model-ref", "missing.json")
    assert rc == 2 and "needs runs/vq/tiny/tokenizer" in err and "incomplete" in err
    (tmp_path / S.VQ_DIR / "model.safetensors").write_bytes(b"")
    rc, _, err = cli(tmp_path, "pipeline", "stage", "evaluate", "--model-ref", "missing.json")
    assert rc == 2 and "stage 'evaluate' needs missing.json" in err
    assert not (tmp_path / "runs" / "pipeline").exists()


@pytest.mark.usefixtures("project")
def test_tracking_server_not_running(tmp_path, cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = cli(tmp_path, "pipeline", "stage", "tokenizer", MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")
    assert rc == 2
    assert f"MLflow tracking server at http://127.0.0.1:{port} is not reachable" in err
    assert "mmada serve" in err and not (tmp_path / "runs").exists()


@pytest.mark.usefixtures("project")
def test_bad_launch_spec_and_not_a_project(tmp_path, cli):
    rc, _, err = cli(tmp_path, "pipeline", "stage", "tokenizer", "--launch", '{"kind": "slurm", "nodes": 0}')
    assert rc == 2 and "--launch: kind:" in err and "nodes: Input should be greater than" in err
    rc, _, err = cli(tmp_path, "pipeline")
    assert rc == 2 and "not the project root" in err
    rc, _, err = cli(tmp_path, "pipeline", "stage", "nonsense")
    assert rc == 2 and "invalid choice" in err


def test_eval_rows_and_summary_compare_against_the_sft_baseline():
    from mmada.pipeline.evaluate import eval_md, eval_rows
    from mmada.pipeline.summary import render

    res = {"model": "mmada-tiny/3", "math": {"accuracy": 0.25, "no_answer_rate": 0.0},
           "recon": {"psnr": 30.0},
           "baseline": {"model": "mmada-tiny/2", "math": {"accuracy": 0.125, "no_answer_rate": 0.5}}}
    rows = eval_rows(res)
    assert rows[0] == {"suite": "math", "metric": "accuracy", "value": 0.25, "baseline": 0.125, "delta": 0.125}
    assert rows[1]["delta"] == -0.5
    assert rows[2] == {"suite": "recon", "metric": "psnr", "value": 30.0, "baseline": None, "delta": None}
    assert eval_rows({"model": "m", "math": {"accuracy": 0.5}}) == [{"suite": "math", "metric": "accuracy",
                                                                       "value": 0.5}]
    md = eval_md(res, Path("runs/pipeline/eval"))
    assert "| math | accuracy | 0.25 | 0.125 | 0.125 |" in md and "| recon | psnr | 30 | – | – |" in md
    info = {"datasets": [], "tokenizer": None, "vq": None, "registry": {}, "refs": {}, "eval": res,
            "missing": [], "tracking_uri": "sqlite:///x.db"}
    text = render(info, Path("/nonexistent"))
    assert "  math    accuracy                       0.2500    0.1250   +0.1250" in text
    assert "(baseline: mmada-tiny/2 = @sft, before UniGRPO)" in text


def test_pipeline_refuses_a_folder_that_is_not_the_project(tmp_path):
    from mmada.errors import MMaDAError
    from mmada.pipeline.run import check_project

    with pytest.raises(MMaDAError, match="is not the project root"):
        check_project(tmp_path)
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(MMaDAError, match="mmada pipeline generate"):
        check_project(tmp_path)
    (tmp_path / "dvc.yaml").write_text(S.dvc_yaml_text())
    with pytest.raises(MMaDAError, match="not inside a git repository"):
        check_project(tmp_path)


def test_child_env_is_offline_without_overriding_the_operator():
    from mmada.pipeline.env import child_env, venv_bin

    env = child_env({"EXTRA": "1"}, base={"PATH": "/usr/bin", "DO_NOT_TRACK": "0"})
    assert env["DO_NOT_TRACK"] == "0" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["PREFECT_SERVER_API_HOST"] == "127.0.0.1" and env["EXTRA"] == "1"
    assert env["PATH"].split(":")[0] == str(venv_bin())


class Recorder:
    """A Reporter that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def progress(self, fraction, message):
        self.calls.append(("progress", fraction, message))

    def link(self, url, text):
        self.calls.append(("link", url, text))

    def markdown(self, text, description):
        self.calls.append(("markdown", text, description))

    def table(self, rows, description):
        self.calls.append(("table", rows, description))

    def line(self, text):
        self.calls.append(("line", text))


def test_stage_events_travel_typed_from_the_stage_process_to_the_flow(tmp_path, monkeypatch):
    """What a Prefect flow learns from a stage subprocess: typed events from a file, no console parsing."""
    import io

    from mmada.errors import MMaDAError
    from mmada.pipeline.context import StageContext
    from mmada.pipeline.events import EVENTS_ENV, EventFollower, EventWriter
    from mmada.pipeline.report import ConsoleReporter

    path = tmp_path / "events.jsonl"
    got = Recorder()
    follower = EventFollower(path, got)
    follower.poll()  # the stage has not started yet
    writer = EventWriter(path)
    writer.progress(0.45, "step 90/200 train/loss 4.1120")
    writer.link("http://127.0.0.1:5000/#/experiments/1/runs/abc", "MLflow run")
    writer.line("console text is not an event")
    follower.poll()
    assert got.calls == [("progress", 0.45, "step 90/200 train/loss 4.1120"),
                         ("link", "http://127.0.0.1:5000/#/experiments/1/runs/abc", "MLflow run")]
    writer.markdown("### sft\n| metric | value |", "sft summary")
    writer.table([{"suite": "math", "value": 0.5, "delta": None}], "Evaluation of mmada-tiny/3")
    with open(path, "a") as f:
        f.write('{"kind": "progress", "fraction": 1.0')  # a line still being written
    follower.poll()
    assert got.calls[2:] == [("markdown", "### sft\n| metric | value |", "sft summary"),
                             ("table", [{"suite": "math", "value": 0.5, "delta": None}], "Evaluation of mmada-tiny/3")]
    with open(path, "a") as f:
        f.write(', "message": "done"}\n{"kind": "progress", "fraction": "most", "message": "?"}\n')
    with pytest.raises(MMaDAError, match=r"events\.jsonl:6: not a stage event: progress\.fraction"):
        follower.poll()
    assert got.calls[-1] == ("progress", 1.0, "done")
    # a stage process a flow started (MMADA_STAGE_EVENTS set) reports to its console and to the file
    monkeypatch.setenv(EVENTS_ENV, str(tmp_path / "stage.jsonl"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    console = io.StringIO()
    ctx = StageContext.create(ConsoleReporter("sft", stream=console))
    ctx.reporter.progress(1.0, "registered mmada-tiny version 2 (@sft)")
    assert console.getvalue() == "[sft] 100% registered mmada-tiny version 2 (@sft)\n"
    replay = Recorder()
    EventFollower(tmp_path / "stage.jsonl", replay).poll()
    assert replay.calls == [("progress", 1.0, "registered mmada-tiny version 2 (@sft)")]


def test_task_table_counts_intervals_and_paired_flips(tmp_path):
    """Per-task accuracy, Wilson interval and paired flips from the suites' sample files, and how the summary
    prints them with three answers per task and the grid's captions."""
    import json

    from mmada.eval.paired import mcnemar_exact, proportion_ci
    from mmada.pipeline.evaluate import task_table
    from mmada.pipeline.summary import render

    def write(folder, name, rows):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    after = [True, True, False, True, False, True, True, False]
    before = [False, True, False, False, False, True, False, True]
    write(tmp_path, "math_samples.jsonl", [{"id": i, "correct": c, "question": f"q{i}", "response": f"r{i}",
                                            "extracted": str(i), "gold": "7"} for i, c in enumerate(after)])
    write(tmp_path / "baseline", "math_samples.jsonl", [{"id": i, "correct": c} for i, c in enumerate(before)])
    t2i = [{"id": i, "task": "single_object" if i < 3 else "counting", "correct": i % 2 == 0,
            "caption": f"cap {i}"} for i in range(5)]
    write(tmp_path, "t2i_samples.jsonl", t2i)
    write(tmp_path / "baseline", "t2i_samples.jsonl", [{**r, "correct": False} for r in t2i])
    table = task_table(tmp_path, baseline=True)
    assert list(table) == ["arithmetic", "t2i single_object", "t2i counting"]
    m = table["arithmetic"]
    lo, hi = proportion_ci(5, 8)
    assert (m["n"], m["correct"], m["accuracy"], m["ci95"]) == (8, 5, 5 / 8, {"low": lo, "high": hi})
    assert m["baseline"]["correct"] == 3
    assert m["paired"] == {"turned_correct": 3, "turned_wrong": 1, "p_value": mcnemar_exact(3, 1)}
    assert table["t2i single_object"]["correct"] == 2 and table["t2i counting"]["n"] == 2
    assert table["t2i counting"]["paired"]["turned_correct"] == 1
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "generated_grid.png").write_bytes(b"png")
    ev = {"model": "mmada-tiny/3", "tasks": table, "baseline": {"model": "mmada-tiny/2"}}
    info = {"datasets": [], "tokenizer": None, "vq": None, "registry": {}, "refs": {}, "eval": ev,
            "missing": [], "tracking_uri": "sqlite:///x.db"}
    text = render(info, tmp_path / "project")
    assert "Per task, on held-out items" in text
    assert "  arithmetic           8   62.5% [" in text and "3 / 1" in text
    from mmada.pipeline.summary import sample_lines

    lines = "\n".join(sample_lines(tmp_path))
    assert "ok math  q0" in lines and "x  math  q2" in lines and "q3" not in lines  # three per task
    assert "(extracted 0, gold 7)" in lines and " 0 ok cap 0" in lines and " 1 x  cap 1" in lines
