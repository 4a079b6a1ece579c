"""Process memory settings applied by the ``spectraseg`` command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spectraseg.runtime import tune_memory


def test_huge_pages_are_asked_for_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    # Recorded first, so the variable is restored (or removed) after the test.
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "unset")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    assert tune_memory()["huge_pages"] is True
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert tune_memory()["huge_pages"] is False
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_malloc_thresholds_are_left_alone_when_the_user_set_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_memory()["malloc"] is False


def test_the_command_sets_huge_pages_before_torch_starts() -> None:
    probe = (
        "import os, sys\n"
        "from spectraseg.cli import main\n"
        "try:\n"
        "    main(['synth', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-2:] == ["1", "False"]
