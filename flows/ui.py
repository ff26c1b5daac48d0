"""``mmada serve`` (= ``mmada ui`` = ``make ui``): the Prefect UI with runnable deployments, the MLflow UI, the playground.

Starts four processes, all bound to 127.0.0.1 and configured for an offline machine (no
analytics / telemetry; see :mod:`mmada.pipeline.env`):

1. ``prefect server start`` (UI + API, SQLite under ``runs/prefect``),
2. ``mlflow server`` on the project's store (``runs/mlflow.db``, artifacts in ``runs/mlartifacts``),
3. ``mmada playground`` (Gradio; skipped when the ``playground`` extra is not installed),
4. ``python -m flows.serve``: every pipeline deployment, so each flow starts from the UI's Run button.

It prints the URLs once everything answers; Ctrl-C (or SIGTERM) stops them all. If one of them
dies, the others are stopped and the exit status is non-zero. Logs: ``runs/prefect/*.log``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flows.serve import deployment_names
from mmada.errors import MMaDAError
from mmada.pipeline.env import child_env
from mmada.pipeline.tracking import TRAINING_VIEW

HOST = "127.0.0.1"


@dataclass
class ServeOptions:
    prefect_port: int = 4200
    mlflow_port: int = 5000
    playground_port: int = 7860
    home: str = "runs/prefect"
    mlflow: bool = True
    playground: bool = True
    deployments: bool = True
    startup_timeout: float = 180.0
    params: str = "params.yaml"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _get(url: str, timeout: float = 3.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read() if r.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


def _post_json(url: str, body: dict, timeout: float = 5.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, json.JSONDecodeError):
        return None


@dataclass
class _Proc:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, n: int = 30) -> str:
        try:
            return "\n  ".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _die_with_parent() -> None:
    """Linux: the child gets SIGINT if `mmada serve` itself dies (even by SIGKILL), so no server is orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start(name: str, argv: list[str], env: dict[str, str], log: Path) -> _Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    fh.close()
    return _Proc(name, proc, log)


def _stop(procs: list[_Proc], grace: float = 15.0) -> None:
    for p in reversed(procs):
        if p.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in reversed(procs):
        try:
            p.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()


