"""Process memory settings applied by the ``spectraseg`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spectraseg.runtime import tune_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")

# Run in a fresh interpreter (the settings are process-wide). glibc's mallinfo2: hblkhd is the
# bytes in blocks mapped on their own, which go back to the kernel when freed and fault in
# afresh on the next allocation. Prints whether a 64 MiB block was mapped on its own, and
# whether torch had been imported by then.
PROBE = """
import ctypes, sys
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd',
                'usmblks', 'fsmblks', 'uordblks', 'fordblks', 'keepcost')]
libc = ctypes.CDLL('libc.so.6')
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == 'tune':
    from spectraseg.runtime import tune_memory
    tune_memory()
elif sys.argv[1] == 'command':
    from spectraseg.cli import main
    try:
        main(['synth', '--help'])
    except SystemExit:
        pass
p = libc.malloc(64 << 20)
print()  # after any help text
print(libc.mallinfo2().hblkhd >= 64 << 20, 'torch' in sys.modules)
libc.free(p)
"""


def _probe(mode: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SPECTRASEG_"))}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**base, **env}, capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip(f"no glibc mallinfo2 here: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout.split()[-2:]


def test_large_blocks_come_from_the_heap_after_tuning() -> None:
    assert _probe("none") == ["True", "False"]  # glibc's default: mapped on its own
    assert _probe("tune") == ["False", "False"]


def test_the_command_tunes_memory_before_torch_starts() -> None:
    assert _probe("command") == ["False", "False"]


def test_tuning_is_left_to_the_user_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _probe("tune", SPECTRASEG_TUNE_MEMORY="0") == ["True", "False"]
    assert _probe("tune", MALLOC_TRIM_THRESHOLD_="131072") == ["True", "False"]
    monkeypatch.setenv("SPECTRASEG_TUNE_MEMORY", "0")
    assert tune_memory() is False


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_resolve_device_names_and_errors() -> None:
    import torch

    from spectraseg.errors import ConfigError
    from spectraseg.runtime import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if _cuda() else torch.device("cpu"))
    for bad in ("tpu", "cpu:0", "cuda:x", "cuda:", "CUDA"):
        message = rf"--device must be auto, cpu, cuda or cuda:K, got '{bad}'"
        with pytest.raises(ConfigError, match=message):
            resolve_device(bad, what="--device")
    if _cuda():
        n = torch.cuda.device_count()
        assert resolve_device("cuda") == torch.device("cuda", 0)
        assert resolve_device("cuda", local_rank=n + 1) == torch.device("cuda", (n + 1) % n)
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
        with pytest.raises(ConfigError, match=rf"only {n} CUDA device"):
            resolve_device(f"cuda:{n}")
    else:
        for name in ("cuda", "cuda:0"):
            with pytest.raises(ConfigError, match=f"train.device is '{name}' but CUDA is not"):
                resolve_device(name)


def test_release_memory_returns_freed_heap_pages() -> None:
    """With the heap kept (as tune_memory keeps it), a freed 200 MB array stays resident
    until release_memory gives its pages back."""
    code = """
import numpy as np, psutil
from spectraseg.runtime import release_memory, tune_memory
assert tune_memory()
rss = lambda: psutil.Process().memory_info().rss >> 20
a = np.ones(200 * 2**20, np.uint8); b = np.ones(1, np.uint8)  # b pins the heap's top
del a
kept = rss()
release_memory()
print(kept - rss())
"""
    # Without the user's (or another library's) malloc settings, which turn tuning off.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SPECTRASEG_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 150, out.stdout


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 avx512vl", True),
        ("fpu sse avx2 amx_tile amx_bf16", True),
        ("fpu sse avx2 avx512f avx512bw avx512vl", False),  # bf16 only emulated
        ("fpu sse avx512_bf16x", False),  # whole flags only
    ],
)
def test_native_bf16_reads_the_cpu_flags(tmp_path: Path, flags: str, native: bool) -> None:
    from spectraseg.runtime import _cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\n")
    assert _cpu_has_native_bf16(str(info)) is native
    assert _cpu_has_native_bf16(str(tmp_path / "absent")) is False


def test_autocast_dtype_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from spectraseg import runtime

    assert runtime.autocast_dtype(torch.device("cuda", 0)) == torch.float16
    monkeypatch.setattr(runtime, "_cpu_has_native_bf16", lambda: True)
    assert runtime.autocast_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(runtime, "_cpu_has_native_bf16", lambda: False)
    assert runtime.autocast_dtype(torch.device("cpu")) is None
