"""Shared fixtures-as-functions for the training, loading and tracking tests (no tests here).

Curated shard sets and a migrated MLflow SQLite store are built once per test session under
pytest's base temp dir and copied/reused by the test modules (creating an MLflow database runs
its migrations, ~10 s on a busy CPU; copying a migrated one is instant).

    data = curated_data(tmp_path_factory)   # {"arithmetic", "shapes", "shapes_codes", "shapes_vqa", "vq"} → dirs
    uri = fresh_mlflow_uri(tmp_path_factory, tmp_path)   # sqlite:///<tmp_path>/mlflow.db
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def one_thread():
    """Fixture body: torch on one thread. Tiny models gain nothing from two, and on a shared 2-core
    machine OpenMP's spin-waiting makes two-thread steps up to 50× slower and erratic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (servers, torchrun rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def kill_when(cmd: list[str], path: Path, timeout: float = 240) -> subprocess.Popen:
    """Start ``cmd`` (from the repository root) and SIGKILL it as soon as ``path`` exists: a crash mid-run."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env())
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc


TINY_OVERRIDES = {"n_layers": 1, "d_model": 64, "n_heads": 2, "n_kv_heads": 2, "mlp_hidden_size": 128}


def _build_once(target: Path, build) -> Path:
    if not target.exists():
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        build(tmp)
        os.replace(tmp, target)
    return target


def curated_data(tmp_path_factory) -> dict[str, str]:
    """Small built-in shard sets (several shards per split) and a random tiny image tokenizer."""

    def build(root: Path) -> None:
        from mmada.data.curate import curate
        from mmada.data.specs import load_spec
        from mmada.models.vq import MAGVITv2
        from mmada.training.vq import TINY_MODEL

        torch.manual_seed(0)
        MAGVITv2(TINY_MODEL).save_pretrained(root / "vq")  # untrained, but a real tokenizer
        specs = {
            "arithmetic": ("data_specs/arithmetic.yaml", ["sources.0.n=160", "split.val_fraction=0.25",
                                                           "shards.max_samples=20"]),
            "shapes": ("data_specs/shapes.yaml", ["sources.0.n=80", "split.val_fraction=0.25",
                                                   "shards.max_samples=20"]),
            "shapes_codes": ("data_specs/shapes.yaml", ["name=shapes_codes", "sources.0.n=40",
                                                         "shards.max_samples=20", "vq.enabled=true",
                                                         f"vq.model={root / 'vq'}", "vq.batch_size=16",
                                                         "vq.device=cpu"]),
            "shapes_vqa": ("data_specs/shapes_vqa.yaml", ["sources.0.n=30", "shards.max_samples=30"]),
        }
        repo = Path(__file__).resolve().parents[1]
        for name, (spec, overrides) in specs.items():
            curate(load_spec(str(repo / spec), overrides), out=str(root / name))

    base = Path(tmp_path_factory.getbasetemp())
    root = _build_once(base / "mmada-train-data", build)
    return {p.name: str(p) for p in root.iterdir()}


def fresh_mlflow_uri(tmp_path_factory, tmp_path: Path) -> str:
    """A new (empty, migrated) MLflow SQLite store in ``tmp_path``."""

    def build(root: Path) -> None:
        from mlflow import MlflowClient

        MlflowClient(f"sqlite:///{root / 'mlflow.db'}").search_experiments()  # runs the migrations

    base = Path(tmp_path_factory.getbasetemp())
    template = _build_once(base / "mlflow-template", build)
    tmp_path.mkdir(parents=True, exist_ok=True)
    shutil.copy(template / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tiny_config(shards: dict[str, str], out: Path, uri: str, *, stage: str = "pretrain", steps: int = 20,
                **sections) -> dict:
    """A 1-layer tiny training config on the curated test data (a dict for ``load_train_config``)."""
    if stage == "pretrain":
        streams = {"t2i": {"manifests": [shards["shapes"], shards["shapes_codes"]], "batch_size": 4, "max_text_len": 16},
                   "lm": {"manifests": [shards["arithmetic"]], "batch_size": 2, "max_text_len": 160},
                   "mmu": {"manifests": [shards["shapes"]], "batch_size": 2, "max_text_len": 48}}
    else:
        streams = {"chat": {"manifests": [shards["arithmetic"]], "batch_size": 2, "max_text_len": 160},
                   "mmu": {"manifests": [shards["shapes_vqa"]], "batch_size": 2, "max_text_len": 144},
                   "t2i": {"manifests": [shards["shapes"]], "batch_size": 2, "max_text_len": 16}}
    cfg = {
        "name": out.name, "stage": stage, "seed": 0, "output_dir": str(out),
        "model": {"preset": "tiny", "overrides": dict(TINY_OVERRIDES)},
        "data": {"streams": streams, "image_tokenizer": shards["vq"], "image_resolution": 32, "shuffle_buffer": 20,
                 "val_batches": 1},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "min_lr_scale": 0.1},
        "trainer": {"accelerator": "cpu", "max_steps": steps, "log_every_n_steps": 1},
        "checkpoint": {"every_n_steps": 5},
        "tracking": {"uri": uri, "log_system_metrics": False, "registered_model": "mmada-test"},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg
