"""Atomic output files (``spectraseg.data.files``)."""

from __future__ import annotations

import pytest

from spectraseg.data.files import atomic_output


def test_atomic_output_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
