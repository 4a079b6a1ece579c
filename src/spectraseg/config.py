"""One configuration: TOML into frozen dataclasses.

A config file has the sections ``[data]``, ``[model]``, ``[loss]``, ``[train]``,
``[predict]`` and ``[pixel]``; every key is optional (defaults below, also in
``configs/default.toml``).
Unknown sections or keys and values of the wrong type raise
:class:`~spectraseg.errors.ConfigError` naming the dotted key (``train.lr``).

Overrides are ``"section.key=value"`` strings whose value is a TOML scalar or array
(``train.lr=3e-4``, ``data.val_scenes=["6010_1_2"]``, ``predict.tta=true``); a value that
is not valid TOML is taken as a bare string (``data.root=/data/dstl``).

Relative paths in ``data`` are resolved against the current directory when the config is
loaded, so the resolved config saved in a run directory works from anywhere.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import os
import textwrap
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spectraseg import RARE_CLASSES
from spectraseg.errors import ConfigError
from spectraseg.runtime import DEVICES

NORM_MODES: tuple[str, ...] = ("image", "region", "dataset")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
SELECT: tuple[str, ...] = ("val_mean", "val_mean_tuned")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split and normalised."""

    root: str = ""
    """DSTL-layout dataset root (labels, grid sizes)."""
    cache: str = ""
    """Fused cache directory written by ``spectraseg align``."""
    stats: str = ""
    """Normalisation statistics JSON; empty: computed over every cached scene."""
    norm: str = "region"
    """Statistics scope: ``image``, ``region`` (the seed's best) or ``dataset``."""
    scenes: tuple[str, ...] = ()
    """Labelled scenes to use (training + validation); empty: all labelled scenes."""
    val_scenes: tuple[str, ...] = ()
    """Held-out validation scenes; empty: whole regions chosen by ``val_fraction``."""
    val_fraction: float = 0.2
    """Share of scenes held out (by region) when ``val_scenes`` is empty; 0: no validation."""
    indices: tuple[str, ...] = ()
    """Derived spectral index channels appended to the input (e.g. ``["NDWI", "CCCI"]``)."""
    index_norm: bool = False
    """Normalise the index channels like the bands (their own statistics, in the scope of
    ``norm``); false: they enter as computed, in [-1, 1]."""


@dataclass(frozen=True)
class ModelConfig:
    """The U-Net (:class:`spectraseg.models.unet.UNet`)."""

    width: int = 16
    """Channels of the first level; level ``i`` has ``width * 2**i``."""
    depth: int = 4
    """Number of 2x downsamplings; patch and tile sizes must be multiples of ``2**depth``."""
    norm: str = "batch"
    """Normalisation layer: ``batch``, ``group`` or ``instance``."""
    groups: int = 8
    """GroupNorm groups."""
    dropout: float = 0.0
    """Dropout2d rate after the bottleneck."""
    mixstyle: float = 0.0
    """Probability per training batch of mixing the first two encoder levels' feature
    statistics between patches (MixStyle); 0: none."""


