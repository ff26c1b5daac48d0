"""The one ``mmada`` command.

Each area of the library contributes its subcommands through a ``register(subparsers)``
function; the subcommand handlers are the same library functions that Prefect flows and DVC
stages call, so there is exactly one code path per job.

    mmada pipeline                  # the whole tiny pipeline (what `make demo` runs)
    mmada generate CKPT --prompt …  # text / chat generation with the diffusion sampler
    mmada t2i CKPT --prompt …       # text-to-image token generation
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mmada.errors import MMaDAError

# Modules that contribute subcommands (imported lazily by `main`, heavy imports stay inside
# the handlers so `mmada --help` is fast).
COMMAND_MODULES = [
    "mmada.cli.sample",
    "mmada.cli.curate",
    "mmada.cli.eval",
    "mmada.cli.vq",
    "mmada.cli.train",
    "mmada.cli.pipeline",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmada", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except MMaDAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
