"""Old module paths of 0.1, kept for one version: importing one warns, and its names
resolve, on first use, in the modules they moved to."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def moved(
    old: str, new: Sequence[str], extra: Mapping[str, Any] | None = None
) -> Callable[[str], Any]:
    """Warn that module ``old`` is deprecated and return its module ``__getattr__``.

    A name is looked up in ``extra`` (adapters keeping an old signature), then in the
    modules ``new`` in order.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next version: import from "
        f"{', '.join(new)} instead",
        DeprecationWarning,
        stacklevel=3,
    )

    def __getattr__(name: str) -> Any:
        if extra and name in extra:
            return extra[name]
        for module in new:
            mod = importlib.import_module(module)
            if hasattr(mod, name):
                return getattr(mod, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