@dataclass(frozen=True)
class LossConfig:
    """The loss (:class:`spectraseg.models.losses.BCEJaccardLoss`)."""

    bce: float = 1.0
    """Weight of binary cross-entropy."""
    jaccard: float = 1.0
    """Weight of the soft Jaccard term."""
    jaccard_mode: str = "present"
    """``present`` (per class over the whole batch, classes absent from it left out),
    ``batch`` (all classes) or ``sample`` (per patch); see :mod:`spectraseg.models.losses`."""
    log_jaccard: bool = False
    """Use ``-log J`` instead of ``1 - J``."""
    smooth: float = 1.0
    """Soft Jaccard smoothing (pixels)."""
    pos_weight: tuple[float, ...] = ()
    """Per-class BCE weight of positive pixels (10 values); empty: 1."""
    class_weights: tuple[float, ...] = ()
    """Per-class weight of both terms (10 values); empty: equal."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (:func:`spectraseg.training.loop.train`)."""

    batch_size: int = 4
    """Patches per forward/backward pass (per process)."""
    accumulate: int = 1
    """Forward/backward passes, each on a fresh batch, per optimizer step."""
    steps: int = 0
    """Optimizer steps in all; 0: ``epochs * steps_per_epoch``."""
    epochs: int = 20
    """Epochs (each ends with validation and a checkpoint) when ``steps`` is 0."""
    steps_per_epoch: int = 100
    """Optimizer steps per epoch."""
    minutes: float = 0.0
    """Time budget for training (validation excluded); 0: none. Stops after the step that
    crosses it; the cosine schedule then follows elapsed time as well as steps."""
    lr: float = 3e-3
    """Adam learning rate at the top of the schedule."""
    ema: float = 0.0
    """Decay per optimizer step of an exponential moving average of the weights and
    BatchNorm statistics; validation, ``best.pt`` and prediction then use the average (about
    the last ``1 / (1 - ema)`` steps). 0: none."""
    weight_decay: float = 0.0
    """AdamW weight decay (0: plain Adam)."""
    precise_bn: int = 0
    """After the last step, re-estimate the BatchNorm statistics over this many patches drawn
    uniformly over the training scenes (weights unchanged; :mod:`spectraseg.training.batchnorm`);
    0: keep the running averages of the last batches."""
    schedule: str = "cosine"
    """``cosine`` (to ``min_lr_ratio * lr``) or ``constant``."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.01
    """Final learning rate of the cosine schedule relative to ``lr``."""
    seed: int = 0
    """Seed of weights, patch sampling and augmentation."""
    patch_size: int = 128
    """Training patch side in pixels (multiple of ``2**model.depth``)."""
    rare_share: float = 0.5
    """Share of patches centred on a pixel of a rare class."""
    rare_classes: tuple[int, ...] = RARE_CLASSES
    """1-based classes those patches are centred on (a class drawn uniformly among them)."""
    augment: bool = True
    """Random flips, transposes and 90-degree rotations."""
    photometric: float = 0.0
    """Random per-band gains: standard deviation of their log, half shared by all bands, half
    per band (another acquisition's brightness and colour cast); 0: none."""
    zoom: float = 0.0
    """Random magnification: half-width of the uniform distribution of its log (0.25: 0.78x
    to 1.28x), the window resampled to the patch side; 0: none."""
    threads: int = 0
    """``torch.set_num_threads`` on CPU; 0: torch's default."""
    workers: int = 0
    """DataLoader worker processes; 0: load in the training process."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    amp: bool = True
    """Mixed-precision training: float16 autocast + GradScaler on CUDA, bfloat16 autocast on
    a CPU with native bfloat16 (AVX512-BF16 or AMX; 1.3x faster steps), float32 on other
    CPUs (see :func:`spectraseg.runtime.autocast_dtype`). Prediction autocasts on CUDA only."""
    channels_last: bool = True
    """Channels-last memory format (about 1.5x faster on CPU)."""
    deterministic: bool = True
    """Deterministic algorithms (needed for exact resume; free on CPU)."""
    checkpoint_every: int = 50
    """Write ``checkpoints/latest.pt`` every this many steps (and at epoch ends); 0: epochs only."""
    val_every: int = 1
    """Validate every this many epochs (and at the end); 0: only at the end."""
    select: str = "val_mean"
    """Validation score that picks ``best.pt``: ``val_mean`` (mean Jaccard at
    ``predict.thresholds``) or ``val_mean_tuned`` (each class at its best threshold on the
    validation scenes, as prediction later tunes them)."""


@dataclass(frozen=True)
class PredictConfig:
    """Whole-scene inference (:mod:`spectraseg.inference.pipeline`), also used by validation."""

    tile: int = 480
    """Tile side in pixels (multiple of ``2**model.depth``). Larger tiles waste less on the
    overlap but hold more memory: for a full 3348 x 3392 scene on 2 CPU cores
    (``benchmarks/bench_predict.py``) 480 x 1 peaks at 1.9 GB, 1024 x 1 at 2.5 GB and is
    about 5% faster. Run outside the ``spectraseg`` command, call
    :func:`spectraseg.runtime.tune_memory` first or large tiles and batches run up to 2x
    slower on CPU."""
    margin: int = 16
    """Context pixels cropped from each tile side (tiles overlap by twice this)."""
    batch: int = 1
    """Tiles per forward pass (also during validation); raise it on a GPU."""
    tta: bool = False
    """Average over the 8 flips / transposes / rotations."""
    thresholds: tuple[float, ...] = ()
    """Per-class probability thresholds (one per class of the data's schema, 10 for DSTL);
    empty: 0.5 for every class."""
    min_area: tuple[float, ...] = ()
    """Per-class minimum polygon area in pixels (one per class); empty: none."""


BLEND_MODES = ("average", "tuned")
"""Values of ``pixel.blend``."""


@dataclass(frozen=True)
class PixelConfig:
    """The per-pixel gradient-boosting partner of the U-Net (:mod:`spectraseg.models.pixel`)."""

    enabled: bool = False
    """Fit it on the training scenes after the U-Net; predict then blends the two per class."""
    samples: int = 20000
    """Training pixels per scene and class (half positives where the class allows)."""
    max_iter: int = 200
    """Boosting iterations per class (early stopping may use fewer)."""
    blend: str = "average"
    """How predict mixes it with the U-Net: ``average`` (equal weights for every class) or
    ``tuned`` (per class the U-Net weight of 0, 0.25, ..., 1 that scores best on the
    validation scenes; noisy when they are few). Thresholds are tuned on validation either way."""


@dataclass(frozen=True)
class Config:
    """The whole configuration; each section is a frozen dataclass."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    pixel: PixelConfig = field(default_factory=PixelConfig)

    def replace(self, overrides: Iterable[str] = ()) -> Config:
        """A copy with ``"section.key=value"`` overrides applied (validated)."""
        raw = to_dict(self)
        for item in overrides:
            key, value = parse_override(item)
            _set_dotted(raw, key, value)
        return from_dict(raw)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        t = self.train
        return t.steps if t.steps > 0 else t.epochs * t.steps_per_epoch


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "predict": PredictConfig,
    "pixel": PixelConfig,
}

_PATH_KEYS = ("root", "cache", "stats")


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted to the field type ``tp`` or ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"config key {key!r} must be {_type_name(tp)}, got {value!r} "
                f"({type(value).__name__})"
            )
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value))
    ok = False
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"config key {key!r} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    return value


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key {name!r} must be a table ([{name}]), got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{name}.{key}'; {name} keys are: {', '.join(sorted(known))}"
            )
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**kwargs)


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Validate a nested mapping (as read from TOML) into a :class:`Config`."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a table of sections, got {type(raw).__name__}")
    sections = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(
                f"unknown config section {name!r}; sections are: {', '.join(SECTIONS)}"
            )
        sections[name] = _build_section(name, SECTIONS[name], values)
    config = Config(**sections)
    validate(config)
    return config


