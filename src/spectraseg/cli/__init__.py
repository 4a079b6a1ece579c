"""The ``spectraseg`` command line: one verb per pipeline stage, thin over the library.

Each verb lives in ``spectraseg.cli.<verb>`` with ``register(subparsers)`` (adds its parser
and sets ``func``) and ``run(args) -> int``. Verb modules import heavy libraries (torch,
dask) inside ``run`` so that ``spectraseg --help`` and light verbs start fast.

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

from spectraseg import __version__
from spectraseg.errors import SpectrasegError
from spectraseg.runtime import tune_memory

VERBS: tuple[str, ...] = (
    "synth",
    "inspect",
    "align",
    "stats",
    "train",
    "predict",
    "evaluate",
    "submit",
    "demo",
)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available verb registered."""
    parser = argparse.ArgumentParser(
        prog="spectraseg",
        description="Multispectral satellite imagery to vector maps of ground features.",
    )
    parser.add_argument("--version", action="version", version=f"spectraseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="VERB", required=True)
    for verb in VERBS:
        name = f"spectraseg.cli.{verb}"
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spectraseg`` and ``python -m spectraseg``; returns the exit status."""
    tune_memory()  # before any verb imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except SpectrasegError as exc:
        print(f"spectraseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"spectraseg {args.command}: interrupted", file=sys.stderr)
        return 130
