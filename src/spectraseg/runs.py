"""The run directory of ``spectraseg train --out RUN``: the one owner of its layout.

Training writes a run and prediction reads it; both go through this module, so file names,
the checkpoint format and the documents kept beside it are written down once::

    RUN/config.toml              the resolved config, every key (``spectraseg.config``)
    RUN/stats.json               the normalisation statistics the run uses
    RUN/split.json               the scenes it trained and validated on
    RUN/checkpoints/latest.pt    the last checkpoint: every ``train.checkpoint_every`` steps,
                                 at each epoch end, on Ctrl-C and at the end of the run
    RUN/checkpoints/best.pt      the checkpoint with the best validation score
                                 (the final one when there is no validation)
    RUN/metrics.csv              one row per epoch (and for a final partial epoch)
    RUN/metrics.json             the same rows plus the best epoch
    RUN/pixelmodel.pkl           the per-pixel partner model (``pixel.enabled``)
    RUN/thresholds.json          per-class thresholds and U-Net/pixel-model blend weights
                                 (written by ``spectraseg predict``)

Checkpoints (:class:`Checkpoint`) are written atomically and load with
``torch.load(weights_only=True)``: they hold tensors and Python primitives only.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import shutil
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from spectraseg.align.cache import open_cache
from spectraseg.config import Config, from_dict, to_toml
from spectraseg.data.classes import DSTL_SCHEMA, ClassSchema
from spectraseg.data.files import atomic_output, write_text_atomic
from spectraseg.errors import ConfigError, DataError, SpectrasegError
from spectraseg.features.stats import Stats, load_stats, save_stats
from spectraseg.models.ensemble import ProbabilityMean
from spectraseg.models.unet import UNet, build_model

if TYPE_CHECKING:
    from spectraseg.models.pixel import PixelEnsemble, PixelModel

CHECKPOINT_FORMAT = "spectraseg-checkpoint"
CHECKPOINT_VERSION = 1
THRESHOLDS_FORMAT = "spectraseg-thresholds"
SPLIT_FORMAT = "spectraseg-split"
CV_FORMAT = "spectraseg-cv"
CHECKPOINTS = ("best", "latest")
"""The checkpoints a run keeps; ``best`` falls back to ``latest`` before any validation."""


class _File:
    """A file of the run directory: ``run.<name>`` is its path under ``run.root``."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    def __get__(self, run: RunDir, owner: type | None = None) -> Path:
        return run.root.joinpath(*self.parts)


@dataclass(frozen=True)
class RunDir:
    """The paths of a run directory (module docstring)."""

    root: Path
    config = _File("config.toml")
    stats = _File("stats.json")
    split = _File("split.json")
    latest = _File("checkpoints", "latest.pt")
    best = _File("checkpoints", "best.pt")
    metrics_csv = _File("metrics.csv")
    metrics_json = _File("metrics.json")
    pixel_model = _File("pixelmodel.pkl")
    thresholds = _File("thresholds.json")
    cv = _File("cv.json")
    model = _File("model.json")
    """What a run unpacked from a model bundle knows of its training data (``resolution``)."""
    oof = _File("oof")

    @classmethod
    def of(cls, run: str | os.PathLike[str] | RunDir) -> RunDir:
        """A :class:`RunDir` from a path (a :class:`RunDir` passes through)."""
        return run if isinstance(run, RunDir) else cls(Path(run))

    def checkpoint(self, which: str) -> Path:
        """``best.pt`` or ``latest.pt``; ``best`` is ``latest`` until a validation chose one."""
        if which not in CHECKPOINTS:
            raise ConfigError(f"checkpoint {which!r} must be 'best' or 'latest'")
        if which == "best" and not self.best.is_file():
            return self.latest
        return self.best if which == "best" else self.latest


