"""End to end on CPU: tiny pretrain → SFT from the registry, two processes as two nodes, kill + resume.

Everything is real: curated WebDataset shards, Lightning on CPU (gloo for the two-node run), an
MLflow SQLite store in a temp dir. The model is a 1-layer tiny preset so each run takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from mmada.training import load_train_config, train
from mmada.training.callbacks import AtomicModelCheckpoint, clean_partials, find_resume_checkpoint
from mmada.training.optim import lr_factor
from tests.test_training_support import (
    curated_data,
    free_port,
    fresh_mlflow_uri,
    kill_when,
    one_thread,
    subprocess_env,
    tiny_config,
)

REPO = Path(__file__).resolve().parents[1]

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


def loss_history(client: MlflowClient, run_id: str, key: str = "train/loss") -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def assert_falls(losses: list[float], k: int = 5, factor: float = 0.8) -> None:
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    assert last < factor * first, f"loss did not fall: first {k} mean {first:.3f}, last {k} mean {last:.3f}"


def test_pretrain_then_sft_from_the_registry(data, tmp_path_factory, tmp_path, capsys):
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    samples = {"prompts": ["What is 2 + 3?"], "captions": ["a red circle", "a blue square"],
               "sampler": {"steps": 4, "gen_length": 8, "block_length": 8}, "image_sampler": {"steps": 2}}
    pre_cfg_dict = tiny_config(data, tmp_path / "pre", uri, steps=30, samples=samples)
    pre_cfg = load_train_config(pre_cfg_dict)
    pre = train(pre_cfg)
    client = MlflowClient(uri)
    assert pre.global_step == 30 and pre.model_version == "1" and pre.registered_model == "mmada-test"
    assert_falls(loss_history(client, pre.run_id))

    run = client.get_run(pre.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["stage"] == "pretrain"
    assert {"train/loss_t2i", "train/loss_lm", "train/loss_mmu", "train/acc_t2i", "train/lr",
            "perf/tokens_per_s", "val/loss_t2i", "val/loss_lm"} <= set(run.data.metrics)
    inputs = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"t2i:shapes", "t2i:shapes_codes", "lm:arithmetic", "mmu:shapes"}
    arts = {a.path for a in client.list_artifacts(pre.run_id, "samples/step_00000030")}
    assert {"samples/step_00000030/answers.json", "samples/step_00000030/t2i_grid.png"} <= arts

    mv = client.get_model_version_by_alias("mmada-test", "pretrain")
    manifest_sha = run.data.tags["data.lm.arithmetic"]
    assert str(mv.version) == "1" and mv.tags["stage"] == "pretrain" and mv.tags["data.lm.arithmetic"] == manifest_sha
    assert mv.tags["config_hash"] == pre_cfg.config_hash() and mv.tags["git_commit"] and "parent_model_version" not in mv.tags
    exported = load_file(str(pre.export_dir / "model.safetensors"))
    ckpt = torch.load(pre.checkpoint_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 30
    for k, v in exported.items():  # the registered export is the final checkpoint's weights
        assert torch.equal(ckpt["state_dict"][f"model.{k}"], v), k
    check_checkpoint_export(_write_config(pre_cfg_dict, tmp_path / "pre.yaml"), pre, exported, capsys)

    sft_cfg = load_train_config(tiny_config(data, tmp_path / "sft", uri, stage="sft", steps=30,
                                            model={"preset": None, "overrides": {},
                                                   "init": "models:/mmada-test@pretrain"}))
    sft = train(sft_cfg)
    assert sft.global_step == 30 and sft.model_version == "2"
    assert_falls(loss_history(client, sft.run_id))
    smv = client.get_model_version_by_alias("mmada-test", "sft")
    assert str(smv.version) == "2" and smv.tags["parent_model_version"] == "mmada-test/1"
    assert smv.tags["init"] == "models:/mmada-test@pretrain" and smv.tags["stage"] == "sft"
    init = load_file(str(tmp_path / "sft" / "init" / "mmada-test-v1" / "model.safetensors"))
    assert all(torch.equal(init[k], exported[k]) for k in exported)  # SFT started from the @pretrain weights
    assert str(client.get_model_version_by_alias("mmada-test", "pretrain").version) == "1"


def check_checkpoint_export(config: Path, result, final: dict, capsys) -> None:
    """``mmada train CONFIG --export-checkpoint``: an earlier step as a loadable save_pretrained directory."""
    from mmada.cli import main
    from mmada.models import MMaDAModelLM

    early = result.checkpoint_dir / "step00000020.ckpt"
    assert main(["train", str(config), "--export-checkpoint", str(early)]) == 0
    out = Path(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["export_dir"])
    assert out == result.checkpoint_dir.parent / "exports" / "step00000020"
    state = torch.load(early, map_location="cpu", weights_only=True)["state_dict"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights.keys() == final.keys() and (out / "tokenizer.json").is_file()
    assert all(torch.equal(state[f"model.{k}"], v) for k, v in weights.items())
    assert any(not torch.equal(weights[k], final[k]) for k in final)  # step 20, not the final weights
    model = MMaDAModelLM.from_pretrained(out)
    assert torch.equal(model.state_dict()["model.transformer.wte.weight"], weights["model.transformer.wte.weight"])
    assert main(["train", str(config), "--export-checkpoint", str(result.checkpoint_dir / "step99.ckpt")]) == 2
    assert "step99.ckpt' does not exist" in capsys.readouterr().err




def _write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_two_processes_as_two_nodes(data, tmp_path_factory, tmp_path):
    """torchrun --nnodes 2 (one process each, gloo on 127.0.0.1): different data, same steps, one MLflow run."""
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    steps = 6
    cfg = tiny_config(data, tmp_path / "mn", uri, steps=steps, data={"trace_keys": True, "val_batches": 0},
                      trainer={"num_nodes": 2, "devices": 1, "strategy": "ddp"},
                      tracking={"log_system_metrics": True, "system_metrics_interval": 1})
    path = _write_config(cfg, tmp_path / "mn.yaml")
    port = free_port()
    torchrun = str(Path(sys.executable).parent / "torchrun")
    procs = [
        subprocess.Popen([torchrun, "--nnodes", "2", "--node-rank", str(r), "--nproc-per-node", "1",
                          "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "mmada", "train", str(path)],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=subprocess_env())
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    traces = [json.loads((tmp_path / "mn" / "data_trace" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [t["world_size"] for t in traces] == [2, 2]
    assert [t["global_step"] for t in traces] == [steps, steps]
    assert [len(t["batches"]) for t in traces] == [steps, steps]
    for a, b in zip(traces[0]["batches"], traces[1]["batches"]):
        assert a != b  # at every step the two nodes train on different rows
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # one run for the whole job
    run = runs[0]
    assert run.data.tags["num_nodes"] == "2" and run.data.tags["world_size"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == steps
    assert {"node0.host", "node1.host"} <= set(run.data.tags)  # both nodes joined the same run
    assert str(client.get_model_version_by_alias("mmada-test", "pretrain").run_id) == run.info.run_id


def test_kill_and_resume(data, tmp_path_factory, tmp_path):
    """SIGKILL mid-run, then the same command again: continues from last.ckpt, ends at the same step."""
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    steps, every = 60, 5
    cfg = tiny_config(data, tmp_path / "k", uri, steps=steps, data={"trace_keys": True, "val_batches": 0},
                      checkpoint={"every_n_steps": every, "keep_last": 1}, optim={"warmup_steps": 10})
    path = _write_config(cfg, tmp_path / "k.yaml")
    cmd = [sys.executable, "-m", "mmada", "train", str(path)]
    ckpts = tmp_path / "k" / "checkpoints"
    proc = kill_when(cmd, ckpts / f"step{2 * every:08d}.ckpt")
    assert proc.returncode == -signal.SIGKILL
    last = find_resume_checkpoint(ckpts).path
    state = torch.load(last, map_location="cpu", weights_only=True)  # never torn: it loads
    killed_at = state["global_step"]
    assert killed_at % every == 0 and every <= killed_at < steps  # last may lag the newest step file
    run_id = json.loads((tmp_path / "k" / "mlflow_run.json").read_text())["run_id"]

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-3000:]
    final = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == steps
    trace = json.loads((tmp_path / "k" / "data_trace" / "rank0.json").read_text())
    assert trace["global_step"] == steps and len(trace["batches"]) == steps - killed_at
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".partial-")]
    # same MLflow run, optimizer/scheduler continued: the lr after resuming follows the schedule
    assert json.loads((tmp_path / "k" / "mlflow_run.json").read_text())["run_id"] == run_id
    client = MlflowClient(uri)
    lrs = {m.step: m.value for m in client.get_metric_history(run_id, "train/lr")}
    for step in (killed_at, steps - 1):
        assert lrs[step] == pytest.approx(3e-3 * lr_factor(step, warmup=10, max_steps=steps, min_lr_scale=0.1))
    assert client.get_run(run_id).info.status == "FINISHED"
    logged = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    assert 0 in logged and set(range(killed_at, steps)) <= logged  # (the last queued before the kill may be lost)


class _Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)


class _DiskFullOnLast(L.pytorch.plugins.TorchCheckpointIO):
    """Writes half of ``last`` at step 3, then fails: what a crash in the middle of a save leaves."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if checkpoint["global_step"] == 3 and "last" in os.path.basename(path):
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError("No space left on device")
        super().save_checkpoint(checkpoint, path, storage_options)


