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


def test_every_verb_takes_its_help_and_description_from_its_docstring(capsys) -> None:
    import importlib

    from spectraseg.cli import VERBS

    def text(s: str) -> str:  # argparse rewraps, also after hyphens
        return "".join(s.split())

    with pytest.raises(SystemExit):
        main(["--help"])
    top = text(capsys.readouterr().out)
    for verb in VERBS:
        doc = importlib.import_module(f"spectraseg.cli.{verb}").__doc__
        help_line, _, description = doc.strip().partition("\n")
        assert text(help_line) in top
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert text(description) in text(capsys.readouterr().out)


@pytest.fixture
def tiny_dataset(tmp_path):
    """One synthetic scene of the smallest size synth allows."""
    from spectraseg.data.synth import MIN_SIZE, synthesize

    root = tmp_path / "data"
    synthesize(root, scenes=1, size=(MIN_SIZE, MIN_SIZE), seed=0, progress=False)
    return root


def test_align_workers_0_runs_in_this_process(tiny_dataset, tmp_path, capsys) -> None:
    cache = tmp_path / "cache"
    argv = ["align", str(tiny_dataset), "--cache", str(cache), "--workers", "0", "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("aligned 1, skipped 0 (already cached), failed 0")
    assert (cache / "manifest.json").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["align", "DATA", "--cache", "CACHE"],
        ["predict", "DATA", "--run", "RUN", "--out", "PRED"],
        ["demo", "--out", "OUT"],
    ],
)
def test_negative_workers_is_one_line_naming_the_flag(argv, tmp_path, capsys) -> None:
    """Checked before the verb runs, so the paths need not exist."""
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    assert main([*argv, "--workers", "-1"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"spectraseg {argv[0]}: error: --workers must be at least 0, got -1"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["align", "D", "--cache", "C", "--workers", "2", "--scheduler", "tcp://x:1"],
         "give either --workers or --scheduler, not both"),
        (["train", "--threads", "-2", "--print-config"], "--threads must be at least 0, got -2"),
        (["predict", "D", "--run", "R", "--out", "P", "--batch", "0"],
         "--batch must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_bad_shared_option_value_is_one_line_and_exit_1(argv, message, capsys) -> None:
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"spectraseg {argv[0]}: error: {message}"]


def test_progress_flag_has_two_spellings_in_every_verb_that_takes_it() -> None:
    from spectraseg.cli import build_parser

    parser = build_parser()
    for verb in ("synth", "align", "train", "predict", "demo"):
        base = {"synth": ["--out", "x"], "align": ["d", "--cache", "c"]}.get(verb, [])
        base = base or (["d", "--run", "r", "--out", "p"] if verb == "predict" else [])
        assert parser.parse_args([verb, *base]).progress is True
        for flag in ("--no-progress", "--quiet"):
            assert parser.parse_args([verb, *base, flag]).progress is False