def mtime_ns(path: Path) -> int | None:
    """A file's modification time in ns (None when absent): what run documents key on."""
    return path.stat().st_mtime_ns if path.is_file() else None


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """Everything a checkpoint holds: weights, optimizer and loop state, and the config.

    ``model``/``optimizer``/``scaler``/``ema`` are state dicts; ``config`` is the TOML text;
    ``rng`` one RNG state per rank (tensors); ``elapsed`` training seconds so far; ``best``
    the best validation ``score``, ``step`` and ``epoch``; ``epoch_acc`` the sums of the
    current epoch; ``history`` the metric rows so far. With ``train.ema``, ``ema`` holds the
    averaged weights and BatchNorm statistics (the run's model) and ``ema_count`` the steps
    averaged.
    """

    step: int
    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    in_channels: int
    config: str
    rng: list[dict[str, torch.Tensor]]
    elapsed: float
    best: dict[str, Any]
    epoch_acc: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    ema: dict[str, Any] | None = None
    ema_count: int = 0
    classes: list[dict[str, Any]] | None = None
    """The class schema the model predicts (:meth:`ClassSchema.to_json`); None: DSTL's."""

    @property
    def schema(self) -> ClassSchema:
        """The classes of the model's output channels, in order."""
        if self.classes is None:
            return DSTL_SCHEMA
        return ClassSchema.from_json(self.classes, "the checkpoint")

    @property
    def weights(self) -> dict[str, Any]:
        """The run's model: the weight average when there is one (the raw weights resume)."""
        return self.ema if self.ema is not None else self.model

    def parsed_config(self, where: str = "the checkpoint") -> Config:
        """The config the checkpoint was trained with; DataError naming ``where`` if broken."""
        try:
            return from_dict(tomllib.loads(self.config))
        except (tomllib.TOMLDecodeError, ConfigError) as exc:
            raise DataError(f"{where} holds no valid config ({exc})") from None

    def to_state(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes (``ema`` keys only with a weight average)."""
        state: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
        for name in (
            "step",
            "epoch",
            "model",
            "optimizer",
            "scaler",
            "in_channels",
            "config",
            "rng",
            "elapsed",
            "best",
            "epoch_acc",
            "history",
        ):
            state[name] = getattr(self, name)
        if self.ema is not None:
            state["ema"], state["ema_count"] = self.ema, self.ema_count
        if self.classes is not None:
            state["classes"] = self.classes
        return state

    @classmethod
    def from_state(cls, state: Any, where: str) -> Checkpoint:
        """A checkpoint from a loaded dict; DataError naming ``where`` if it is not one."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise DataError(f"{where} is not a spectraseg checkpoint")
        try:
            return cls(
                step=int(state["step"]),
                epoch=int(state["epoch"]),
                model=state["model"],
                optimizer=state["optimizer"],
                scaler=state["scaler"],
                in_channels=int(state["in_channels"]),
                config=str(state["config"]),
                rng=list(state["rng"]),
                elapsed=float(state["elapsed"]),
                best=dict(state["best"]),
                epoch_acc={k: float(v) for k, v in state["epoch_acc"].items()},
                history=[dict(r) for r in state["history"]],
                ema=state.get("ema"),
                ema_count=int(state.get("ema_count", 0)),
                classes=state.get("classes"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{where} lacks checkpoint field {exc}") from None


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint) -> None:
    """``torch.save`` a checkpoint to ``path`` atomically (a reader never sees half a file)."""
    with atomic_output(path) as tmp:
        torch.save(ckpt.to_state(), tmp)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> Checkpoint:
    """Load a checkpoint with ``weights_only=True``; DataError if missing or not one."""
    state = load_weights_only(path, "checkpoint", map_location)
    return Checkpoint.from_state(state, str(path))


def load_weights_only(
    path: str | os.PathLike[str], what: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data, never pickled code;
    DataError naming ``what`` and the file when it is missing or cannot be loaded."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise DataError(f"{what} {path} cannot be loaded ({type(exc).__name__})") from None


def promote_latest(run_dir: str | os.PathLike[str] | RunDir) -> None:
    """``best.pt`` := ``latest.pt``: without validation the best model is simply the last."""
    run = RunDir.of(run_dir)
    with atomic_output(run.best) as tmp:
        shutil.copyfile(run.latest, tmp)


def members(run_dir: str | os.PathLike[str] | RunDir) -> list[RunDir]:
    """The runs whose models make up this run's model: the model trained on every scene of a
    cross-validated run (``RUN/cv.json``) that ships one, else its fold runs; a run that is
    not cross-validated is its own."""
    run = RunDir.of(run_dir)
    cv = read_cv(run)
    return [run] if cv is None else [RunDir(run.root / m) for m in cv.shipped]


def _newest(paths: Sequence[Path]) -> int | None:
    times = [mtime_ns(p) for p in paths]
    return None if None in times else max(t for t in times if t is not None)


def model_mtime_ns(run_dir: str | os.PathLike[str] | RunDir, which: str) -> int | None:
    """When the run's model last changed (the newest checkpoint of its members), in ns."""
    return _newest([m.checkpoint(which) for m in members(run_dir)])


def pixel_mtime_ns(run_dir: str | os.PathLike[str] | RunDir) -> int | None:
    """When the run's per-pixel model last changed (None: it has none), in ns."""
    return _newest([m.pixel_model for m in members(run_dir)])


def training_resolution(run_dir: str | os.PathLike[str] | RunDir) -> float | None:
    """The pixel size (map units) of a run's georeferenced training scenes: ``RUN/model.json``
    of an unpacked bundle, else the run's cache (its first scene with a transform); None for
    DSTL data or a cache that is gone."""
    run = RunDir.of(run_dir)
    if run.model.is_file():
        value = json.loads(run.model.read_text(encoding="utf-8")).get("resolution")
        return None if value is None else float(value)
    try:
        cache = open_cache(read_config(run).data.cache)
    except SpectrasegError:
        return None
    for image_id in cache.image_ids:
        transform = cache.entry(image_id).get("transform")
        if transform is not None:
            return float(abs(transform[0]))
    return None


def _load_unet(run: RunDir, which: str) -> tuple[UNet, Config]:
    path = run.checkpoint(which)
    ckpt = load_checkpoint(path)
    config = ckpt.parsed_config(str(path))
    model = build_model(config, ckpt.in_channels, len(ckpt.schema))
    model.load_state_dict(ckpt.weights)
    model.schema = ckpt.schema
    return model, config


def load_model(
    run_dir: str | os.PathLike[str] | RunDir,
    which: str = "best",
    device: str | torch.device | None = None,
) -> tuple[nn.Module, Config, Stats | None]:
    """Load a trained model from a run directory.

    Args:
        run_dir: the run directory; a cross-validated run gives the mean of its fold models
            (:class:`~spectraseg.models.ensemble.ProbabilityMean`).
        which: ``"best"`` or ``"latest"`` (:meth:`RunDir.checkpoint`).
        device: where to put the model (default CPU).

    Returns:
        ``(model in eval mode, config, statistics or None)``; the model returns logits.
    """
    run = RunDir.of(run_dir)
    if not run.root.is_dir():
        raise DataError(f"run directory {run.root} does not exist")
    cross_validated = read_cv(run) is not None
    parts = members(run)
    missing = [m.checkpoint(which) for m in parts if not m.checkpoint(which).is_file()]
    if cross_validated and missing:
        raise DataError(
            f"{missing[0]} does not exist: {run.root} is an unfinished cross-validated run; "
            f"finish it with spectraseg train --resume {run.root}"
        )
    loaded = [_load_unet(m, which) for m in parts]
    model: nn.Module = loaded[0][0] if len(loaded) == 1 else ProbabilityMean([m for m, _ in loaded])
    config = read_config(run) if cross_validated else loaded[0][1]
    model.eval()
    model.to(torch.device(device) if device is not None else torch.device("cpu"))
    return model, config, read_stats(run)


def load_pixel_model(run_dir: str | os.PathLike[str] | RunDir) -> PixelModel | PixelEnsemble | None:
    """The run's per-pixel model (a cross-validated run: the mean of its folds'), or None."""
    # Imported here: scikit-learn costs every process that loads a run ~0.5 s otherwise.
    from spectraseg.models.pixel import PixelEnsemble, PixelModel

    paths = [m.pixel_model for m in members(run_dir)]
    if not all(p.is_file() for p in paths):
        return None
    loaded = [PixelModel.load(p) for p in paths]
    return loaded[0] if len(loaded) == 1 else PixelEnsemble(loaded)


# --------------------------------------------------------------------------- documents


def write_config(run_dir: str | os.PathLike[str] | RunDir, config: Config) -> None:
    """``RUN/config.toml``: the resolved config, every key."""
    write_text_atomic(RunDir.of(run_dir).config, to_toml(config))


def read_config(run_dir: str | os.PathLike[str] | RunDir) -> Config:
    """``RUN/config.toml``; DataError when missing or invalid."""
    path = RunDir.of(run_dir).config
    if not path.is_file():
        raise DataError(f"run config {path} does not exist")
    try:
        return from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise DataError(f"{path} is not a valid run config ({exc})") from None


def read_stats(run_dir: str | os.PathLike[str] | RunDir) -> Stats | None:
    """``RUN/stats.json`` (None when the run has none)."""
    path = RunDir.of(run_dir).stats
    return load_stats(path) if path.is_file() else None


def write_stats(run_dir: str | os.PathLike[str] | RunDir, stats: Stats) -> None:
    """``RUN/stats.json``, atomically."""
    save_stats(stats, RunDir.of(run_dir).stats)


@dataclass(frozen=True)
class Split:
    """The scenes a run trained on and validated on (sorted ids)."""

    train: tuple[str, ...]
    validation: tuple[str, ...]


def write_split(run_dir: str | os.PathLike[str] | RunDir, split: Split) -> None:
    """``RUN/split.json``: what prediction tunes its thresholds on is what training validated on."""
    doc = {
        "format": SPLIT_FORMAT,
        "version": 1,
        "train": list(split.train),
        "validation": list(split.validation),
    }
    write_text_atomic(RunDir.of(run_dir).split, json.dumps(doc, indent=1) + "\n")


def _read_doc(path: Path, fmt: str, what: str, check: Callable[[dict[str, Any]], object]) -> Any:
    """A JSON document of the run (None when absent): its ``format`` must be ``fmt`` and
    ``check`` must accept it; DataError naming the file otherwise."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != fmt:
            raise ValueError(f"not a {what} file")
        check(doc)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DataError(f"{path} is not a valid {what} file ({exc})") from None
    return doc


def _split_of(doc: Mapping[str, Any]) -> Split:
    train, val = doc["train"], doc["validation"]
    if not all(isinstance(i, str) for i in [*train, *val]):
        raise ValueError("scene ids must be strings")
    return Split(tuple(train), tuple(val))


@dataclass(frozen=True)
class CrossValidation:
    """``RUN/cv.json`` of a cross-validated run (:func:`spectraseg.crossval.train_folds`).

    ``folds``: the held-out scenes of each fold (whole region groups); ``members``: each
    fold's run directory, relative to ``RUN``; ``scores``: what cross-validation measured
    (JSON-ready, written when every fold is done; empty before); ``final``: the directory of
    the model trained on every scene that the run ships instead of the fold models' average
    (None: the run ships the average).
    """

    folds: tuple[tuple[str, ...], ...]
    members: tuple[str, ...]
    scores: Mapping[str, Any] = field(default_factory=dict)
    final: str | None = None

    @property
    def scenes(self) -> list[str]:
        """Every held-out scene, fold by fold: every labelled scene of the run."""
        return [i for f in self.folds for i in f]

    @property
    def shipped(self) -> tuple[str, ...]:
        """The directories (relative to ``RUN``) of the models prediction uses."""
        return self.members if self.final is None else (self.final,)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "format": CV_FORMAT,
            "version": 1,
            "folds": [list(f) for f in self.folds],
            "members": list(self.members),
            "scores": dict(self.scores),
        }
        if self.final is not None:
            doc["final"] = self.final
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> CrossValidation:
        folds = tuple(tuple(str(i) for i in f) for f in doc["folds"])
        members = tuple(str(m) for m in doc["members"])
        final = None if doc.get("final") is None else str(doc["final"])
        if len(folds) != len(members) or not members:
            raise ValueError("one member run per fold is needed")
        inside = [*members, *([final] if final is not None else [])]
        if any(Path(m).is_absolute() or ".." in Path(m).parts for m in inside):
            raise ValueError("member runs must lie inside the run directory")
        return cls(folds, members, dict(doc.get("scores", {})), final)


def write_cv(run_dir: str | os.PathLike[str] | RunDir, cv: CrossValidation) -> None:
    """``RUN/cv.json``, atomically."""
    write_text_atomic(RunDir.of(run_dir).cv, json.dumps(cv.to_json(), indent=1) + "\n")


def read_cv(run_dir: str | os.PathLike[str] | RunDir) -> CrossValidation | None:
    """``RUN/cv.json`` (None for a run that is not cross-validated); DataError if malformed."""
    doc = _read_doc(RunDir.of(run_dir).cv, CV_FORMAT, "cross-validation", CrossValidation.from_json)
    return None if doc is None else CrossValidation.from_json(doc)


def read_split(run_dir: str | os.PathLike[str] | RunDir) -> Split | None:
    """``RUN/split.json`` (None for a run written before it existed); DataError if malformed."""
    doc = _read_doc(RunDir.of(run_dir).split, SPLIT_FORMAT, "split", _split_of)
    return None if doc is None else _split_of(doc)


def _per_class(values: Mapping[Any, Any] | None, kind: type = float) -> dict[int, Any] | None:
    return None if values is None else {int(k): kind(v) for k, v in values.items()}


def _keyed(values: Mapping[int, Any] | None) -> dict[str, Any] | None:
    return None if values is None else {str(k): v for k, v in values.items()}


RASTER_METRIC = "raster (pixels on the RGB grid, weighted by pixel area), summed over scenes"


@dataclass(frozen=True)
class TunedThresholds:
    """``RUN/thresholds.json``: per-class thresholds (and blend weights) tuned on the run's
    validation scenes, with the evidence and what they were tuned for.

    Per-class mappings are keyed by 1-based class (strings in JSON). ``jaccard`` is each
    class's tuned Jaccard on the tuning scenes (``mean_jaccard`` their mean), ``tuned``
    whether it had true pixels there; ``jaccard_config`` scores the config's thresholds.
    With a pixel model in the run, ``blend`` holds per class the U-Net's weight in the blend,
    chosen with the threshold, and ``thresholds_unet``/``thresholds_pixel`` each model's own
    thresholds. ``checkpoint``, ``checkpoint_mtime_ns``, ``pixel_model_mtime_ns`` and
    ``tta`` say what it was tuned for: prediction re-tunes when one of them changes.
    """

    thresholds: dict[int, float]
    jaccard: dict[int, float]
    tuned: dict[int, bool]
    mean_jaccard: float
    jaccard_unet: dict[int, float]
    thresholds_unet: dict[int, float]
    jaccard_config: dict[int, float]
    mean_jaccard_config: float
    grid: list[float]
    scenes: list[str]
    checkpoint: str
    checkpoint_mtime_ns: int | None
    tta: bool
    tile: int | None
    margin: int | None
    blend: dict[int, float] | None = None
    thresholds_pixel: dict[int, float] | None = None
    pixel_model_mtime_ns: int | None = None
    metric: str = RASTER_METRIC

    def to_json(self) -> dict[str, Any]:
        """The JSON document, keys in their written order."""
        return {
            "format": THRESHOLDS_FORMAT,
            "version": 1,
            "thresholds": _keyed(self.thresholds),
            "jaccard": _keyed(self.jaccard),
            "tuned": _keyed(self.tuned),
            "mean_jaccard": self.mean_jaccard,
            "blend": _keyed(self.blend),
            "jaccard_unet": _keyed(self.jaccard_unet),
            "thresholds_unet": _keyed(self.thresholds_unet),
            "thresholds_pixel": _keyed(self.thresholds_pixel),
            "pixel_model_mtime_ns": self.pixel_model_mtime_ns,
            "jaccard_config": _keyed(self.jaccard_config),
            "mean_jaccard_config": self.mean_jaccard_config,
            "grid": list(self.grid),
            "scenes": list(self.scenes),
            "checkpoint": self.checkpoint,
            "checkpoint_mtime_ns": self.checkpoint_mtime_ns,
            "tta": self.tta,
            "tile": self.tile,
            "margin": self.margin,
            "metric": self.metric,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TunedThresholds:
        """The document read back (ValueError/KeyError/TypeError when incomplete)."""
        thresholds = _per_class(doc["thresholds"])
        assert thresholds is not None
        k = len(thresholds)
        if (
            not k
            or sorted(thresholds) != list(range(1, k + 1))
            or not all(0.0 <= v <= 1.0 for v in thresholds.values())
        ):
            raise ValueError("thresholds must give classes 1..K a value in [0, 1]")
        return cls(
            thresholds=thresholds,
            jaccard=_per_class(doc["jaccard"]) or {},
            tuned=_per_class(doc["tuned"], bool) or {},
            mean_jaccard=float(doc["mean_jaccard"]),
            jaccard_unet=_per_class(doc.get("jaccard_unet", doc["jaccard"])) or {},
            thresholds_unet=_per_class(doc.get("thresholds_unet", doc["thresholds"])) or {},
            jaccard_config=_per_class(doc.get("jaccard_config", {})) or {},
            mean_jaccard_config=float(doc.get("mean_jaccard_config", 0.0)),
            grid=[float(g) for g in doc["grid"]],
            scenes=[str(i) for i in doc["scenes"]],
            checkpoint=str(doc["checkpoint"]),
            checkpoint_mtime_ns=doc.get("checkpoint_mtime_ns"),
            tta=bool(doc.get("tta")),
            tile=doc.get("tile"),
            margin=doc.get("margin"),
            blend=_per_class(doc.get("blend")),
            thresholds_pixel=_per_class(doc.get("thresholds_pixel")),
            pixel_model_mtime_ns=doc.get("pixel_model_mtime_ns"),
            metric=str(doc.get("metric", RASTER_METRIC)),
        )


def read_thresholds(run_dir: str | os.PathLike[str] | RunDir) -> TunedThresholds | None:
    """``RUN/thresholds.json`` (None if absent); DataError if malformed."""
    path = RunDir.of(run_dir).thresholds
    doc = _read_doc(path, THRESHOLDS_FORMAT, "thresholds", TunedThresholds.from_json)
    return None if doc is None else TunedThresholds.from_json(doc)


def write_thresholds(run_dir: str | os.PathLike[str] | RunDir, tuned: TunedThresholds) -> Path:
    """Write ``RUN/thresholds.json`` atomically."""
    path = RunDir.of(run_dir).thresholds
    write_text_atomic(path, json.dumps(tuned.to_json(), indent=1) + "\n")
    return path


METRIC_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_bce",
    "train_jaccard",
    "patches_per_s",
    "seconds",
    "val_loss",
    "val_mean",
    "val_mean_tuned",
)
"""The leading columns of ``metrics.csv``; per-class validation Jaccard columns follow."""


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def write_metrics(
    run_dir: str | os.PathLike[str] | RunDir,
    history: Sequence[Mapping[str, Any]],
    best: Mapping[str, Any],
    schema: ClassSchema = DSTL_SCHEMA,
) -> None:
    """``RUN/metrics.csv`` (one row per epoch, a validation Jaccard column per class of
    ``schema``) and ``RUN/metrics.json`` (rows, best and the class names)."""
    run = RunDir.of(run_dir)
    k = len(schema)
    cols = list(METRIC_COLUMNS) + [f"val_jaccard_{c}" for c in range(1, k + 1)]
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in history:
        jac = row.get("val_jaccard") or [None] * k
        values = [row.get(k) for k in METRIC_COLUMNS] + list(jac)
        w.writerow([_csv_cell(v) for v in values])
    write_text_atomic(run.metrics_csv, buf.getvalue())
    doc = {
        "classes": schema.names,
        "epochs": list(history),
        "best": dict(best),
    }
    write_text_atomic(run.metrics_json, json.dumps(doc, indent=1) + "\n")