def _wait(what: _Proc, ready, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what.proc.poll() is not None:
            raise MMaDAError(f"{what.name} exited with status {what.proc.returncode} while starting; its log "
                             f"({what.log}):\n  {what.tail()}")
        if ready():
            return
        time.sleep(0.5)
    raise MMaDAError(f"{what.name} did not become ready within {timeout:.0f} s; its log ({what.log}):\n  "
                     f"{what.tail()}")


def serve(opts: ServeOptions, *, on_ready=None) -> int:
    """Start the servers and the deployments; block until Ctrl-C/SIGTERM or a child dies."""
    from mmada.pipeline.params import load_params
    from mmada.tracking import artifact_root_for, default_tracking_uri

    root = Path.cwd()
    if opts.deployments:
        if not (root / "flows" / "stages.py").is_file():
            raise MMaDAError(f"{root} is not the project root (no flows/stages.py): run `mmada serve` from the "
                             "repository's top folder")
        load_params(root / opts.params)  # a bad params.yaml fails here, naming the field
    ports = [("Prefect", opts.prefect_port, "--prefect-port")]
    if opts.mlflow:
        ports.append(("MLflow", opts.mlflow_port, "--mlflow-port"))
    playground = opts.playground and importlib.util.find_spec("gradio") is not None
    if playground:
        ports.append(("playground", opts.playground_port, "--playground-port"))
    for _what, port, flag in ports:
        if not port_free(port):
            raise MMaDAError(f"port {port} on {HOST} is in use (another `mmada serve`?): stop that process or pick "
                             f"another port with {flag}")
    home = Path(opts.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    api = f"http://{HOST}:{opts.prefect_port}/api"
    ui = f"http://{HOST}:{opts.prefect_port}"
    mlflow_ui = f"http://{HOST}:{opts.mlflow_port}"
    playground_ui = f"http://{HOST}:{opts.playground_port}"
    tracking = default_tracking_uri()
    env = child_env({"PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_API_PORT": str(opts.prefect_port),
                     "PREFECT_SERVER_API_HOST": HOST, "PREFECT_UI_URL": ui, "MLFLOW_TRACKING_URI": tracking,
                     "MMADA_MLFLOW_UI": mlflow_ui, "MMADA_PLAYGROUND_UI": playground_ui})
    procs: list[_Proc] = []
    stopping = {"signal": None}

    def on_term(signum, _frame):
        stopping["signal"] = signum
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"starting the Prefect server on {ui} (home {home}) …", flush=True)
        server = _start("prefect server", [sys.executable, "-m", "prefect", "server", "start", "--host", HOST,
                                           "--port", str(opts.prefect_port)], env, home / "server.log")
        procs.append(server)
        if opts.mlflow:
            artifacts = artifact_root_for(tracking)
            argv = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(opts.mlflow_port),
                    "--backend-store-uri", tracking, "--workers", "1"]
            if artifacts:
                argv += ["--artifacts-destination", artifacts]
            print(f"starting the MLflow UI on {mlflow_ui} (store {tracking}) …", flush=True)
            procs.append(_start("mlflow server", argv, env, home / "mlflow.log"))
        if playground:
            print(f"starting the playground on {playground_ui} …", flush=True)
            pg = _start("playground", [sys.executable, "-m", "mmada", "playground", "--port",
                                       str(opts.playground_port)], env, home / "playground.log")
            procs.append(pg)
        elif opts.playground:
            print("the playground is not installed (pip install -e '.[playground]'): not started", flush=True)
        _wait(server, lambda: _get(f"{api}/health") is not None, opts.startup_timeout)
        if opts.mlflow:
            _wait(procs[1], lambda: _get(f"{mlflow_ui}/health") is not None, opts.startup_timeout)
        if playground:
            _wait(pg, lambda: _get(f"{playground_ui}/") is not None, opts.startup_timeout)
        names: list[str] = []
        if opts.deployments:
            names = deployment_names(str(root / opts.params))
            print(f"serving {len(names)} deployments …", flush=True)
            served = _start("flow server", [sys.executable, "-m", "flows.serve", "--params", opts.params], env,
                            home / "serve.log")
            procs.append(served)

            def registered() -> bool:
                got = _post_json(f"{api}/deployments/filter", {"limit": 200})
                have = {d["name"] for d in got or []}
                return {n.split("/", 1)[1] for n in names} <= have and len(got or []) >= len(names)

            _wait(served, registered, opts.startup_timeout)
        lines = ["", "mmada serve: ready (Ctrl-C stops everything)",
                 f"  Prefect UI   {ui}   (Deployments -> a flow -> Run -> Custom run)"]
        if opts.mlflow:
            lines.append(f"  MLflow UI    {mlflow_ui}/#/experiments?{TRAINING_VIEW}   (Experiments / Models -> mmada-tiny)")
        if playground:
            lines.append(f"  playground   {playground_ui}   (pick a version; Text / Understanding / Text-to-image)")
        if names:
            lines.append("  deployments  " + ", ".join(names))
        lines.append(f"  logs         {home}/{{server,mlflow,playground,serve}}.log")
        print("\n".join(lines), flush=True)
        if on_ready is not None:
            on_ready()
        while True:
            for p in procs:
                if p.proc.poll() is not None:
                    raise MMaDAError(f"{p.name} stopped unexpectedly (status {p.proc.returncode}); stopping the "
                                     f"others. Its log ({p.log}):\n  {p.tail()}")
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
        return 0
    finally:
        _stop(procs)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if procs:
            print("stopped: " + ", ".join(p.name for p in procs), flush=True)
