from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spectraseg.cli import main


def test_inspect_real_data_lists_twenty_scenes(dstl_lite, capsys) -> None:
    assert main(["inspect", str(dstl_lite), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["scenes"]) == 20 and out["labelled"] == 20
    assert all(set(s["products"]) == {"RGB", "A"} for s in out["scenes"])
    assert out["scenes"][0]["products"]["RGB"]["dtype"] == "uint8"
    assert 0.2 < out["class_share"]["6"] < 0.5  # crops dominate


def test_inspect_text(dstl_lite, capsys) -> None:
    assert main(["inspect", str(dstl_lite)]) == 0
    out = capsys.readouterr().out
    assert "20 scene(s), 20 labelled" in out and "6010_1_2" in out and "Crops" in out


def test_user_error_is_one_line_without_traceback(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spectraseg", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"spectraseg inspect: error: dataset root {tmp_path / 'missing'} does not exist "
        "or is not a directory"
    ]
    assert "Traceback" not in proc.stderr


def test_unknown_verb_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["nosuchverb"])
    assert exc.value.code == 2
