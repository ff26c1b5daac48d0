"""Shared test fixtures: one Prefect test server per session and a local S3 endpoint (moto).

``prefect_test_harness`` starts Prefect's temporary API server (SQLite in a temp dir, ~10 s) once
for the whole session; flow tests request it. ``s3_endpoint`` runs moto's S3 server on
127.0.0.1 and points s3fs/boto at it through the environment and fsspec's config.
"""

from __future__ import annotations

import os

import pytest

for _k, _v in {"HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def prefect_test_harness():
    """Run flows against a temporary Prefect API server (started once per session); yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness as harness

    with harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; s3:// URLs in this session go to it. Yields the endpoint URL."""
    import fsspec
    from moto.server import ThreadedMotoServer

    from tests.test_training_support import free_port

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"client_kwargs": {"endpoint_url": url}, "key": "testing", "secret": "testing"}
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    try:
        yield url
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        server.stop()


# ------------------------------------------------------------------------------------------------
# The pipeline as users drive it (tests/test_pipeline_*.py, tests/test_serve.py)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow honours DO_NOT_TRACK only when "true"


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """A fresh clone of the project (own git repo) where the tiny pipeline ran once via `mmada pipeline`.

    Yields ``(clone_path, output_of_the_run)``: every stage, tokenizer to evaluate.
    """
    from tests.test_pipeline_support import make_clone, mmada

    clone = make_clone(tmp_path_factory.mktemp("pipeline") / "clone")
    run = mmada(clone, "pipeline")
    yield clone, run.stdout + run.stderr


@pytest.fixture(scope="session")
def fake_slurm(tmp_path_factory):
    """A folder with fake ``sbatch``/``srun`` executables: sbatch records its arguments in ``calls.log``,
    prints a job id and runs the batch script here (``--output``/``--chdir`` honoured), returning its status."""
    import stat

    d = tmp_path_factory.mktemp("fake-slurm")
    (d / "sbatch").write_text("""#!/bin/bash
echo "$@" >> "$(dirname "$0")/calls.log"
script="${@: -1}"
out=$(grep -m1 '^#SBATCH --output=' "$script" | cut -d= -f2-)
dir=$(grep -m1 '^#SBATCH --chdir=' "$script" | cut -d= -f2-)
job=$(( (RANDOM % 90000) + 10000 ))
echo "$job"
cd "$dir" || exit 1
SLURM_JOB_ID=$job SLURM_JOB_NODELIST=localhost bash "$script" > "$out" 2>&1
""")
    (d / "srun").write_text('#!/bin/bash\necho "srun $*" >> "$(dirname "$0")/calls.log"\nexec "$@"\n')
    for name in ("sbatch", "srun"):
        (d / name).chmod((d / name).stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return d
