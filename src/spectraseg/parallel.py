"""Running one task per scene, in this process or on a Dask cluster.

``spectraseg align`` and ``spectraseg predict`` share this: a local cluster of
single-threaded worker processes (``--workers N``), an existing cluster
(``--scheduler ADDRESS``), or a plain loop in this process. Task functions must live in an
importable module (Dask pickles them by reference). A failure in one scene is yielded with
its exception and never stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from spectraseg.errors import ConfigError, SpectrasegError
from spectraseg.runtime import tune_memory

SCHEDULER_TIMEOUT = "20s"

Job = tuple[str, tuple[Any, ...]]
"""``(key, args)``: the task runs as ``fn(*args)``; results are yielded with ``key``."""


class Runner:
    """Runs a task function over jobs; yields ``(key, result, error)`` as they finish.

    ``threads`` is the number of threads each task should use (the cores of the machine
    shared among local workers), or None for the library defaults.
    """

    def __init__(self, client: Any = None, threads: int | None = None) -> None:
        self.client = client
        self.threads = threads

    @property
    def kind(self) -> str:
        """``serial`` or ``dask``."""
        return "serial" if self.client is None else "dask"

    def run(
        self, fn: Callable[..., Any], jobs: Sequence[Job]
    ) -> Iterator[tuple[str, Any, BaseException | None]]:
        """Run ``fn(*args)`` for every job, yielding results in completion order."""
        if self.client is None:
            for key, args in jobs:
                try:
                    yield key, fn(*args), None
                except Exception as exc:  # one bad scene must not stop the others
                    yield key, None, exc
            return
        from distributed import as_completed  # dask loads in ~1 s: only when a cluster runs

        futures = {
            self.client.submit(
                fn, *args, pure=False, key=f"{fn.__name__}-{key}-{os.getpid()}-{time.time_ns()}"
            ): key
            for key, args in jobs
        }
        for fut in as_completed(list(futures)):
            key = futures[fut]
            try:
                yield key, fut.result(), None
            except Exception as exc:
                yield key, None, exc
            finally:
                fut.release()


def check_workers(workers: int | None, scheduler: str | None) -> None:
    """ConfigError when both a worker count and a scheduler are given, or a negative count:
    the one rule every stage that runs on Dask (and the command line) applies."""
    if workers is not None and scheduler is not None:
        raise ConfigError("give either --workers or --scheduler, not both")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {workers}")


@contextlib.contextmanager
def open_runner(workers: int | None, scheduler: str | None) -> Iterator[Runner]:
    """A :class:`Runner`: in this process (``workers`` None or 0, no scheduler), on a local
    cluster of ``workers`` single-threaded processes, or on the cluster at ``scheduler``.

    Raises ConfigError for both or a negative count (:func:`check_workers`), and when the
    scheduler is unreachable.
    """
    check_workers(workers, scheduler)
    if scheduler is None and not workers:
        yield Runner(None, None)
        return
    from distributed import Client, LocalCluster  # dask loads in ~1 s: only for a cluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Dask scheduler at {scheduler} ({exc})"
            ) from None
        with client:
            yield Runner(client, None)
        return
    assert workers is not None
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never collide with another cluster
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        # Worker processes are fresh interpreters: glibc's settings are not inherited.
        client.run(tune_memory)
        yield Runner(client, max(1, (os.cpu_count() or 1) // workers))


def describe(exc: BaseException) -> str:
    """One line for a failed task: a user error's own sentence, else type and first line."""
    if isinstance(exc, SpectrasegError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
