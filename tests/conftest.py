"""Shared test fixtures: one Prefect test server per session and a local S3 endpoint (moto).

``prefect_test_harness`` starts Prefect's temporary API server (SQLite in a temp dir, ~10 s) once
for the whole session; flow tests request it. ``s3_endpoint`` runs moto's S3 server on
127.0.0.1 and points s3fs/boto at it through the environment and fsspec's config.
"""

from __future__ import annotations

import os
import socket

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; s3:// URLs in this session go to it. Yields the endpoint URL."""
    import fsspec
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
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
