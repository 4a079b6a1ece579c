"""The run report: ``report.json`` (the ``spectraseg evaluate --json`` schema plus context)
and a self-contained ``report.html`` with PNG figures beside it.

The HTML shows the per-class table in the seed team's format (class, name, Jaccard, its
contribution J/10 to the mean, TP/FP/FN areas), a bar chart of per-class Jaccard, training
curves, registration shifts per scene and product (fallbacks marked), and for each
held-out scene its RGB image, the truth and the prediction side by side with per-class
colours and a legend. Figures are rendered with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from spectraseg import CLASS_NAMES, NUM_CLASSES
from spectraseg.data.classes import DSTL_SCHEMA, rgb
from spectraseg.data.files import atomic_output, write_text_atomic

CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    c.index: rgb(c.color) for c in DSTL_SCHEMA.classes
}
"""RGB colour per class in the scene panels (:data:`spectraseg.data.classes.DSTL_COLORS`)."""

# Paint large, background-like classes first so small objects stay visible on top.
PAINT_ORDER = (6, 5, 4, 7, 8, 3, 1, 2, 9, 10)


@dataclass
class SceneView:
    """One held-out scene for the side-by-side panel.

    Attributes:
        image_id: the scene id.
        rgb: (H, W, 3) uint8 display image.
        truth: (10, H, W) uint8/bool truth masks, or None when unlabelled.
        pred: (10, H, W) uint8/bool predicted masks on the same grid.
        jaccard: optional per-class Jaccard of this scene (class -> value) for the caption.
    """

    image_id: str
    rgb: np.ndarray
    truth: np.ndarray | None
    pred: np.ndarray
    jaccard: Mapping[int, float] | None = None


def to_display(image: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """(3, H, W) or (H, W, 3) of any dtype -> (H, W, 3) uint8 with a per-band percentile stretch."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    out = np.empty(img.shape, np.uint8)
    for b in range(3):
        lo, hi = np.percentile(img[..., b], [low, high])
        out[..., b] = np.clip((img[..., b] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(
            np.uint8
        )
    return out


def colour_masks(masks: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """(10, H, W) masks -> (H, W, 3) uint8 with one colour per class (see CLASS_COLOURS).

    With ``background`` (H, W, 3) uint8, classes are blended over a darkened copy of it.
    """
    _, h, w = masks.shape
    out = (
        np.zeros((h, w, 3), np.float32)
        if background is None
        else background.astype(np.float32) * 0.35
    )
    for cls in PAINT_ORDER:
        m = masks[cls - 1].astype(bool)
        out[m] = np.array(CLASS_COLOURS[cls], np.float32) * 0.85 + out[m] * 0.15
    return out.astype(np.uint8)


def _unit_rgb(cls: int) -> tuple[float, float, float]:
    """The colour of class ``cls`` with components in [0, 1], as matplotlib takes it."""
    r, g, b = CLASS_COLOURS[cls]
    return r / 255, g / 255, b / 255


def _legend_handles() -> list[Patch]:
    return [
        Patch(
            facecolor=_unit_rgb(c),
            edgecolor="black",
            linewidth=0.5,
            label=f"{c} {CLASS_NAMES[c]}",
        )
        for c in range(1, NUM_CLASSES + 1)
    ]


def _save(fig: Figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_jaccard(evaluation: Mapping[str, Any], path: Path) -> None:
    """Bar chart of per-class Jaccard with the mean as a line."""
    classes = evaluation["classes"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = [f"{c['class']} {c['name']}" for c in classes]
    values = [c["jaccard"] for c in classes]
    colours = [np.array(CLASS_COLOURS[c["class"]]) / 255 for c in classes]
    ax.bar(range(len(values)), values, color=colours, edgecolor="black", linewidth=0.5)
    ax.axhline(
        evaluation["mean"], color="black", linestyle="--", label=f"mean {evaluation['mean']:.3f}"
    )
    ax.set_xticks(range(len(values)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Jaccard")
    ax.legend(loc="upper right")
    _save(fig, path)


def _plot_keys(
    ax: Any, x: Sequence[Any], history: Sequence[Mapping[str, Any]], keys: Sequence[tuple[str, str]]
) -> None:
    """One line per ``(key, label)`` present in some row of ``history``, with a legend; a
    note instead when none is (a run without validation scenes has no validation curve)."""
    for key, label in keys:
        ys = [h.get(key) for h in history]
        if any(y is not None for y in ys):
            ax.plot(x, [np.nan if y is None else y for y in ys], marker=".", label=label)
    if ax.get_lines():
        ax.legend()
    else:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)


def plot_curves(history: Sequence[Mapping[str, Any]], path: Path) -> bool:
    """Training curves against epoch; False if no history.

    Uses the keys of the run's ``metrics.json`` rows: ``train_loss``, ``val_loss``,
    ``val_mean`` (validation mean Jaccard at threshold 0.5) and ``val_mean_tuned`` (with
    per-class thresholds tuned on the same scenes, an optimistic diagnostic).
    """
    if not history:
        return False
    x = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    _plot_keys(axes[0], x, history, (("train_loss", "train loss"), ("val_loss", "validation loss")))
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    _plot_keys(
        axes[1],
        x,
        history,
        (("val_mean", "at threshold 0.5"), ("val_mean_tuned", "thresholds tuned")),
    )
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation mean Jaccard")
    axes[1].set_ylim(0, 1)
    _save(fig, path)
    return True


def plot_scene(view: SceneView, path: Path) -> None:
    """RGB | truth | prediction for one scene, with the class legend."""
    panels = [("RGB", view.rgb)]
    if view.truth is not None:
        panels.append(("truth", colour_masks(view.truth, view.rgb)))
    panels.append(("prediction", colour_masks(view.pred, view.rgb)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{view.image_id}: {title}", fontsize=10)
        ax.axis("off")
    fig.legend(handles=_legend_handles(), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.subplots_adjust(bottom=0.16, wspace=0.03)
    _save(fig, path)


def _table_html(evaluation: Mapping[str, Any]) -> str:
    rows = []
    for c in evaluation["classes"]:
        note = " (empty union)" if c.get("empty_union") else ""
        rows.append(
            "<tr>"
            f"<td>{c['class']}</td><td>{html.escape(c['name'])}{note}</td>"
            f"<td>{c['jaccard']:.4f}</td><td>{c['jaccard'] / NUM_CLASSES:.5f}</td>"
            f"<td>{c['tp']:.4g}</td><td>{c['fp']:.4g}</td><td>{c['fn']:.4g}</td>"
            "</tr>"
        )
    rows.append(
        f"<tr class='total'><td></td><td>total</td><td>{evaluation['mean']:.4f}</td>"
        f"<td>{evaluation['mean']:.5f}</td><td></td><td></td><td></td></tr>"
    )
    unit = html.escape(str(evaluation.get("units", "area")))
    return (
        "<table><thead><tr><th>class</th><th>name</th><th>Jaccard</th>"
        f"<th>contribution (J/10)</th><th>TP ({unit})</th><th>FP ({unit})</th>"
        f"<th>FN ({unit})</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _models_html(models: Mapping[str, Mapping[str, Any]]) -> str:
    """Per-class Jaccard of alternative models (same scenes), one row per model."""
    head = "".join(f"<th>{c}</th>" for c in range(1, NUM_CLASSES + 1))
    rows = []
    for name, ev in models.items():
        cells = "".join(f"<td>{c['jaccard']:.3f}</td>" for c in ev["classes"])
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{ev['mean']:.4f}</td>{cells}</tr>")
    return (
        "<p>Raster metric on the test scenes; each model with its own per-class thresholds "
        "tuned on the validation scenes (the blend also tunes each class's U-Net weight).</p>"
        f"<table><thead><tr><th>model</th><th>mean</th>{head}</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _shifts_html(shifts: Sequence[Mapping[str, Any]]) -> str:
    if not shifts:
        return "<p>No registration shifts recorded.</p>"
    rows = []
    for s in shifts:
        method = str(s.get("method", ""))
        fallback = method not in ("", "ecc")
        cls = " class='fallback'" if fallback else ""
        corr = s.get("corr")
        corr_txt = "" if corr is None or corr == "" else f"{float(corr):.3f}"
        rows.append(
            f"<tr{cls}><td>{html.escape(str(s['image_id']))}</td>"
            f"<td>{html.escape(str(s['product']))}</td>"
            f"<td>{float(s['dx']):+.3f}</td><td>{float(s['dy']):+.3f}</td>"
            f"<td>{corr_txt}</td><td>{html.escape(method)}{' (fallback)' * fallback}</td></tr>"
        )
    return (
        "<p>Shift of each product's content relative to RGB, in the product's own pixels. "
        "Rows in orange used a fallback estimator.</p>"
        "<table><thead><tr><th>scene</th><th>product</th><th>dx</th><th>dy</th>"
        "<th>correlation</th><th>method</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
td:nth-child(2), th:nth-child(2) { text-align: left; }
tr.total { font-weight: bold; } tr.fallback { background: #ffe2c6; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
"""


def write_report(
    out_dir: str | os.PathLike[str],
    evaluation: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] = (),
    shifts: Sequence[Mapping[str, Any]] = (),
    scenes: Sequence[SceneView] = (),
    title: str = "spectraseg report",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``report.json``, ``report.html`` and PNGs into ``out_dir``; return the HTML path.

    Args:
        evaluation: the ``spectraseg evaluate --json`` document (``classes``, ``mean``, ...).
        history: per-epoch training metrics (``epoch``, ``train_loss``, ``val_loss``,
            ``val_mean``, ``val_mean_tuned``), the run's ``metrics.json`` rows.
        shifts: rows of the cache's ``shifts.csv`` (``image_id``, ``product``, ``dx``, ``dy``,
            ``corr``, ``method``).
        scenes: held-out scenes to show.
        extra: more JSON-ready context stored in ``report.json`` (data, timings, config).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(evaluation)
    if extra:
        doc.update({k: v for k, v in extra.items() if k not in ("classes", "mean")})
    write_text_atomic(out / "report.json", json.dumps(doc, indent=2, default=_json_default) + "\n")

    plot_jaccard(evaluation, out / "jaccard.png")
    has_curves = plot_curves(history, out / "curves.png")
    scene_files = []
    for view in scenes:
        name = f"scene_{view.image_id}.png"
        plot_scene(view, out / name)
        scene_files.append((view, name))

    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if extra:
        meta = ", ".join(
            f"{html.escape(str(k))}: {html.escape(str(v))}"
            for k, v in extra.items()
            if isinstance(v, str | int | float)
        )
        parts.append(f"<p class='meta'>{meta}</p>")
    parts += [
        f"<h2>Per-class Jaccard (mean {evaluation['mean']:.4f})</h2>",
        _table_html(evaluation),
        "<img src='jaccard.png' alt='per-class Jaccard bar chart'>",
    ]
    if extra and extra.get("models"):
        parts += ["<h2>U-Net, per-pixel model and blend</h2>", _models_html(extra["models"])]
    parts += [
        "<h2>Training</h2>",
        "<img src='curves.png' alt='training curves'>"
        if has_curves
        else "<p>No training history.</p>",
        "<h2>Registration</h2>",
        _shifts_html(shifts),
        "<h2>Held-out scenes</h2>",
    ]
    for view, name in scene_files:
        caption = ""
        if view.jaccard:
            caption = ", ".join(f"{c}: {j:.2f}" for c, j in sorted(view.jaccard.items()))
            caption = f"<p class='meta'>per-class Jaccard: {html.escape(caption)}</p>"
        parts.append(
            f"<h3>{html.escape(view.image_id)}</h3>{caption}"
            f"<img src='{name}' alt='{html.escape(view.image_id)}: RGB, truth, prediction'>"
        )
    parts.append("</body></html>\n")
    path = out / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
