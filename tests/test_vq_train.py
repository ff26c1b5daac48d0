"""Tokenizer training end to end on CPU: loss goes down, MLflow gets metrics/grids/export, the
export loads (also through the model registry), presets agree with configs/vq/*.yaml, CLI works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmada.errors import ConfigError
from mmada.models.vq import MAGVITv2
from mmada.vq.config import load_train_config
from mmada.vq.data import shapes_images
from mmada.vq.presets import PRESETS, TINY_MODEL
from mmada.vq.pretokenize import encode_images, load_tokenizer_model
from mmada.vq.train import train_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny convolutions gain little from a second thread, and on a shared 2-core machine two
    OpenMP threads fighting other processes can run 10× slower; one thread keeps timings stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, monkeypatch_module):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    monkeypatch_module.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tracking):
    out = tmp_path_factory.mktemp("vq_tiny")
    cfg = load_train_config("tiny", [
        "max_steps=60", "val_every=30", "log_every=5", "data.num_train=512", "data.num_val=32",
        "data.batch_size=16", "checkpoint_every=30", "keep_checkpoints=1", "grid_images=4",
        f"output_dir={out}", f"tracking_uri={tracking}", "register_as=vq-test-tiny",
    ])
    torch.manual_seed(0)
    return cfg, train_tokenizer(cfg)


def test_short_run_lowers_reconstruction_loss(trained):
    _, r = trained
    assert r.steps == 60
    assert r.final_val["mse"] < 0.3 * r.initial_val["mse"]
    assert r.final_val["psnr"] > r.initial_val["psnr"] + 6
    assert 0 < r.final_val["codebook_usage"] <= 1 and r.final_val["perplexity"] >= 1


def test_mlflow_run_has_metrics_grids_and_export(trained, tracking, tmp_path):
    cfg, r = trained
    client = MlflowClient(tracking_uri=tracking)
    run = client.get_run(r.run_id)
    assert run.data.params["config/model/z_channels"] == "10"
    loss = client.get_metric_history(r.run_id, "train/loss")
    assert len(loss) >= 60 // cfg.log_every - 1
    psnr = {m.step: m.value for m in client.get_metric_history(r.run_id, "val/psnr")}
    assert sorted(psnr) == [0, 30, 60]
    assert psnr[60] == pytest.approx(r.final_val["psnr"])
    for key in ("val/codebook_usage", "val/perplexity", "train/entropy_loss", "train/commitment_loss", "train/lr"):
        assert client.get_metric_history(r.run_id, key), key
    grids = [a.path for a in client.list_artifacts(r.run_id, "reconstructions")]
    assert grids == [f"reconstructions/step_{s:06d}.png" for s in (0, 30, 60)]
    local = client.download_artifacts(r.run_id, grids[-1], str(tmp_path))
    grid = Image.open(local)
    assert grid.size == ((4 * 34 - 2) * 4, 66 * 4)  # 4 images of 32 px + 2 px gaps, two rows, ×4
    assert sorted(a.path for a in client.list_artifacts(r.run_id, "tokenizer")) == [
        "tokenizer/config.json", "tokenizer/model.safetensors"]
    metrics = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["final"]["psnr"] == pytest.approx(r.final_val["psnr"])
    assert sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").iterdir()) == ["step-000060"]


def test_export_loads_and_tokenizes(trained):
    _, r = trained
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
    assert psnr > r.initial_val["psnr"] + 6
    # ... and the registered model version is the same tokenizer.
    same = load_tokenizer_model("models:/vq-test-tiny/1")
    a, b = model.state_dict(), same.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


class _DictImages(Dataset):
    def __init__(self, n: int, seed: int):
        self.x = MAGVITv2(TINY_MODEL).preprocess(shapes_images(n, seed))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "id": i}


def test_external_dict_loaders_and_adversarial_term(tmp_path, tracking):
    cfg = load_train_config("tiny", [
        "max_steps=4", "val_every=4", "log_every=1", "loss.adversarial_weight=0.1",
        "loss.adversarial_start_step=2", "loss.disc_channels=8", "grid_images=2",
        f"output_dir={tmp_path}", f"tracking_uri={tracking}",
    ])
    train = DataLoader(_DictImages(16, 0), batch_size=8, shuffle=True)
    val = DataLoader(_DictImages(8, 1), batch_size=8)
    r = train_tokenizer(cfg, train_loader=train, val_loader=val)
    client = MlflowClient(tracking_uri=tracking)
    d_steps = [m.step for m in client.get_metric_history(r.run_id, "train/d_loss")]
    assert d_steps and min(d_steps) >= 2  # the discriminator starts at adversarial_start_step
    assert r.steps == 4 and (tmp_path / "tokenizer" / "model.safetensors").is_file()


def test_init_from_continues_from_an_export(trained, tmp_path, tracking):
    _, r = trained
    cfg = load_train_config("tiny", ["max_steps=1", "val_every=1", "data.num_train=16", "data.num_val=16",
                                     "grid_images=1", f"init_from={r.export_dir}", f"output_dir={tmp_path}",
                                     f"tracking_uri={tracking}", "optim.lr=1e-9", "optim.warmup_steps=0"])
    r2 = train_tokenizer(cfg)
    # A near-zero learning rate keeps the starting quality (the baseline is the loaded model).
    assert r2.initial_val["psnr"] > r.initial_val["psnr"] + 6
    bad = load_train_config("official", [f"init_from={r.export_dir}", "data.source=shapes", "data.image_size=32",
                                         f"output_dir={tmp_path}", f"tracking_uri={tracking}"])
    with pytest.raises(ConfigError, match="different architecture"):
        train_tokenizer(bad)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_configs_mirror_presets(name):
    from_yaml = load_train_config(REPO / "configs" / "vq" / f"{name}.yaml")
    assert from_yaml == PRESETS[name]()


def test_tiny_preset_is_the_agreed_shape():
    cfg = PRESETS["tiny"]()
    assert cfg.model.codebook_size == 1024 and cfg.model.grid(32, 32) == (8, 8) and cfg.data.image_size == 32


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="image_size=30 is not a multiple"):
        load_train_config("tiny", ["data.image_size=30"])
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_train_config("tiny", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_train_config("tiny", ["max_steps"])
    with pytest.raises(ConfigError, match="not a preset"):
        load_train_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"source": "folder"}}))
    with pytest.raises(ConfigError, match=r"data\.folder is required"):
        load_train_config(tmp_path / "bad.yaml")


# ----------------------------------------------------------------------------- CLI
def test_cli_train_then_encode(tmp_path, tracking, capsys):
    from mmada.cli import main

    out = tmp_path / "run"
    rc = main(["vq", "train", "--preset", "tiny", "--output-dir", str(out), "--max-steps", "3",
               "--set", "val_every=3", "--set", "data.num_train=32", "--set", "data.num_val=16",
               "--set", "grid_images=2", "--tracking-uri", tracking])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and Path(summary["export_dir"]) == out / "tokenizer"

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


def test_tiny_preset_name_requires_a_trained_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception, match="mmada vq train --preset tiny"):
        load_tokenizer_model("tiny")

