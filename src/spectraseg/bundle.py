"""One-file model bundles: ``spectraseg export RUN --out model.spectraseg`` and
``spectraseg predict DATA --model model.spectraseg``.

A bundle is what prediction needs of a run, in one file that ``torch.load`` reads with
``weights_only=True`` (tensors, numbers, strings, lists and dicts; never pickled code)::

    format, version      "spectraseg-model", 1
    members              the model's weights: one state dict per fold model (one for a plain run)
    in_channels, classes input channels; the class schema (None: DSTL's ten)
    channels             the input's channel names, in order (cache channels, then indices)
    config, stats        the run's config (TOML text) and normalisation statistics (JSON text)
    thresholds           the run's thresholds document (JSON text; None when never tuned)
    cv                   the folds of a cross-validated run (JSON text; None otherwise)
    resolution           training pixel size in map units (None: DSTL grid units)

Prediction unpacks it into a run directory (``PRED/.model``), the format every stage
already reads, so a bundle predicts exactly as its run does. A run that blends a per-pixel
model cannot be bundled: scikit-learn models exist only as pickles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from spectraseg.data.files import atomic_output, write_text_atomic
from spectraseg.errors import DataError
from spectraseg.runs import (
    Checkpoint,
    CrossValidation,
    RunDir,
    TunedThresholds,
    load_checkpoint,
    load_weights_only,
    members,
    model_mtime_ns,
    read_cv,
    read_stats,
    read_thresholds,
    save_checkpoint,
    training_resolution,
    write_thresholds,
)

BUNDLE_FORMAT = "spectraseg-model"
BUNDLE_VERSION = 1


def export_bundle(run_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write a run's model as one bundle file, atomically; DataError when the run cannot be
    bundled (no statistics, a per-pixel blend) or ``out`` is a directory."""
    run, out = RunDir.of(run_dir), Path(out)
    if out.is_dir():
        raise DataError(f"{out} is a directory: give the bundle's file name")
    stats = read_stats(run)
    if stats is None:
        raise DataError(f"{run.root} has no stats.json: its scenes could not be normalised")
    tuned = read_thresholds(run)
    if tuned is not None and tuned.blend:
        raise DataError(
            f"{run.root} blends a per-pixel model into its predictions, which exists only as "
            "pickled code: a bundle holds the U-Net alone (retrain with pixel.enabled = false "
            "or predict with --run)"
        )
    ckpts = [load_checkpoint(m.checkpoint("best")) for m in members(run)]
    config = run.config.read_text(encoding="utf-8") if run.config.is_file() else ckpts[0].config
    cv = read_cv(run)
    state: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "members": [c.weights for c in ckpts],
        "in_channels": ckpts[0].in_channels,
        "classes": ckpts[0].classes,
        "channels": list(stats.channels) + list(ckpts[0].parsed_config().data.indices),
        "config": config,
        "stats": json.dumps(stats.to_json()),
        "thresholds": None if tuned is None else json.dumps(tuned.to_json()),
        "cv": None if cv is None else json.dumps(cv.to_json()),
        "resolution": training_resolution(run),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        torch.save(state, tmp)
    return out


def read_bundle(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A bundle's contents (``weights_only``: no code runs); DataError when it is not one."""
    state = load_weights_only(path, "model bundle")
    if not isinstance(state, dict) or state.get("format") != BUNDLE_FORMAT:
        raise DataError(f"{path} is not a spectraseg model bundle")
    if state.get("version") != BUNDLE_VERSION:
        raise DataError(f"{path} is bundle version {state.get('version')!r}, expected 1")
    return state


def unpack_bundle(path: str | os.PathLike[str], into: str | os.PathLike[str]) -> RunDir:
    """A bundle as a run directory under ``into`` (replaced if present): ``config.toml``,
    ``stats.json``, ``thresholds.json``, ``cv.json`` and one ``checkpoints/best.pt`` per
    model, which every stage reads as it reads the run the bundle came from.

    ``RUN/model.json`` records the bundle's SHA-256; a directory that already holds the same
    bundle is left as it is, so its files keep their times (what resuming a prediction and
    the thresholds document check).
    """
    digest = _sha256(Path(path))
    run = RunDir(Path(into))
    if run.model.is_file() and run.best.parent.is_dir():
        if json.loads(run.model.read_text(encoding="utf-8")).get("bundle_sha256") == digest:
            return run
    state = read_bundle(path)
    run.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.config, state["config"])
    write_text_atomic(run.stats, state["stats"] + "\n")
    cv = None if state["cv"] is None else json.loads(state["cv"])
    shipped = () if cv is None else CrossValidation.from_json(cv).shipped
    dirs = [RunDir(run.root / m) for m in shipped] or [run]
    for member, weights in zip(dirs, state["members"], strict=True):
        save_checkpoint(member.best, _checkpoint(state, weights))
    if cv is not None:
        write_text_atomic(run.cv, json.dumps(cv) + "\n")
    if state["thresholds"] is not None:
        doc = TunedThresholds.from_json(json.loads(state["thresholds"]))
        # The document belongs to these checkpoints: their files are new, their weights not.
        doc = replace(
            doc, checkpoint="best", checkpoint_mtime_ns=model_mtime_ns(run, "best"),
            pixel_model_mtime_ns=None,
        )  # fmt: skip
        write_thresholds(run, doc)
    # Last: a directory killed while unpacking has no record and is unpacked again.
    record = {"resolution": state["resolution"], "bundle_sha256": digest}
    write_text_atomic(run.model, json.dumps(record) + "\n")
    return run


def _sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checkpoint(state: dict[str, Any], weights: dict[str, Any]) -> Checkpoint:
    """A checkpoint that loads as the bundled model (no optimizer or training state)."""
    return Checkpoint(
        step=0, epoch=0, model=weights, optimizer={}, scaler={},
        in_channels=int(state["in_channels"]), config=state["config"], rng=[], elapsed=0.0,
        best={}, epoch_acc={}, history=[], classes=state["classes"],
    )  # fmt: skip
