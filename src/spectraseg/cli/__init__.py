"""The ``spectraseg`` command line: one verb per pipeline stage, thin over the library.

Each verb lives in ``spectraseg.cli.<verb>``: its docstring's first line is the verb's help
line and the rest its description (both shown by ``--help``); ``add_arguments(parser)`` adds
its own options (those several verbs share come from :mod:`spectraseg.cli.options`) and
``run(args) -> int`` does the work. Verb modules import heavy libraries (torch, dask) inside
``run`` so that ``spectraseg --help`` and light verbs start fast.

User mistakes (:class:`~spectraseg.errors.SpectrasegError`) print one line on stderr and
exit 1; Ctrl-C exits 130; warnings print as ``warning: ...`` lines on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from spectraseg import __version__
from spectraseg.cli import options
from spectraseg.errors import SpectrasegError
from spectraseg.runtime import tune_memory

VERBS: tuple[str, ...] = (
    "synth",
    "inspect",
    "align",
    "stats",
    "train",
    "predict",
    "export",
    "evaluate",
    "submit",
    "demo",
)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"warning: {message}", file=sys.stderr)


def add_verb(sub: argparse._SubParsersAction[argparse.ArgumentParser], verb: str) -> None:
    """Add the parser of ``verb``, built from its module (see the module docstring)."""
    module = importlib.import_module(f"spectraseg.cli.{verb}")
    help_line, _, description = (module.__doc__ or "").strip().partition("\n")
    p = sub.add_parser(verb, help=help_line, description=description.strip() or None)
    module.add_arguments(p)
    p.set_defaults(func=module.run)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available verb registered."""
    parser = argparse.ArgumentParser(
        prog="spectraseg",
        description="Multispectral satellite imagery to vector maps of ground features.",
    )
    parser.add_argument("--version", action="version", version=f"spectraseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for verb in VERBS:
        if importlib.util.find_spec(f"spectraseg.cli.{verb}") is not None:
            add_verb(sub, verb)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spectraseg`` and ``python -m spectraseg``; returns the exit status."""
    tune_memory()  # before any verb imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        options.check(args)
        return int(args.func(args) or 0)
    except SpectrasegError as exc:
        print(f"spectraseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spectraseg {args.command}: interrupted", file=sys.stderr)
        return 130
