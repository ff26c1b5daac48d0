"""Tokenizer training end to end on CPU, on the shared training harness: loss goes down, MLflow gets
params/metrics/grids/export through the non-blocking logger, the export is registered and loads,
a killed run resumes from its last atomic checkpoint, presets agree with configs/vq/*.yaml, CLI works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmada.config import load_config
from mmada.data.vq import load_tokenizer_model, shapes_images
from mmada.errors import ConfigError
from mmada.models.vq import MAGVITv2, encode_images
from mmada.training.callbacks import find_resume_checkpoint
from mmada.training.optim import lr_factor
from mmada.training.vq import PRESETS, TINY_MODEL, VQTrainConfig, tiny, train_tokenizer
from tests.test_tracking import closed_port_uri, http_env  # noqa: F401  (http_env is a fixture)
from tests.test_training_support import fresh_mlflow_uri, kill_when, one_thread, subprocess_env

REPO = Path(__file__).resolve().parents[1]

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def tiny_cfg(*overrides: str) -> VQTrainConfig:
    return load_config(VQTrainConfig, tiny(), list(overrides))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, monkeypatch_module):
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path_factory.mktemp("mlflow"))
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", uri)  # what load_tokenizer_model("models:/…") reads
    return uri


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tracking):
    out = tmp_path_factory.mktemp("vq_tiny")
    cfg = tiny_cfg(
        "trainer.max_steps=60", "trainer.val_every_n_steps=30", "trainer.log_every_n_steps=5", "data.num_train=512",
        "data.num_val=32", "data.batch_size=16", "checkpoint.every_n_steps=30", "checkpoint.keep_last=1",
        "grid_images=4", f"output_dir={out}", f"tracking.uri={tracking}", "tracking.registered_model=vq-test-tiny",
        "tracking.system_metrics_interval=1",
    )
    return cfg, train_tokenizer(cfg)


def test_short_run_lowers_reconstruction_loss(trained):
    _, r = trained
    assert r.global_step == 60
    first, last = r.initial_metrics, r.metrics
    assert last["val/mse"] < 0.3 * first["val/mse"]
    assert last["val/psnr"] > first["val/psnr"] + 6
    assert 0 < last["val/codebook_usage"] <= 1 and last["val/perplexity"] >= 1
    assert last["val/codes_used"] == last["val/codebook_usage"] * 1024
    assert last["perf/tokens_per_s"] > 0 and r.train_seconds > 0  # tokens: the codes of the images trained on


def test_mlflow_run_has_params_metrics_grids_and_export(trained, tracking, tmp_path):
    cfg, r = trained
    client = MlflowClient(tracking_uri=tracking)
    run = client.get_run(r.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "vq-tiny"
    assert run.data.params["model.z_channels"] == "10" and run.data.params["trainer.max_steps"] == "60"
    assert run.data.tags["stage"] == "vq" and run.data.tags["config_hash"] == cfg.config_hash()
    assert json.loads((cfg.out_dir / "mlflow_run.json").read_text())["run_id"] == r.run_id
    loss = client.get_metric_history(r.run_id, "train/loss")
    assert len(loss) >= 60 // cfg.trainer.log_every_n_steps - 1
    psnr = {m.step: m.value for m in client.get_metric_history(r.run_id, "val/psnr")}
    assert sorted(psnr) == [0, 30, 60]
    assert psnr[60] == pytest.approx(r.metrics["val/psnr"]) and psnr[0] == pytest.approx(r.initial_metrics["val/psnr"])
    for key in ("val/codebook_usage", "val/perplexity", "val/codes_used", "train/entropy_loss",
                "train/commitment_loss", "train/lr"):
        assert client.get_metric_history(r.run_id, key), key
    assert any(k.startswith("system/") for k in run.data.metrics)  # the harness's system metrics
    grids = [a.path for a in client.list_artifacts(r.run_id, "reconstructions")]
    assert grids == [f"reconstructions/step_{s:06d}.png" for s in (0, 30, 60)]
    local = client.download_artifacts(r.run_id, grids[-1], str(tmp_path))
    assert Image.open(local).size == (4 * (128 + 2) + 2, 2 * (128 + 2) + 2)  # 4 pairs of 32 px images ×4
    assert sorted(a.path for a in client.list_artifacts(r.run_id, "tokenizer")) == [
        "tokenizer/config.json", "tokenizer/model.safetensors"]
    metrics = json.loads((cfg.out_dir / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["final"]["psnr"] == pytest.approx(r.metrics["val/psnr"])
    assert metrics["initial"]["psnr"] == pytest.approx(r.initial_metrics["val/psnr"])
    assert sorted(p.name for p in cfg.checkpoint_dir.iterdir()) == ["last.ckpt", "result.json", "step00000060.ckpt"]


def test_export_is_registered_loads_and_tokenizes(trained, tracking):
    _, r = trained
    assert (r.registered_model, r.model_version) == ("vq-test-tiny", "1")
    mv = MlflowClient(tracking_uri=tracking).get_model_version_by_alias("vq-test-tiny", "vq")
    assert str(mv.version) == "1" and mv.run_id == r.run_id and mv.tags["stage"] == "vq"
    model = load_tokenizer_model(str(r.export_dir))
    assert model.config == TINY_MODEL
    meta = json.loads((r.export_dir / "config.json").read_text())
    assert meta["_mlflow_run_id"] == r.run_id and meta["_steps"] == 60
    imgs = shapes_images(8, seed=123)
    codes = encode_images(model, imgs, batch_size=3)
    assert codes.shape == (8, 64) and codes.dtype == np.int16
    assert codes.min() >= 0 and codes.max() < 1024
    # The export reproduces the logged validation quality on fresh images.
    x = model.preprocess(imgs)
    rec = model.decode(torch.from_numpy(codes.astype(np.int64)))
    psnr = (10 * torch.log10(4 / (rec - x).pow(2).flatten(1).mean(1))).mean().item()
    assert psnr > r.initial_metrics["val/psnr"] + 6
    # ... and the registered version (by number, by alias) and the run's artifacts are the same tokenizer.
    a = model.state_dict()
    for uri in ("models:/vq-test-tiny/1", "models:/vq-test-tiny@vq", f"runs:/{r.run_id}/tokenizer"):
        b = load_tokenizer_model(uri).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), uri


class _DictImages(Dataset):
    def __init__(self, n: int, seed: int):
        self.x = MAGVITv2(TINY_MODEL).preprocess(shapes_images(n, seed))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "id": i}


def test_external_dict_loaders_and_adversarial_term(tmp_path, tracking):
    cfg = tiny_cfg("trainer.max_steps=4", "trainer.val_every_n_steps=4", "trainer.log_every_n_steps=1",
                   "loss.adversarial_weight=0.1", "loss.adversarial_start_step=2", "loss.disc_channels=8",
                   "grid_images=2", f"output_dir={tmp_path}", f"tracking.uri={tracking}",
                   "tracking.log_system_metrics=false")
    train = DataLoader(_DictImages(16, 0), batch_size=8, shuffle=True)
    val = DataLoader(_DictImages(8, 1), batch_size=8)
    r = train_tokenizer(cfg, train_loader=train, val_loader=val)
    client = MlflowClient(tracking_uri=tracking)
    d_steps = [m.step for m in client.get_metric_history(r.run_id, "train/d_loss")]
    assert d_steps and min(d_steps) >= 2  # the discriminator starts at adversarial_start_step
    assert r.global_step == 4 and (tmp_path / "tokenizer" / "model.safetensors").is_file()
    assert r.model_version is None and not client.search_registered_models(f"name='{cfg.name}'")  # registry: off
    # The discriminator's optimizer (not a Lightning one: it must not advance global_step) is checkpointed.
    ckpt = torch.load(cfg.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["discriminator_optimizer"]["state"][0]["step"] == 2


def test_init_from_continues_from_an_export(trained, tmp_path, tracking):
    _, r = trained
    cfg = tiny_cfg("trainer.max_steps=1", "trainer.val_every_n_steps=1", "data.num_train=16", "data.num_val=16",
                   "grid_images=1", f"init_from={r.export_dir}", f"output_dir={tmp_path}", f"tracking.uri={tracking}",
                   "optim.lr=1e-9", "optim.warmup_steps=0", "tracking.log_system_metrics=false")
    r2 = train_tokenizer(cfg)
    # A near-zero learning rate keeps the starting quality (the baseline is the loaded model).
    assert r2.initial_metrics["val/psnr"] > r.initial_metrics["val/psnr"] + 6
    bad = load_config(VQTrainConfig, PRESETS["official"](), [
        f"init_from={r.export_dir}", "data.source=shapes", "data.image_size=32", f"output_dir={tmp_path / 'bad'}",
        f"tracking.uri={tracking}"])
    with pytest.raises(ConfigError, match="different architecture"):
        train_tokenizer(bad)


def test_training_survives_a_dead_tracking_server(tmp_path, http_env):  # noqa: F811
    """No MLflow for the whole run: the tokenizer trains and exports; the metrics are kept on disk."""
    cfg = tiny_cfg("trainer.max_steps=3", "trainer.val_every_n_steps=3", "trainer.log_every_n_steps=1",
                   "data.num_train=32", "data.num_val=16", "grid_images=1", f"output_dir={tmp_path}",
                   f"tracking.uri={closed_port_uri()}", "tracking.max_retries=0", "tracking.registered_model=x")
    r = train_tokenizer(cfg)
    assert r.global_step == 3 and r.run_id is None and r.model_version is None
    assert (r.export_dir / "model.safetensors").is_file() and (tmp_path / "metrics.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "mlflow_failed.jsonl").read_text().splitlines()]
    assert sorted(x["step"] for x in lines if "val/psnr" in x.get("metrics", {})) == [0, 3]


def test_kill_and_resume(tmp_path, tracking):
    """SIGKILL mid-run, then the same command again: continues from last.ckpt at its step, in the same
    MLflow run, with the optimizers (the discriminator's too) and the LR schedule where they were."""
    steps, every = 40, 5
    cfg = tiny_cfg(f"trainer.max_steps={steps}", "trainer.val_every_n_steps=20", "trainer.log_every_n_steps=1",
                   "data.num_train=256", "data.num_val=16", "data.batch_size=8", f"checkpoint.every_n_steps={every}",
                   "loss.adversarial_weight=0.1", "loss.disc_channels=8", "optim.warmup_steps=10", "grid_images=1",
                   f"output_dir={tmp_path / 'run'}", f"tracking.uri={tracking}", "tracking.log_system_metrics=false")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "mmada", "vq", "train", "--config", str(path)]
    ckpts = cfg.checkpoint_dir
    kill_when(cmd, ckpts / f"step{2 * every:08d}.ckpt")
    state = torch.load(find_resume_checkpoint(ckpts).path, map_location="cpu", weights_only=True)  # never torn
    killed_at = state["global_step"]
    assert killed_at % every == 0 and every <= killed_at < steps
    run_id = json.loads((cfg.out_dir / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(tracking)
    baseline = client.get_metric_history(run_id, "val/psnr")[0].value

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["run_id"] == run_id and summary["global_step"] == steps
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == steps
    assert final["discriminator_optimizer"]["state"][0]["step"] == steps  # its state came back too
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".partial-")]
    assert client.get_run(run_id).info.status == "FINISHED"
    lrs = {m.step: m.value for m in client.get_metric_history(run_id, "train/lr")}
    for step in (killed_at, steps - 1):
        assert lrs[step] == pytest.approx(4e-3 * lr_factor(step, warmup=10, max_steps=steps, min_lr_scale=0.1))
    # the step-0 baseline is not repeated, but still reported
    val_steps = [m.step for m in client.get_metric_history(run_id, "val/psnr")]
    assert val_steps.count(0) == 1 and sorted(set(val_steps)) == [0, 20, 40]
    metrics = json.loads((cfg.out_dir / "metrics.json").read_text())
    assert metrics["steps"] == steps and metrics["initial"]["psnr"] == pytest.approx(baseline)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_configs_mirror_presets(name):
    from_yaml = load_config(VQTrainConfig, REPO / "configs" / "vq" / f"{name}.yaml")
    assert from_yaml == PRESETS[name]()


