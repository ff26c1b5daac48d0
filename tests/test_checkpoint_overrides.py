"""Config overrides on an existing checkpoint: training from ``model.init`` and sampling from the CLI.

A checkpoint whose config.json states the wrong number of image tokens (16, where the 32 px tiny
image tokenizer gives 64) cannot train on images until ``model.overrides.num_vq_tokens`` corrects
it; fields that decide the weights are refused, naming the field.
"""

from __future__ import annotations

import json

import pytest
import torch

from mmada.cli import main
from mmada.errors import ConfigError
from mmada.models import MMaDAConfig, MMaDAModelLM
from mmada.tokenization import load_text_tokenizer
from mmada.training import load_train_config, train
from tests.test_training_support import (
    TINY_OVERRIDES,
    curated_data,
    fresh_mlflow_uri,
    one_thread,
    tiny_config,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


@pytest.fixture(scope="module")
def wrong_config_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt16")
    torch.manual_seed(0)
    MMaDAModelLM(MMaDAConfig.from_preset("tiny", **TINY_OVERRIDES, num_vq_tokens=16)).save_pretrained(d)
    load_text_tokenizer("builtin").save_pretrained(d)
    return d


def test_training_from_a_checkpoint_with_corrected_num_vq_tokens(data, wrong_config_checkpoint, tmp_path_factory,
                                                                 tmp_path):
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    streams = {"t2i": {"manifests": [data["shapes"]], "batch_size": 2, "max_text_len": 16}}

    def cfg(name, **model):
        return load_train_config(tiny_config(data, tmp_path / name, uri, stage="sft", steps=2,
                                             model={"preset": None, "overrides": {},
                                                    "init": str(wrong_config_checkpoint), **model},
                                             data={"streams": streams, "val_batches": 0}))

    with pytest.raises(ConfigError, match=r"gives 64 codes per image .* 16 image slots"):
        train(cfg("as-released"))
    result = train(cfg("corrected", overrides={"num_vq_tokens": 64}))
    assert result.global_step == 2
    saved = json.loads((result.export_dir / "config.json").read_text())
    assert saved["num_vq_tokens"] == 64 and saved["n_layers"] == 1 and saved["d_model"] == 64
    with pytest.raises(ConfigError, match=r"model.overrides.n_layers cannot be changed on a checkpoint"):
        cfg("bad", overrides={"n_layers": 2})


def test_cli_config_override(wrong_config_checkpoint, capsys):
    base = ["t2i", str(wrong_config_checkpoint), "--prompt", "a red circle", "--steps", "2", "--device", "cpu"]
    assert main(base) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["codes"]) == 16
    assert main([*base, "--config-override", "num_vq_tokens=64"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["codes"]) == 64
    assert main([*base, "--config-override", "d_model=32"]) == 2
    assert "--config-override.d_model cannot be changed on an existing checkpoint" in capsys.readouterr().err
    assert main([*base, "--config-override", "num_vq_tokens"]) == 2
    assert "expected FIELD=VALUE" in capsys.readouterr().err


def test_eval_config_override(data, wrong_config_checkpoint, tmp_path, capsys):
    """mmada eval t2i: as released the model makes 16-token (16 px) images; corrected, 64-token 32 px ones."""
    from PIL import Image

    def run(name, *extra):
        args = ["eval", "t2i", "--checkpoint", str(wrong_config_checkpoint), "--image-tokenizer", data["vq"],
                "--n", "2", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / f"{name}.json"),
                "--images-dir", str(tmp_path / name), *extra]
        assert main(args) == 0
        capsys.readouterr()
        assert json.loads((tmp_path / f"{name}.json").read_text())["n"] == 2
        return [Image.open(p).size for p in sorted((tmp_path / name).rglob("*.png"))]

    released, corrected = run("released"), run("corrected", "--config-override", "num_vq_tokens=64")
    # the image grid (two images side by side, each over a 12 px verdict label) of 16 px images as
    # released, of 32 px ones corrected
    assert released == [(70, 48)] and corrected == [(134, 80)]
