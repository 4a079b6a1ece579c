"""TOML config into frozen dataclasses: defaults, overrides, errors naming the dotted key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spectraseg.cli import main
from spectraseg.config import (
    Config,
    from_dict,
    load_config,
    parse_override,
    per_class,
    rare_classes,
    to_dict,
    to_toml,
)
from spectraseg.errors import ConfigError
from spectraseg.models.losses import build_loss

REPO = Path(__file__).resolve().parents[1]


def test_defaults_match_the_issue() -> None:
    c = Config()
    assert c.train.batch_size == 4
    assert c.data.val_scenes == ()
    assert c.model.norm == "batch"
    assert c.total_steps == c.train.epochs * c.train.steps_per_epoch
    assert c.train.patch_size % 2**c.model.depth == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.train.lr = 1.0  # type: ignore[misc]


def test_default_toml_file_is_the_defaults() -> None:
    assert load_config(REPO / "configs" / "default.toml") == Config()
    # Every key with the dataclasses' own comments, after the file's header.
    text = (REPO / "configs" / "default.toml").read_text(encoding="utf-8")
    assert text.endswith(to_toml(Config(), comments=True))


def test_example_configs_load() -> None:
    for path in sorted((REPO / "configs").glob("*.toml")):
        load_config(path)


def test_toml_round_trip() -> None:
    c = Config().replace(
        [
            "data.val_scenes=['6010_1_2', '6040_1_0']",
            "data.root=/data/dstl",
            "train.lr=3e-4",
            "loss.pos_weight=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
            "predict.tta=true",
        ]
    )
    text = to_toml(c)
    assert from_dict(tomllib.loads(text)) == c
    assert from_dict(tomllib.loads(to_toml(c, comments=True))) == c
    assert c.loss.pos_weight == tuple(float(v) for v in range(1, 11))  # ints coerced to float
    assert c.data.val_scenes == ("6010_1_2", "6040_1_0")


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(1e-8, 10.0),
    root=st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    steps=st.integers(1, 10**9),
)
def test_round_trip_any_values(lr: float, root: str, steps: int) -> None:
    c = from_dict({"train": {"lr": lr, "steps": steps}, "data": {"root": root}})
    assert from_dict(tomllib.loads(to_toml(c))) == c


def test_override_parsing() -> None:
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("train.steps = 12") == ("train.steps", 12)
    assert parse_override("predict.tta=true") == ("predict.tta", True)
    assert parse_override("data.root=/some/path") == ("data.root", "/some/path")
    assert parse_override('data.root="x y"') == ("data.root", "x y")
    assert parse_override("data.val_scenes=['a','b']") == ("data.val_scenes", ["a", "b"])
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        parse_override("train.lr")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.bogus=1", r"unknown config key 'train.bogus'; train keys are: accumulate"),
        ("bogus.lr=1", r"unknown config key 'bogus.lr'; sections are"),
        ("train.lr=abc", r"config key 'train.lr' must be a number, got 'abc' \(str\)"),
        ("train.batch_size=1.5", r"'train.batch_size' must be an integer, got 1.5"),
        ("train.batch_size=true", r"'train.batch_size' must be an integer, got True"),
        ("train.batch_size=0", r"'train.batch_size' must be >= 1, got 0"),
        ("train.amp=1", r"'train.amp' must be a boolean, got 1"),
        ("model.norm=layer", r"'model.norm' must be one of batch, group, instance, got 'layer'"),
        ("model.width=0", r"'model.width' must be >= 1"),
        ("model.mixstyle=1.5", r"'model.mixstyle' must be in \[0, 1\], got 1.5"),
        ("train.patch_size=100", r"'train.patch_size' must be a positive multiple of .* 16"),
        ("predict.tile=40", r"'predict.tile' must be a positive multiple of .* 16"),
        ("data.val_scenes=3", r"'data.val_scenes' must be a list of strings, got 3"),
        ("data.val_scenes=[1]", r"'data.val_scenes\[0\]' must be a string, got 1"),
        ("loss.pos_weight=[1,-2]", r"'loss.pos_weight' must hold values >= 0"),
        ("predict.thresholds=[0.5, 1.5]", r"'predict.thresholds' must hold values in \[0, 1\]"),
        ("data.norm=global", r"'data.norm' must be one of image, region, dataset"),
        ("loss.jaccard_mode=pixel", r"'loss.jaccard_mode' must be one of batch, present"),
        ("train.device=tpu", r"'train.device' must be one of auto, cpu, cuda"),
        ("data.val_fraction=1.0", r"'data.val_fraction' must be in \[0, 1\)"),
        ("pixel.samples=1", r"config key 'pixel\.samples' must be >= 2, got 1$"),
        (
            "train.rare_classes=[0]",
            r"'train\.rare_classes' must be distinct classes numbered from 1",
        ),
        ("train.rare_classes=[3,3]", r"'train\.rare_classes' must be distinct classes"),
        ("pixel.blend=max", r"'pixel\.blend' must be one of average, tuned, got 'max'$"),
    ],
)
def test_bad_override_names_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config().replace([override])


def test_steps_and_epochs_cannot_both_be_zero() -> None:
    with pytest.raises(ConfigError, match=r"'train\.steps' or train\.epochs must be >= 1"):
        Config().replace(["train.epochs=0"])
    c = Config().replace(["train.epochs=0", "train.steps=7"])
    assert c.total_steps == 7


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*missing.toml does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml is not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[model]\nwidht = 8\n")
    with pytest.raises(ConfigError, match=r"unknown.toml: unknown config key 'model.widht'"):
        load_config(unknown)
    not_table = tmp_path / "nt.toml"
    not_table.write_text("model = 3\n")
    with pytest.raises(ConfigError, match=r"config key 'model' must be a table"):
        load_config(not_table)


def test_overrides_apply_after_the_file_and_paths_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.toml"
    path.write_text('[data]\ncache = "cache"\n[train]\nlr = 0.01\nsteps = 5\n')
    monkeypatch.chdir(tmp_path)
    c = load_config(path, ["train.lr=0.02", "data.root=data"])
    assert c.train.lr == 0.02 and c.train.steps == 5
    assert c.data.cache == str(tmp_path.resolve() / "cache")
    assert c.data.root == str(tmp_path.resolve() / "data")
    assert c.data.stats == ""  # empty paths stay empty


def test_cli_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[model]\nwidth = 8\n")
    assert main(["train", "--config", str(path), "--set", "train.lr=5e-4", "--print-config"]) == 0
    out = capsys.readouterr().out
    c = from_dict(tomllib.loads(out))
    assert c.model.width == 8 and c.train.lr == 5e-4
    assert to_dict(c)["train"]["batch_size"] == 4


def test_cli_bad_key_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--set", "train.lrr=1", "--print-config"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("spectraseg train: error: unknown config key 'train.lrr'")


def test_cli_needs_out_or_resume(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 1
    assert "give --out RUN" in capsys.readouterr().err


def test_rare_classes_are_a_list_of_classes() -> None:
    c = Config().replace(["train.rare_classes=[3, 4]"])
    assert c.train.rare_classes == (3, 4)
    assert Config().train.rare_classes == (2, 7, 8, 9, 10)


def test_per_class_vectors_are_checked_against_the_data() -> None:
    """Per-class keys hold one value per class of the data's schema; their length is checked
    where the class count is known (10 for DSTL, the schema's otherwise)."""
    assert per_class((), 3, "predict.thresholds", 0.5) == (0.5, 0.5, 0.5)
    assert per_class((0.2,), 1, "predict.thresholds", 0.5) == (0.2,)
    with pytest.raises(
        ConfigError, match=r"'predict\.thresholds' holds 1 values, but the data has 10"
    ):
        per_class((0.2,), 10, "predict.thresholds", 0.5)
    c = Config().replace(["loss.pos_weight=[1, 2]"])
    with pytest.raises(
        ConfigError, match=r"'loss\.pos_weight' holds 2 values, but the data has 10"
    ):
        build_loss(c.loss, 10)
    assert build_loss(c.loss, 2).pos_weight.tolist() == [1.0, 2.0]


def test_default_rare_classes_are_dstl_only() -> None:
    c = Config()
    assert rare_classes(c, 10, dstl=True) == (2, 7, 8, 9, 10)
    assert rare_classes(c, 1, dstl=False) == ()
    own = c.replace(["train.rare_classes=[2]"])
    assert rare_classes(own, 3, dstl=False) == (2,)
    with pytest.raises(ConfigError, match="names class 2, but the data has 1"):
        rare_classes(own, 1, dstl=False)
