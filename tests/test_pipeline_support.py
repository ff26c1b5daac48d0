"""Helpers for the pipeline / serve / UI tests (no tests here): a tiny project clone and its params.

``make_clone(dest)`` copies the files the pipeline needs into a fresh git repository (one commit)
— the same as a fresh clone, without touching the working tree's git state — and writes a
``params.yaml`` shrunk to seconds per stage (1-layer model, a handful of steps, small data), in the
same lean format as the project's (the config files it names, what it changes in them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COPY = ["mmada", "flows", "configs", "data_specs", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore",
        "pyproject.toml", ".gitignore"]
MODEL = {"n_layers": 1, "d_model": 64, "n_heads": 2, "n_kv_heads": 2, "mlp_hidden_size": 128}
SAMPLES = {"prompts": ["What is 2 + 3?"], "captions": ["a red circle", "a blue square"],
           "sampler": {"steps": 4, "gen_length": 8, "block_length": 8}, "image_sampler": {"steps": 2}}


def tiny_params(steps: int = 4) -> dict:
    """The project's params.yaml (the same config files it names) with every stage cut to seconds on a
    2-core CPU: more changes in the same lean format."""
    from mmada.config import read_yaml
    from mmada.pipeline.params import merge, profile_params

    d = profile_params("demo", REPO)
    for name, n in {"arithmetic": 120, "shapes": 80, "shapes_vqa": 16}.items():
        d["curate"][name].update(sources={"0": {"n": n}}, shards={"max_samples": 60})
    d["curate"]["digits"]["shards"] = {"max_samples": 1000}
    d["vq"] = merge(d["vq"], {"trainer": {"max_steps": 3, "val_every_n_steps": 3, "log_every_n_steps": 1},
                              "tracking": {"log_system_metrics": False},
                              "data": {"num_train": 64, "num_val": 16, "batch_size": 16}}, "vq")
    for stage in ("pretrain", "sft", "grpo"):
        streams = read_yaml(REPO / d[stage]["config"])["data"]["streams"]
        grpo = stage == "grpo"
        changes = {"trainer": {"max_steps": 2 if grpo else steps, "log_every_n_steps": 1, "val_every_n_steps": None},
                   "data": {"val_batches": 1, "streams": {t: {"batch_size": 1 if grpo else 2} for t in streams}},
                   "optim": {"warmup_steps": 1}, "checkpoint": {"every_n_steps": 2 if grpo else steps},
                   "samples": SAMPLES, "tracking": {"log_system_metrics": False}}
        if grpo:
            changes["grpo"] = {"num_generations": 2, "num_iterations": 1,
                               "sampler": {"steps": 4, "gen_length": 8, "block_length": 8}, "image_sampler": {"steps": 2}}
        d[stage] = merge(d[stage], changes, stage)
    d["pretrain"]["model"]["overrides"] = MODEL
    d["evaluate"].update(math_n=2, mmu_n=1, t2i_n=2, recon_n=2, batch_size=4,
                         sampler={"steps": 4, "gen_length": 8, "block_length": 8}, image_sampler={"steps": 2})
    return d


def copy_configs(dest: Path) -> Path:
    """The config files params.yaml names (configs/, data_specs/), copied into ``dest``."""
    for rel in ("configs", "data_specs"):
        shutil.copytree(REPO / rel, dest / rel, dirs_exist_ok=True)
    return dest


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_clone(dest: Path, params: dict | None = None) -> Path:
    """A git repository at ``dest`` holding the pipeline's files (one commit) and tiny params."""
    src = dest.with_name(dest.name + "-origin")
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in COPY:
        s, t = REPO / rel, src / rel
        t.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, t, ignore=ignore)
        else:
            shutil.copy2(s, t)
    (src / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    git(src, "init", "-q", "-b", "main")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "tiny pipeline")
    git(dest.parent, "clone", "-q", str(src), dest.name)
    return dest


def env_for(clone: Path, **extra: str) -> dict[str, str]:
    """Environment of a process run in the clone: its own MLflow store, our interpreter first on PATH."""
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
                "MMADA_CACHE": str(clone.parent / "mmada-cache")})
    env.update(extra)
    return env


def mmada(clone: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900,
          check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "mmada", *args], cwd=clone, env=env or env_for(clone),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"mmada {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def dvc(clone: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900,
        check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, env=env or env_for(clone),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-4000:]}")
    return r
