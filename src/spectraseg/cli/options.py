"""Options that several verbs take: one definition each, with one meaning.

A verb adds them with the ``add_*`` helpers. :func:`check` (run by
:func:`spectraseg.cli.main` before every verb) checks the values of those a verb has, so
that a bad value is one sentence naming the flag and exit 1, like any other user error.
"""

from __future__ import annotations

import argparse
from typing import Any

from spectraseg.errors import ConfigError
from spectraseg.parallel import check_workers

MINIMUMS: dict[str, int] = {"workers": 0, "threads": 0}
"""The smallest value of each shared count option, by ``dest``."""


def at_least(flag: str, value: float | None, minimum: int) -> None:
    """ConfigError naming ``flag`` when ``value`` is given and below ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}, got {value}")


def check(args: argparse.Namespace) -> None:
    """Check the shared options present in ``args``; ConfigError naming the flag at fault."""
    for dest, minimum in MINIMUMS.items():
        at_least(f"--{dest}", getattr(args, dest, None), minimum)
    check_workers(getattr(args, "workers", None), getattr(args, "scheduler", None))


def add_workers(
    p: argparse.ArgumentParser,
    default_help: str = "0",
    default: int | None = None,
    scheduler: bool = False,
) -> None:
    """``--workers N``: N local Dask worker processes, 0 this process; ``default_help`` says
    what happens without it. With ``scheduler``, also ``--scheduler ADDRESS``."""
    p.add_argument(
        "--workers",
        type=int,
        default=default,
        metavar="N",
        help="run on a local Dask cluster of N single-threaded worker processes; 0: in this "
        f"process (default: {default_help})",
    )
    if scheduler:
        p.add_argument(
            "--scheduler",
            metavar="ADDRESS",
            help="run on an existing Dask cluster (e.g. tcp://host:8786); its workers must "
            "see the input and output directories at the same paths",
        )


def runner_args(args: argparse.Namespace) -> dict[str, Any]:
    """``workers`` and ``scheduler`` for the library (``align_dataset``, ``predict_run``),
    which read 0 and None workers as this process, as the flags do."""
    return {"workers": args.workers, "scheduler": args.scheduler}


def add_threads(p: argparse.ArgumentParser, default_help: str) -> None:
    """``--threads N``: torch CPU threads per process, 0 torch's default."""
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=f"torch CPU threads per process; 0: torch's default (default: {default_help})",
    )


def add_scenes(
    p: argparse.ArgumentParser, flag: str, help: str, default: tuple[str, ...] | None = None
) -> None:
    """A list of scene ids, e.g. ``--images ID [ID ...]``."""
    p.add_argument(flag, nargs="+", default=default, metavar="ID", help=help)


def add_overrides(p: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: config overrides."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.lr=3e-4 or data.val_scenes='[\"6010_1_2\"]' "
        "(TOML value; repeatable)",
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    """``--no-progress`` (or ``--quiet``): ``args.progress`` False."""
    p.add_argument(
        "--no-progress", "--quiet", dest="progress", action="store_false", help="no progress bars"
    )


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: print the result as one JSON document on stdout instead of text."""
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")


def add_seed(p: argparse.ArgumentParser, what: str) -> None:
    """``--seed S``: the random seed of ``what``, 0 by default."""
    p.add_argument("--seed", type=int, default=0, metavar="S", help=f"random seed of {what} (0)")


def add_synthetic(p: argparse._ActionsContainer, scenes: int, size: tuple[int, int]) -> None:
    """The synthetic dataset's ``--scenes``, ``--size`` and ``--regions``."""
    p.add_argument(
        "--scenes", type=int, default=scenes, metavar="N", help=f"number of scenes ({scenes})"
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=size,
        metavar=("H", "W"),
        help=f"RGB size in pixels, varied by a few pixels per scene ({size[0]} {size[1]}; "
        "full size is about 3348 3392)",
    )
    p.add_argument(
        "--regions",
        type=int,
        metavar="R",
        help="number of regions the scenes are spread over (default: ceil(N / 4))",
    )
