"""FSDP2 on CPU: two gloo processes through torchrun, the same code path a GPU node runs.

The tiny pretraining runs twice per strategy (6 steps, then the same command with 12 steps, which
resumes from the step-6 checkpoint: a DCP directory under FSDP2, a file under DDP). DDP and FSDP2
must log the same losses (1e-3) and export the same weights: sharding changes where parameters live,
not what is computed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmada.errors import ConfigError
from mmada.training import load_train_config
from mmada.training.parallelize import build_strategy, fsdp_precision
from tests.test_training_support import (
    curated_data,
    free_port,
    fresh_mlflow_uri,
    one_thread,
    subprocess_env,
    tiny_config,
)

REPO = Path(__file__).resolve().parents[1]

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)




def torchrun(cfg: dict, path: Path, procs: int) -> None:
    path.write_text(yaml.safe_dump(cfg))
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "mmada", "train", str(path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env=subprocess_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def train_twice(data, out: Path, uri: str, strategy: str, procs: int = 2, steps: int = 6,
                **trainer) -> tuple[list[float], dict[str, torch.Tensor]]:
    """``steps`` steps, then twice as many (resuming); returns the logged losses and the exported weights."""
    for n in (steps, 2 * steps):
        cfg = tiny_config(data, out, uri, steps=n, data={"val_batches": 0},
                          trainer={"devices": procs, "strategy": strategy, **trainer},
                          checkpoint={"every_n_steps": 3}, optim={"warmup_steps": 2})
        cfg["tracking"]["registered_model"] = f"mmada-{strategy}"
        torchrun(cfg, out.parent / f"{out.name}-{n}.yaml", procs)
    client = MlflowClient(uri)
    experiment = load_train_config(out.parent / f"{out.name}-{2 * steps}.yaml").experiment
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    history = [m for run in runs for m in client.get_metric_history(run.info.run_id, "train/loss")]
    losses = {m.step: m.value for m in history}
    assert len(history) == len(losses) == 2 * steps  # the second command resumed: nothing trained twice
    return [losses[s] for s in sorted(losses)], load_file(out / "export" / "model.safetensors")


def test_fsdp2_matches_ddp_through_a_resume_and_exports_full_weights(data, tmp_path_factory, tmp_path):
    ddp_losses, ddp_weights = train_twice(data, tmp_path / "ddp", fresh_mlflow_uri(tmp_path_factory, tmp_path / "m1"), "ddp")
    fsdp_losses, fsdp_weights = train_twice(data, tmp_path / "fsdp", fresh_mlflow_uri(tmp_path_factory, tmp_path / "m2"),
                                            "fsdp")
    assert (tmp_path / "fsdp" / "checkpoints" / "last.ckpt" / ".metadata").is_file()  # sharded (DCP) checkpoints
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert len(ddp_losses) == len(fsdp_losses) == 12
    assert fsdp_losses == pytest.approx(ddp_losses, abs=1e-3)
    assert set(fsdp_weights) == set(ddp_weights)  # the official names, gathered from the shards
    for name, w in ddp_weights.items():
        torch.testing.assert_close(fsdp_weights[name], w, atol=1e-4, rtol=1e-3, msg=name)


def test_fsdp_strategy_choices():
    from lightning.pytorch.strategies import ModelParallelStrategy

    path = REPO / "configs/train/8b_pretrain.yaml"
    multi = load_train_config(path, ["trainer.num_nodes=2", "trainer.devices=8"]).trainer
    s = build_strategy(multi, "gpu")
    assert isinstance(s, ModelParallelStrategy)
    assert (s._data_parallel_size, s._tensor_parallel_size, s._save_distributed_checkpoint) == (16, 1, True)
    assert fsdp_precision(multi, "bf16-mixed") == ("32-true", torch.bfloat16)  # FSDP2's own mixed precision
    with pytest.raises(ConfigError, match="NO_SHARD"):
        build_strategy(load_train_config(path, ["trainer.fsdp.sharding_strategy=NO_SHARD"]).trainer, "gpu")
    with pytest.raises(ConfigError, match="16-mixed"):
        fsdp_precision(multi, "16-mixed")


@pytest.mark.gpu
def test_fsdp2_on_one_gpu_matches_a_single_process_run(data, tmp_path_factory, tmp_path):
    """FSDP2 on one GPU trains, checkpoints, resumes and exports with the same losses as the plain run
    (fp32, 2 × 10 steps); in bf16-mixed (FSDP2's MixedPrecisionPolicy) it trains and exports finite weights."""
    gpu = {"accelerator": "gpu", "precision": "32-true"}
    plain, plain_w = train_twice(data, tmp_path / "one", fresh_mlflow_uri(tmp_path_factory, tmp_path / "m1"), "auto",
                                 procs=1, steps=10, **gpu)
    fsdp, fsdp_w = train_twice(data, tmp_path / "fsdp", fresh_mlflow_uri(tmp_path_factory, tmp_path / "m2"), "fsdp",
                               procs=1, steps=10, **gpu)
    assert fsdp == pytest.approx(plain, abs=1e-3)
    for name, w in plain_w.items():
        torch.testing.assert_close(fsdp_w[name], w, atol=1e-3, rtol=1e-3, msg=name)
    bf16, w = train_twice(data, tmp_path / "bf16", fresh_mlflow_uri(tmp_path_factory, tmp_path / "m3"), "fsdp",
                          procs=1, steps=10, accelerator="gpu", precision="bf16-mixed", compile=True)
    assert all(torch.isfinite(torch.tensor(bf16))) and all(torch.isfinite(t).all() for t in w.values())