def test_a_failed_save_never_replaces_last(tmp_path):
    ckpt = AtomicModelCheckpoint(dirpath=str(tmp_path), filename="step{step:08d}", every_n_train_steps=1,
                                 save_last=True, monitor="step", mode="max", save_top_k=-1,
                                 auto_insert_metric_name=False, enable_version_counter=False)
    trainer = L.Trainer(max_steps=5, callbacks=[ckpt], plugins=[_DiskFullOnLast()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(_Linear())
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2  # the previous complete save
    found = find_resume_checkpoint(tmp_path)  # the newest that loads: step 3's file was complete before last failed
    assert found.path == tmp_path / "step00000003.ckpt" and found.global_step == 3 and not found.skipped
    assert (tmp_path / ".partial-last.ckpt").exists()  # the torn bytes never got the real name
    assert clean_partials(tmp_path) == [".partial-last.ckpt"]


@pytest.mark.gpu
def test_fsdp_training_on_gpu(data, tmp_path_factory, tmp_path):
    """The real FSDP path: block-wrapped, activation-checkpointed, bf16-mixed, sharded checkpoint, full export."""
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)
    cfg = load_train_config(tiny_config(
        data, tmp_path / "fsdp", uri, steps=12,
        trainer={"accelerator": "gpu", "devices": 1, "strategy": "fsdp", "precision": "bf16-mixed"},
        model={"overrides": {"n_layers": 2, "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 256}},
        checkpoint={"every_n_steps": 6}))
    result = train(cfg)
    assert result.global_step == 12 and result.model_version == "1"
    assert (result.checkpoint_dir / "last.ckpt").is_dir()  # sharded (DCP) checkpoint directory
    from mmada.models import MMaDAModelLM

    model = MMaDAModelLM.from_pretrained(result.export_dir)
    assert model.config.n_layers == 2 and all(torch.isfinite(p).all() for p in model.parameters())
    assert_falls(loss_history(MlflowClient(uri), result.run_id), k=3, factor=0.9)


def test_fused_adamw_with_amp_clips_gradients(data, tmp_path):
    """bf16-mixed + fused AdamW + clipping (what a GPU run uses; on GPU Lightning's AMP plugin alone raises)."""
    from mmada.data.loading import ShardDataModule
    from mmada.models import MMaDAConfig
    from mmada.tokenization import SpecialTokenIds, load_text_tokenizer
    from mmada.training.module import DiffusionModule
    from mmada.training.trainer import build_trainer
    from tests.test_training_support import TINY_OVERRIDES

    class Fused(DiffusionModule):
        def _fused_optimizer(self) -> bool:
            return True

    cfg = load_train_config(tiny_config(data, tmp_path / "fused", "sqlite:///unused.db", steps=3,
                                        trainer={"precision": "bf16-mixed"}, optim={"max_grad_norm": 0.01}))
    tok = load_text_tokenizer("builtin")
    module = Fused(cfg, model_config=MMaDAConfig.from_preset("tiny", **TINY_OVERRIDES),
                   special=SpecialTokenIds.from_tokenizer(tok))
    norms = []

    class Record(L.Callback):
        def on_train_start(self, trainer, pl_module):  # grads after clipping = at the end of step()
            opt = trainer.optimizers[0]
            assert opt.defaults["fused"]
            opt.register_step_post_hook(lambda o, *_: norms.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for g in o.param_groups for p in g["params"]])))))

    dm = ShardDataModule(cfg.data, tok, num_vq_tokens=64, batches_per_epoch=3)
    trainer = build_trainer(cfg, callbacks=[Record()], enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert len(norms) == 3 and max(norms) <= 0.01 * 1.001  # clipped to max_grad_norm