def test_tiny_preset_is_the_agreed_shape():
    cfg = tiny()
    assert cfg.model.codebook_size == 1024 and cfg.model.grid(32, 32) == (8, 8) and cfg.data.image_size == 32
    o = cfg.optim  # the schedule of the tokenizer's own stack before the shared harness
    assert (o.lr, o.warmup_steps, o.min_lr_scale, o.betas, o.weight_decay, o.max_grad_norm) == (
        4e-3, 50, 0.1, (0.9, 0.99), 0.0, 1.0)
    assert cfg.tracking.registered_model is None  # registered only when asked


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="image_size=30 is not a multiple"):
        tiny_cfg("data.image_size=30")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        tiny_cfg("optim.lrr=1")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        tiny_cfg("trainer.max_steps")
    with pytest.raises(ConfigError, match="accumulate_grad_batches must be 1"):
        tiny_cfg("trainer.accumulate_grad_batches=2")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(VQTrainConfig, tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"source": "folder"}}))
    with pytest.raises(ConfigError, match=r"data\.folder is required"):
        load_config(VQTrainConfig, tmp_path / "bad.yaml")


# ----------------------------------------------------------------------------- CLI
def test_cli_train_then_encode(tmp_path, tracking, capsys):
    from mmada.cli import main

    out = tmp_path / "run"
    rc = main(["vq", "train", "--preset", "tiny", "--output-dir", str(out), "--max-steps", "3",
               "--set", "trainer.val_every_n_steps=3", "--set", "data.num_train=32", "--set", "data.num_val=16",
               "--set", "grid_images=2", "--set", "tracking.log_system_metrics=false", "--tracking-uri", tracking])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 3 and Path(summary["export_dir"]) == out / "tokenizer"
    assert "val/psnr" in summary["initial_metrics"] and "val/psnr" in summary["metrics"]

    imgs_dir = tmp_path / "imgs"
    (imgs_dir / "sub").mkdir(parents=True)
    imgs = shapes_images(3, seed=7)
    for i, im in enumerate(imgs):
        im.save(imgs_dir / ("sub" if i == 2 else ".") / f"{i}.png")
    rc = main(["vq", "encode", str(out / "tokenizer"), str(imgs_dir), "--output", str(tmp_path / "codes.npz")])
    assert rc == 0
    data = np.load(tmp_path / "codes.npz")
    assert data["codes"].shape == (3, 64) and data["grid"].tolist() == [8, 8]
    assert [Path(s).name for s in data["sources"]] == ["0.png", "1.png", "2.png"]
    model = MAGVITv2.from_pretrained(out / "tokenizer")
    assert np.array_equal(data["codes"], encode_images(model, imgs))

    (imgs_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    capsys.readouterr()
    rc = main(["vq", "encode", str(out / "tokenizer"), str(imgs_dir), "--output", str(tmp_path / "c2.npz")])
    assert rc == 2
    assert "broken.png" in capsys.readouterr().err
    assert not (tmp_path / "c2.npz").exists()
    rc = main(["vq", "encode", "tiny-does-not-exist", str(imgs_dir), "--output", str(tmp_path / "c3.npz")])
    assert rc == 2
    rc = main(["vq", "train", "--config", str(tmp_path / "nope.yaml")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_tiny_preset_name_requires_a_trained_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="mmada vq train --preset tiny"):
        load_tokenizer_model("tiny")
