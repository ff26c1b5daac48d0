"""The one ``mmada`` command.

Each module of this package adds its subcommands with a ``register(subparsers)`` function; the
handlers call the same library functions that Prefect flows and DVC stages call, so there is exactly
one code path per job.

    mmada pipeline                  # the whole tiny pipeline (what `make demo` runs)
    mmada generate CKPT --prompt …  # text / chat generation with the diffusion sampler
    mmada t2i CKPT --prompt …       # text-to-image token generation
    mmada playground [MODEL]        # try registered versions in the browser (Gradio)

A user error (a bad flag, config field, data record or checkpoint) is one line, ``error: …`` naming
the value, with exit status 2 and no traceback; ``mmada --debug …`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import sys

from mmada.cli import curate, pipeline, playground, sample, train, vq
from mmada.cli import eval as evaluate
from mmada.cli._args import Parser, print_error
from mmada.errors import MMaDAError

COMMAND_MODULES = (sample, curate, evaluate, vq, train, pipeline, playground)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mmada", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error, not only its message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except MMaDAError as exc:
        print_error(exc, debug=args.debug)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
