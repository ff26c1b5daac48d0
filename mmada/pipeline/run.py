"""``mmada pipeline``: the whole tiny pipeline through ``dvc repro``, with progress and a final summary.

    mmada pipeline                    # dvc repro: runs what changed, then prints the summary
    mmada pipeline --until sft        # dvc repro sft (sft and everything it needs)
    mmada pipeline --force            # dvc repro --force (re-run every stage)

DVC decides what to run (params, code and data hashes in dvc.lock); each stage's command is
``python -m mmada pipeline stage NAME``. Before starting, the parameters are validated (errors name
the field) and ``dvc.yaml`` is checked against :mod:`mmada.pipeline.stages`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mmada.errors import MMaDAError
from mmada.pipeline import stages as S
from mmada.pipeline.env import child_env
from mmada.pipeline.params import load_params
from mmada.pipeline.summary import summary_text


def check_project(root: Path) -> None:
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        raise MMaDAError(f"{root.resolve()} is not the project root (no dvc.yaml / .dvc/): run `mmada pipeline` "
                         "from the repository's top folder")
    if (root / "dvc.yaml").read_text() != S.dvc_yaml_text():
        raise MMaDAError("dvc.yaml differs from the stage list in mmada/pipeline/stages.py: regenerate it with "
                         "`mmada pipeline generate`")
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if r.returncode != 0:
        raise MMaDAError(f"{root.resolve()} is not inside a git repository; DVC records the pipeline state in git "
                         "(clone the repository, or `git init` here)")


def run_pipeline(*, until: str | None = None, force: bool = False, dry: bool = False, root: Path = Path("."),
                 summary: bool = True) -> int:
    check_project(root)
    load_params(root / S.PARAMS_FILE, root)  # a bad value fails here, naming the field, before DVC starts
    if until is not None:
        S.get_stage(until)
    wanted = S.upstream_closure([until]) if until else list(S.STAGE_NAMES)
    argv = [sys.executable, "-m", "dvc", "repro"]
    if force:
        argv.append("--force")
    if dry:
        argv.append("--dry")
    if until:
        argv.append(until)
    print(f"pipeline: {len(wanted)} stages ({' -> '.join(wanted)}); stages whose inputs did not change are "
          "skipped", flush=True)
    t0 = time.monotonic()
    rc = subprocess.run(argv, cwd=root, env=child_env({"MMADA_PIPELINE_RUNNER": "dvc"})).returncode
    took = time.monotonic() - t0
    if rc != 0:
        raise MMaDAError(f"`dvc repro` failed (status {rc}) after {took:.0f} s; the failing stage's error is above. "
                         "Fix it and run `mmada pipeline` again: finished stages are not re-run")
    print(f"pipeline finished in {took / 60:.1f} min", flush=True)
    if summary and not dry:
        print(summary_text(root), flush=True)
    return 0
