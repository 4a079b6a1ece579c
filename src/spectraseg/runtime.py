"""Process-wide memory settings that make CPU inference and training faster.

A forward pass allocates its activations afresh. glibc maps every block over its mmap
threshold (32 MiB at most) straight from the kernel and gives it back on free, and it trims
the heap when its top grows past a threshold, so a large batch faults in fresh, zeroed
pages on every call: on 2 cores this halved the U-Net's speed on 8 x 256^2 batches and took
a fifth of whole-scene prediction (``benchmarks/bench_predict.py``). :func:`tune_memory`
(called by the ``spectraseg`` command before torch starts):

- sets ``THP_MEM_ALLOC_ENABLE=1`` (read by torch at its first CPU allocation): buffers of
  2 MB and more get transparent huge pages, 512x fewer faults for the blocks still mapped;
- on glibc, raises the mmap threshold to its 32 MiB maximum and the trim threshold to 1 GiB,
  so freed blocks below 32 MiB stay in the heap and are reused without faults.

Either is skipped where the user set it (``THP_MEM_ALLOC_ENABLE``, ``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``). Peak memory does not change; memory freed after the peak stays
with the process until it exits.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""
TRIM_THRESHOLD = 1 << 30


def tune_memory() -> dict[str, bool]:
    """Apply the settings above to this process; returns which ones took effect.

    Call before torch allocates anything (the huge-page setting is read once).
    """
    done = {"huge_pages": False, "malloc": False}
    if "THP_MEM_ALLOC_ENABLE" not in os.environ:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        done["huge_pages"] = True
    user_set = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ)
    if sys.platform.startswith("linux") and not user_set:
        try:
            libc = ctypes.CDLL("libc.so.6")
            done["malloc"] = bool(
                libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            )
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
            pass
    return done
