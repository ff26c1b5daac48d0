"""What every ``mmada`` subcommand's argument parsing shares: one-line usage errors and bounded integers.

A bad flag value is reported like every other user error (``mmada.errors``): one line naming the flag,
exit status 2, no traceback::

    mmada t2i: error: argument --max-text-len: must be an integer >= 3, got '0' (see `mmada t2i --help`)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``--help`` still prints the usage); subparsers
    made from it are of this class too (argparse uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low`` (argparse names the flag in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def print_error(exc: BaseException, *, debug: bool) -> None:
    """``error: MESSAGE`` on stderr; with ``--debug``, the traceback first."""
    if debug:
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)
