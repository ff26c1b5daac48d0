"""Fault injection for the fault suite's subprocesses: a crash at an exact point of the real code.

Put this folder first on ``PYTHONPATH`` of a process tree (Python imports ``sitecustomize`` at start
in every interpreter of the tree: ``mmada pipeline`` → ``dvc repro`` → the stage → the training job)
and set:

    MMADA_FAULT_AFTER   "module:Qualified.name": act when that function returns
    MMADA_FAULT_ARGV    act only in a process whose command line contains this text (e.g. "work/pretrain/")
    MMADA_FAULT_ACTION  "kill": SIGKILL this process there (kill -9 at that very line);
                        "stop": write MMADA_FAULT_MARKER ({"pid", "pgid", "sid"}) and SIGSTOP this process,
                        so the test can kill -9 every process of the tree while it stands still there

Nothing happens without ``MMADA_FAULT_AFTER``; the target module is patched right after it is first
imported (no module is imported early).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import json
import os
import signal
import sys


def _act() -> None:
    if os.environ.get("MMADA_FAULT_ARGV", "") not in " ".join(sys.argv):
        return
    if os.environ.get("MMADA_FAULT_ACTION", "kill") == "stop":
        marker = os.environ["MMADA_FAULT_MARKER"]
        with open(marker + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), "pgid": os.getpgid(0), "sid": os.getsid(0)}, f)
        os.replace(marker + ".tmp", marker)
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        os.kill(os.getpid(), signal.SIGKILL)


def _wrap(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        _act()
        return out

    return wrapper


def _patch(module, qualname: str) -> None:
    *owner_path, name = qualname.split(".")
    owner = module
    for part in owner_path:
        owner = getattr(owner, part)
    setattr(owner, name, _wrap(getattr(owner, name)))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, module: str, qualname: str) -> None:
        self.module, self.qualname = module, qualname

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)  # find the real spec, then wrap its loader
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, qualname = spec.loader, self.qualname

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                _patch(module, qualname)

        spec.loader = Loader()
        sys.meta_path.remove(self)
        return spec


_target = os.environ.get("MMADA_FAULT_AFTER")
if _target:
    _module, _, _qualname = _target.partition(":")
    sys.meta_path.insert(0, _PatchOnImport(_module, _qualname))
