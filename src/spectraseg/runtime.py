"""Process-wide memory settings that make CPU inference and training faster.

A forward pass allocates its activations afresh. By default glibc maps every large block
(over a threshold that it adapts up to 32 MiB) straight from the kernel and gives it back on
free, and it trims the top of its heap past 128 KiB, so a large tile or batch faults in
fresh, zeroed pages on every call: on 2 cores that halved the U-Net's speed on 8 x 256^2
batches and made one 1536^2 tile 15% slower than 480^2 tiles
(``benchmarks/bench_predict.py``). :func:`tune_memory` (called by the ``spectraseg``
command before torch starts, and on the workers of the local Dask cluster it starts) has
glibc serve every block from its heap (``M_MMAP_MAX`` 0) and keep up to 1 GiB free at the
top of it (``M_TRIM_THRESHOLD``): freed blocks of any size are reused without faults, and
tiles and batches of any size then run at the model's full speed per pixel (measured by
the same benchmark: 8 x 256^2 1.7 -> 3.8 Mpx/s; 1536^2 3.4 -> 4.0 Mpx/s).

The cost is memory held after it is freed: the process keeps what it freed below the top of
the heap for reuse, so a peak that fragments the heap stays resident (``benchmarks/bench_train.py``:
default training peaks at 1.19 GB instead of 1.03 GB, one batch of 64 patches at 2.76 GB
instead of 2.31 GB; whole-scene prediction is unchanged at 1.9 GB). Skipped with
``SPECTRASEG_TUNE_MEMORY=0`` (glibc's defaults), where the user set any of
``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``, and on
systems without glibc.

:func:`resolve_device` turns the ``auto``/``cpu``/``cuda`` setting of training and
prediction into a torch device.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import TYPE_CHECKING

from spectraseg.errors import ConfigError

if TYPE_CHECKING:  # torch is imported lazily: tune_memory must run before it loads
    import torch

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
SWITCH = "SPECTRASEG_TUNE_MEMORY"
"""Environment variable; ``0`` turns :func:`tune_memory` off."""


def tune_memory() -> bool:
    """Apply the settings above to this process; returns whether they took effect.

    Safe to call at any time and more than once; it only changes later allocations.
    """
    if os.environ.get(SWITCH, "1") == "0" or any(k in os.environ for k in USER_SETTINGS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _glibc() -> ctypes.CDLL | None:
    """glibc with its malloc tuning calls, or None (not Linux, or another libc, e.g. musl:
    nothing to tune)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def release_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``; nothing
    elsewhere). :func:`tune_memory` keeps freed blocks for reuse, so a long job whose steps
    each peak in turn (a streamed scene's strips, then its vectorisation and COGs) would
    hold every step's fragments: calling this between steps keeps the resident size at
    one step's peak, for one round of page faults per step (not per batch)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int = 0, what: str = "train.device") -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` -> a torch device.

    ``cuda`` (and ``auto`` with CUDA) gives GPU ``local_rank % device_count``; ``cuda:K`` a
    given GPU. ``what`` names the setting in errors. Raises ConfigError for an unknown name,
    for ``cuda`` without CUDA and for a GPU index out of range.
    """
    import torch

    base, sep, index = name.partition(":")
    if base not in DEVICES or (sep and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"{what} must be auto, cpu, cuda or cuda:K, got {name!r}")
    if base == "cpu" or (base == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{what} is {name!r} but CUDA is not available")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(f"{what} is {name!r} but there are only {count} CUDA device(s)")
    return torch.device("cuda", int(index) if index else local_rank % count)


BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic."""


def _cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bfloat16 natively (one of :data:`BF16_FLAGS`). False where
    the flags cannot be read (not Linux): there bfloat16 is emulated, slower than float32."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_FLAGS)
    except OSError:
        pass
    return False


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision training autocasts to on ``device`` with ``train.amp``, or None
    (float32 throughout).

    float16 on CUDA (with a GradScaler). bfloat16 on a CPU with native bfloat16 instructions
    (AVX512-BF16 or AMX): a U-Net training step on 2 cores takes 148 instead of 195 ms
    (width 16, 4 x 128^2 patches of 31 channels: 24.6 instead of 20.5 patches/s, measured
    on the dstl-lite cache); bfloat16 has float32's range, so no loss scaling is needed.
    None on other CPUs, where bfloat16 is emulated and slower than float32.
    """
    import torch

    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None
