"""The UniGRPO stage end to end on CPU: from a registered @sft version to a registered @grpo version,
and under DDP with two processes. Real curated shards, Lightning, and an MLflow SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from mmada.diffusion.settings import ImageSamplerSettings, SamplerSettings
from mmada.training import load_train_config, train
from tests.test_training_support import (
    curated_data,
    fresh_mlflow_uri,
    one_thread,
    subprocess_env,
    tiny_config,
)

REPO = Path(__file__).resolve().parents[1]
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

GRPO = {"num_generations": 2, "num_iterations": 2, "beta": 0.01, "think": True,
        "sampler": {"steps": 8, "gen_length": 8, "block_length": 8, "temperature": 1.0},
        "image_sampler": {"steps": 2, "guidance_scale": 1.0},
        "reward_funcs": ["math_correctness", "format", "mmu_correctness", "shapes_t2i"],
        "reward_weights": {"math_correctness": 2.0, "format": 0.5, "mmu_correctness": 2.0, "shapes_t2i": 1.0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return curated_data(tmp_path_factory)


@pytest.fixture(scope="module")
def sft_parent(data, tmp_path_factory):
    """A (very short) SFT run registered as mmada-test@sft: the GRPO stage's starting point."""
    root = tmp_path_factory.mktemp("grpo-parent")
    uri = fresh_mlflow_uri(tmp_path_factory, root)
    res = train(load_train_config(tiny_config(data, root / "sft", uri, stage="sft", steps=2)))
    assert res.model_version is not None
    return uri, res


def grpo_config(data, out: Path, uri: str, steps: int = 4) -> dict:
    cfg = tiny_config(data, out, uri, stage="sft", steps=steps)
    cfg.update(stage="grpo", model={"init": "models:/mmada-test@sft"}, grpo=dict(GRPO))
    cfg["optim"] = {"lr": 1e-4, "warmup_steps": 0, "scheduler": "constant", "weight_decay": 0.0}
    cfg["data"] = {**cfg["data"], "trace_keys": True}
    cfg["samples"] = {"every_n_steps": 2}
    return cfg


def test_grpo_stage_registers_a_grpo_version_with_lineage(data, sft_parent, tmp_path, monkeypatch):
    import mmada.training.grpo as grpo_mod

    seen: dict[str, list[float]] = {"t2i": [], "text": []}
    for name, key in (("rollout_t2i", "t2i"), ("rollout_text", "text")):
        real = getattr(grpo_mod, name)

        def spy(*a, _real=real, _key=key, **kw):
            seen[_key].append(kw["settings"])
            return _real(*a, **kw)

        monkeypatch.setattr(grpo_mod, name, spy)
    uri, parent = sft_parent
    cfg = grpo_config(data, tmp_path / "grpo", uri)
    # Every sampler option reaches the rollouts unchanged (fast text sampling, a cached image prompt).
    text = {**GRPO["sampler"], "cache": "dual", "prompt_cache": "once", "threshold": 0.9, "stop_at_eos": True}
    image = {**GRPO["image_sampler"], "temperature": 0.5, "cache": "prefix", "temperature_decay": "linear"}
    cfg["grpo"].update(sampler=text, image_sampler=image)
    res = train(load_train_config(cfg))
    assert res.global_step == 4
    assert seen["t2i"] == [ImageSamplerSettings(**image)] * 2
    assert seen["text"] and set(seen["text"]) == {SamplerSettings(**text)}
    client = MlflowClient(uri)
    mv = client.get_model_version_by_alias("mmada-test", "grpo")
    assert str(mv.version) == res.model_version and int(mv.version) > int(parent.model_version)
    assert mv.tags["parent_model_version"] == f"mmada-test/{parent.model_version}"
    assert json.loads(mv.tags["grpo.reward_funcs"]) == GRPO["reward_funcs"]
    run = client.get_run(res.run_id)
    for task in ("chat", "mmu", "t2i"):
        for key in ("reward", "frac_reward_zero_std", "kl", "policy_loss", "clip_ratio/region_mean",
                    "completions/mean_length"):
            assert f"{task}/{key}" in run.data.metrics, f"{task}/{key}"
    assert "chat/rewards/math_correctness/mean" in run.data.metrics
    assert "t2i/rewards/shapes_t2i/mean" in run.data.metrics
    # Rollouts every μ = 2 steps: two rollouts in four steps, each with its completions table.
    trace = json.loads((tmp_path / "grpo" / "data_trace" / "rank0.json").read_text())
    assert len(trace["rollouts"]) == 2
    tables = sorted((tmp_path / "grpo" / "grpo_samples").glob("*/completions.json"))
    rows = json.loads(tables[0].read_text())
    assert {r["task"] for r in rows} == {"chat", "mmu", "t2i"} and all("reward" in r for r in rows)
    assert (tables[0].parent / "t2i_grid.png").is_file()


def test_grpo_under_ddp_with_two_processes(data, sft_parent, tmp_path):
    uri, _ = sft_parent
    cfg = grpo_config(data, tmp_path / "ddp", uri, steps=2)
    cfg["trainer"].update(devices=2, strategy="ddp", accelerator="cpu")
    path = tmp_path / "grpo_ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = subprocess.run([sys.executable, "-m", "mmada", "train", str(path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=subprocess_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    traces = [json.loads((tmp_path / "ddp" / "data_trace" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(t["world_size"] == 2 and t["global_step"] == 2 for t in traces)
    # Each rank rolls out its own prompts (whole groups, so advantages stay per group).
    assert traces[0]["rollouts"] != traces[1]["rollouts"]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("mmada-test", "grpo").version) == summary["model_version"]
    assert client.get_run(summary["run_id"]).info.status == "FINISHED"
