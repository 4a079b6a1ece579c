"""Atomic output files: a reader never sees half-written output (temporary file + rename)."""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    An interrupted or failed write leaves ``path`` untouched (old content or absent) and
    removes the temporary file, so readers never see half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600; outputs get the mode any other new file would get.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_temporaries(
    directory: str | os.PathLike[str], name: str = "*", recursive: bool = False
) -> int:
    """Delete the temporary files :func:`atomic_output` left in ``directory`` (and below,
    with ``recursive``) for outputs called ``name`` (a glob; ``*``: all); how many.

    A process killed while writing (``kill -9`` runs no clean-up) leaves its hidden
    ``.{name}.*.tmp`` file behind; the final name never holds half-written content. Call
    this only on outputs this process owns and is about to write again.
    """
    root = Path(directory)
    if not root.is_dir():
        return 0
    pattern = f".{name}.*.tmp"
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    stale = [p for p in found if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8); ``.gz`` paths are gzip-compressed."""
    with atomic_output(path) as tmp:
        if str(path).endswith(".gz"):
            with gzip.open(tmp, "wt", encoding="utf-8", newline="") as f:
                f.write(text)
        else:
            tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def temporary_name_accepted() -> Iterator[None]:
    """Silence GDAL's warnings that a file written under its :func:`atomic_output` name
    (``.name.XXXX.tmp``) lacks its format's extension (a GeoPackage's ``.gpkg``): the file
    gets its real name when complete."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"(The filename extension|.*non conformant file extension)", RuntimeWarning
        )
        yield