def _check(cond: bool, key: str, message: str, value: Any) -> None:
    """ConfigError ``config key 'key' message, got value`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"config key {key!r} {message}, got {value!r}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """``value`` one of ``choices``, or ConfigError listing them."""
    _check(value in choices, key, f"must be one of {', '.join(choices)}", value)


def _check_multiple(key: str, side: int, depth: int) -> None:
    """A patch or tile side (pixels) the U-Net can halve ``depth`` times: k * 2**depth, k >= 1."""
    multiple = 2**depth
    _check(
        side >= multiple and side % multiple == 0,
        key,
        f"must be a positive multiple of 2**model.depth = {multiple}",
        side,
    )


def _validate_data(config: Config) -> None:
    """``[data]``: a known normalisation scope and a validation share in [0, 1)."""
    d = config.data
    _check_choice("data.norm", d.norm, NORM_MODES)
    _check(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)", d.val_fraction)


def _validate_model(config: Config) -> None:
    """``[model]``: positive width and groups, depth 1..8, a known norm, dropout in [0, 1)."""
    m = config.model
    _check(m.width >= 1, "model.width", "must be >= 1", m.width)
    _check(1 <= m.depth <= 8, "model.depth", "must be in 1..8", m.depth)
    _check_choice("model.norm", m.norm, ("batch", "group", "instance"))
    _check(m.groups >= 1, "model.groups", "must be >= 1", m.groups)
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "must be in [0, 1)", m.dropout)
    _check(0.0 <= m.mixstyle <= 1.0, "model.mixstyle", "must be in [0, 1]", m.mixstyle)


def _validate_loss(config: Config) -> None:
    """``[loss]``: weights >= 0 and not all 0, a known Jaccard mode, per-class vectors of
    values >= 0 (their length is checked against the data's classes: :func:`per_class`)."""
    lo = config.loss
    _check(lo.bce >= 0, "loss.bce", "must be >= 0", lo.bce)
    _check(lo.jaccard >= 0, "loss.jaccard", "must be >= 0", lo.jaccard)
    _check(lo.bce + lo.jaccard > 0, "loss.jaccard", "and loss.bce must not both be 0", lo.jaccard)
    _check_choice("loss.jaccard_mode", lo.jaccard_mode, ("batch", "present", "sample"))
    _check(lo.smooth >= 0, "loss.smooth", "must be >= 0", lo.smooth)
    for key, vec in (("loss.pos_weight", lo.pos_weight), ("loss.class_weights", lo.class_weights)):
        _check(all(v >= 0 for v in vec), key, "must hold values >= 0", list(vec))
    if lo.class_weights:
        _check(sum(lo.class_weights) > 0, "loss.class_weights", "must not all be 0", 0)


def _validate_train(config: Config) -> None:
    """``[train]``: counts and rates in range, at least one step, a known schedule, device
    and selection score, and a patch side that is a multiple of ``2**model.depth``."""
    t = config.train
    _check(0.0 <= t.ema < 1.0, "train.ema", "must be in [0, 1)", t.ema)
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    _check(t.accumulate >= 1, "train.accumulate", "must be >= 1", t.accumulate)
    _check(t.steps >= 0, "train.steps", "must be >= 0", t.steps)
    _check(t.epochs >= 0, "train.epochs", "must be >= 0", t.epochs)
    _check(t.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1", t.steps_per_epoch)
    _check(config.total_steps >= 1, "train.steps", "or train.epochs must be >= 1", t.steps)
    _check(t.minutes >= 0 and math.isfinite(t.minutes), "train.minutes", "must be >= 0", t.minutes)
    _check(t.lr > 0 and math.isfinite(t.lr), "train.lr", "must be > 0", t.lr)
    _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0", t.weight_decay)
    _check(t.precise_bn >= 0, "train.precise_bn", "must be >= 0", t.precise_bn)
    _check_choice("train.schedule", t.schedule, SCHEDULES)
    _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", t.warmup_steps)
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]", t.min_lr_ratio)
    _check(t.seed >= 0, "train.seed", "must be >= 0", t.seed)
    _check_multiple("train.patch_size", t.patch_size, config.model.depth)
    _check(0.0 <= t.rare_share <= 1.0, "train.rare_share", "must be in [0, 1]", t.rare_share)
    _check(
        all(c >= 1 for c in t.rare_classes) and len(set(t.rare_classes)) == len(t.rare_classes),
        "train.rare_classes",
        "must be distinct classes numbered from 1",
        list(t.rare_classes),
    )
    _check(0.0 <= t.photometric <= 1.0, "train.photometric", "must be in [0, 1]", t.photometric)
    _check(0.0 <= t.zoom <= 1.0, "train.zoom", "must be in [0, 1]", t.zoom)
    _check(t.threads >= 0, "train.threads", "must be >= 0", t.threads)
    _check(t.workers >= 0, "train.workers", "must be >= 0", t.workers)
    _check_choice("train.device", t.device, DEVICES)
    _check(t.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0", t.checkpoint_every)
    _check(t.val_every >= 0, "train.val_every", "must be >= 0", t.val_every)
    _check_choice("train.select", t.select, SELECT)


def _validate_predict(config: Config) -> None:
    """``[predict]``: a tile side that is a multiple of ``2**model.depth`` with a margin under
    half of it, thresholds in [0, 1], minimum areas >= 0 (lengths: :func:`per_class`)."""
    p = config.predict
    _check_multiple("predict.tile", p.tile, config.model.depth)
    _check(
        0 <= p.margin and 2 * p.margin < p.tile,
        "predict.margin",
        "must be >= 0 and less than half of predict.tile",
        p.margin,
    )
    _check(p.batch >= 1, "predict.batch", "must be >= 1", p.batch)
    _check(
        all(0.0 <= v <= 1.0 for v in p.thresholds),
        "predict.thresholds",
        "must hold values in [0, 1]",
        list(p.thresholds),
    )
    _check(all(v >= 0 for v in p.min_area), "predict.min_area", "must be >= 0", list(p.min_area))


def per_class(values: Sequence[float], k: int, key: str, default: float) -> tuple[float, ...]:
    """A per-class config vector for data of ``k`` classes: its values when it holds ``k``,
    ``default`` for every class when empty; ConfigError naming ``key`` otherwise."""
    if not values:
        return (float(default),) * k
    if len(values) != k:
        raise ConfigError(
            f"config key '{key}' holds {len(values)} values, but the data has {k} classes"
        )
    return tuple(float(v) for v in values)


def rare_classes(config: Config, k: int, dstl: bool) -> tuple[int, ...]:
    """The classes training oversamples for data of ``k`` classes. The default
    (:data:`spectraseg.RARE_CLASSES`) is DSTL's rare five: on another schema it means none.
    ConfigError when a class is beyond ``k``."""
    classes = config.train.rare_classes
    if not dstl and classes == RARE_CLASSES:
        return ()
    for c in classes:
        if c > k:
            raise ConfigError(
                f"config key 'train.rare_classes' names class {c}, but the data has {k}"
            )
    return classes


def _validate_pixel(config: Config) -> None:
    """``[pixel]``: at least 2 samples and 1 boosting iteration, a known blend mode."""
    px = config.pixel
    _check(px.samples >= 2, "pixel.samples", "must be >= 2", px.samples)
    _check(px.max_iter >= 1, "pixel.max_iter", "must be >= 1", px.max_iter)
    _check_choice("pixel.blend", px.blend, BLEND_MODES)


# Pixel comes first so that a config bad in several sections names the same key as it
# always has; within a section the checks run top to bottom.
_VALIDATORS: dict[str, Callable[[Config], None]] = {
    "pixel": _validate_pixel,
    "data": _validate_data,
    "model": _validate_model,
    "loss": _validate_loss,
    "train": _validate_train,
    "predict": _validate_predict,
}


def validate(config: Config) -> None:
    """Range and consistency checks; raises ConfigError naming the first bad key.

    One validator per section (``_VALIDATORS``); those of ``train`` and ``predict`` also read
    ``model.depth``, which ``model``'s validator has checked before them.
    """
    for check_section in _VALIDATORS.values():
        check_section(config)


def parse_override(item: str) -> tuple[str, Any]:
    """``"section.key=value"`` -> ``("section.key", value)``; value parsed as TOML if it can be."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or "." not in key or not all(key.split(".")):
        raise ConfigError(f"override {item!r} must look like section.key=value")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare string such as a path
    return key, value


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"config key {key!r} must be section.key")
    section, name = parts
    if section not in SECTIONS:
        raise ConfigError(f"unknown config key {key!r}; sections are: {', '.join(SECTIONS)}")
    known = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if name not in known:
        raise ConfigError(
            f"unknown config key {key!r}; {section} keys are: {', '.join(sorted(known))}"
        )
    raw.setdefault(section, {})[name] = value


def _resolve_paths(config: Config, base: Path) -> Config:
    data = config.data
    changes: dict[str, str] = {}
    for key in _PATH_KEYS:
        value = getattr(data, key)
        if value:
            changes[key] = str((base / os.path.expanduser(value)).resolve())
    if not changes:
        return config
    # mypy checks a ** dict against every DataConfig field; these keys are its str paths.
    resolved = dataclasses.replace(data, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(config, data=resolved)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    resolve_paths: bool = True,
) -> Config:
    """Read a TOML config (or the defaults when ``path`` is None) and apply overrides.

    Raises ConfigError when the file is missing or not valid TOML, or for any bad key or
    value (naming it). Relative data paths become absolute (against the current directory).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        try:
            config = from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    else:
        config = Config()
    config = config.replace(overrides)
    return _resolve_paths(config, Path.cwd()) if resolve_paths else config


# --------------------------------------------------------------------------- writing


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples as lists) of a config; ``from_dict`` inverts it."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = getattr(config, name)
        out[name] = {
            f.name: list(v) if isinstance(v := getattr(section, f.name), tuple) else v
            for f in dataclasses.fields(section)
        }
    return out


_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_char(ch: str) -> str:
    if ch in _TOML_ESCAPES:
        return _TOML_ESCAPES[ch]
    # TOML forbids raw control characters (U+0000..U+001F, U+007F) in basic strings.
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\u{ord(ch):04X}"
    return ch


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(ch in text for ch in ".eE") else text + ".0"
    if isinstance(value, str):
        return '"' + "".join(_toml_char(ch) for ch in value) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(config: Config, comments: bool = False) -> str:
    """The config as TOML text, every key present (what a run directory stores).

    With ``comments``, each key is preceded by its documentation as a ``#`` comment.
    """
    docs = field_docs() if comments else {}
    lines: list[str] = []
    for name, values in to_dict(config).items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        for key, value in values.items():
            if doc := docs.get(f"{name}.{key}"):
                lines.extend(textwrap.wrap(doc, 98, initial_indent="# ", subsequent_indent="# "))
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def field_docs() -> dict[str, str]:
    """``{"section.key": first docstring line}`` for documentation and ``--help`` output."""
    docs: dict[str, str] = {}
    for name, cls in SECTIONS.items():
        class_def = ast.parse(inspect.getsource(cls)).body[0]
        assert isinstance(class_def, ast.ClassDef)  # the source of a dataclass
        for node, nxt in itertools.pairwise(class_def.body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[f"{name}.{node.target.id}"] = " ".join(nxt.value.value.split())
    return docs
