from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from spectraseg import CLASS_NAMES
from spectraseg.report import (
    CLASS_COLOURS,
    SceneView,
    colour_masks,
    plot_curves,
    to_display,
    write_report,
)


def fake_evaluation() -> dict:
    classes = [
        {
            "class": c,
            "name": CLASS_NAMES[c],
            "jaccard": c / 20,
            "tp": 1.0 * c,
            "fp": 2.0,
            "fn": 3.0,
        }
        for c in range(1, 11)
    ]
    return {"classes": classes, "mean": float(np.mean([c["jaccard"] for c in classes]))}


def make_report(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.zeros((10, 40, 50), np.uint8)
    truth[5, :20] = 1
    truth[9, 30:33, 10:14] = 1
    pred = np.roll(truth, 2, axis=2)
    view = SceneView("6010_1_2", to_display(rng.integers(0, 2048, (3, 40, 50))), truth, pred)
    history = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_mean": 0.2},
        {"epoch": 2, "train_loss": 0.7, "val_loss": 0.9, "val_mean": 0.4},
    ]
    shifts = [
        {
            "image_id": "6010_1_2",
            "product": "A",
            "dx": 0.5,
            "dy": -1.0,
            "corr": 0.9,
            "method": "ecc",
        },
        {
            "image_id": "6010_1_3",
            "product": "A",
            "dx": 0.4,
            "dy": -1.1,
            "corr": "",
            "method": "region_median",
        },
    ]
    return write_report(
        tmp_path,
        fake_evaluation(),
        history,
        shifts,
        [view],
        extra={
            "data": "synthetic",
            "models": {"unet": fake_evaluation(), "pixel": fake_evaluation()},
        },
    )


def test_report_files_and_json_schema(tmp_path) -> None:
    html_path = make_report(tmp_path)
    for name in ("report.json", "report.html", "jaccard.png", "curves.png", "scene_6010_1_2.png"):
        assert (tmp_path / name).stat().st_size > 0
    doc = json.loads((tmp_path / "report.json").read_text())
    assert [c["class"] for c in doc["classes"]] == list(range(1, 11))
    assert doc["mean"] == pytest.approx(0.275) and doc["data"] == "synthetic"
    text = html_path.read_text()
    assert "Misc. manmade structures" in text and "0.05000" in text  # J/10 of class 10
    assert "<td>total</td><td>0.2750</td><td>0.27500</td>" in text
    assert "U-Net, per-pixel model and blend" in text and "<td>pixel</td><td>0.2750</td>" in text
    assert "region_median (fallback)" in text and "class='fallback'" in text
    assert text.count("<tr") >= 11 + 2


def test_colour_masks_paints_small_classes_on_top() -> None:
    masks = np.zeros((10, 4, 4), np.uint8)
    masks[5] = 1  # crops everywhere
    masks[9, 1, 1] = 1  # a small vehicle on top
    img = colour_masks(masks)
    assert tuple(img[0, 0]) == tuple(int(v * 0.85) for v in CLASS_COLOURS[6])
    assert tuple(img[1, 1]) == tuple(
        int(v * 0.85 + int(u * 0.85) * 0.15)
        for v, u in zip(CLASS_COLOURS[10], CLASS_COLOURS[6], strict=True)
    )


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    html_path = make_report(tmp_path / "r")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            html_path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 2000 and img.shape[1] >= 1100
    # The page is not blank: the table, charts and scene panels put many colours on it.
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200


def test_curves_of_a_run_without_validation_warn_of_nothing(tmp_path) -> None:
    # Cross-validated folds train without validation scenes: their history has no
    # validation keys, and matplotlib must not warn about an empty legend.
    history = [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_curves(history, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert not plot_curves([], tmp_path / "none.png")
