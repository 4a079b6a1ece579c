"""Cross-validated training (``spectraseg train --folds K``): every labelled scene is
predicted by a model that never saw its region, the per-class decisions are fitted on
those out-of-fold predictions of all scenes, and a final model trained on every scene (or,
with ``--ensemble``, the average of the K fold models) is the run's model.

Layout of ``RUN``::

    RUN/config.toml          the resolved config; every fold trains with it
    RUN/stats.json           statistics over every cached scene (they use no labels)
    RUN/cv.json              folds, member runs and scores (runs.CrossValidation)
    RUN/folds/{k}/           fold k's run: the other folds' scenes, no validation split
    RUN/final/               the final model's run: every scene, the same budget as a fold
    RUN/oof/{id}.unet.npy    uint8 (K, H, W) levels of the fold model that did not see the scene
    RUN/oof/{id}.pixel.npy   the same for that fold's per-pixel model (``pixel.enabled``)
    RUN/thresholds.json      per-class thresholds (and U-Net / pixel blend weights) fitted on
                             the pooled out-of-fold predictions of every scene

Folds are whole region groups (:func:`spectraseg.features.split.region_folds`). A fold
trains for the config's budget (``train.steps``/``epochs``/``minutes``) and keeps its last
checkpoint: no scene is used to choose anything inside a fold. Decisions are fitted by the
one tuner (:func:`spectraseg.evaluation.thresholds.tune_blend`) on the summed level
histograms. Two scores come out, both raster and pooled over all scenes (the competition's
way): **plain** (decisions fitted on all out-of-fold predictions, scored on the same:
optimistic) and **nested** (each fold scored with decisions fitted on the other folds' out-of-
fold predictions: what a new region can expect). ``spectraseg predict --run RUN`` applies
``RUN/thresholds.json`` to the final model (U-Net and per-pixel model), or to the mean of the
K U-Nets and of the K per-pixel models (:mod:`spectraseg.models.ensemble`) in a run without
one.

Why the final model: the nested score is of one model per scene, and the final model is one
model trained as each fold's was, on more regions, so the nested score is what it can expect.
The average of fold models was measured against it without scoring either on scenes it saw
(``benchmarks/bench_final_vs_ensemble.py``, docs/accuracy.md): on dstl-lite the two scored
the same within the seed spread (final 0.132 and 0.122, average 0.125 and 0.125), and the
final model predicts K times fewer U-Net passes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spectraseg.align.cache import Cache, open_cache
from spectraseg.align.masks import open_mask
from spectraseg.config import Config
from spectraseg.data.classes import DSTL_SCHEMA
from spectraseg.errors import ConfigError
from spectraseg.evaluation.levels import blend_levels, quantize
from spectraseg.evaluation.metrics import Evaluation, pixel_areas
from spectraseg.evaluation.thresholds import (
    BLEND_GRID,
    PLATEAU,
    class_histograms,
    counts_at,
    tune_blend,
)
from spectraseg.features.patches import load_scene
from spectraseg.features.split import region_folds, run_scenes
from spectraseg.inference.outputs import save_levels
from spectraseg.inference.scene import PredictOptions, resolve_options, scene_levels
from spectraseg.runs import (
    CrossValidation,
    RunDir,
    TunedThresholds,
    load_model,
    load_pixel_model,
    model_mtime_ns,
    pixel_mtime_ns,
    read_config,
    read_cv,
    read_stats,
    write_config,
    write_cv,
    write_stats,
    write_thresholds,
)
from spectraseg.training.data import config_stats
from spectraseg.training.loop import train

MODELS = {"unet": 1.0, "pixel": 0.0}
"""The blend weight that makes each partner alone (the U-Net's weight)."""

FINAL = "final"
"""``RUN/final``: the model trained on every scene, which a run with one ships."""


@dataclass
class CVResult:
    """What :func:`train_folds` did and measured."""

    run_dir: Path
    folds: list[list[str]]
    decisions: TunedThresholds
    """Fitted on every scene's out-of-fold prediction: what prediction uses."""
    nested: Evaluation
    """Each fold scored with decisions fitted on the other folds (the honest figure)."""
    plain: Evaluation
    """Every scene scored with :attr:`decisions` (fitted on the same predictions)."""
    models: dict[str, Evaluation] = field(default_factory=dict)
    """Nested scores of the U-Net alone and the per-pixel model alone (with a pixel model)."""
    fold_decisions: list[dict[str, Any]] = field(default_factory=list)
    """Per fold, the decisions its :attr:`nested` score used (fitted on the other folds):
    :func:`~spectraseg.evaluation.thresholds.tune_blend`'s ``thresholds`` and ``blend``."""
    final: Path | None = None
    """The final model's run directory, which prediction uses (None: the folds' average)."""
    steps: list[int] = field(default_factory=list)
    """Optimizer steps of each fold, then of the final model (a run with one)."""
    seconds: float = 0.0
    """Training seconds of all folds and the final model."""


def oof_paths(run: RunDir, image_id: str) -> dict[str, Path]:
    """``unet`` and ``pixel``: a scene's out-of-fold levels in ``RUN/oof``."""
    return {name: run.oof / f"{image_id}.{name}.npy" for name in MODELS}


def _open(
    config: Config | None, run: RunDir, folds: int, resume: bool, progress: bool, final: bool
) -> tuple[Config, CrossValidation]:
    """The config and fold plan (with a final model when ``final``): read back when
    resuming, else made and written."""
    if resume:
        cv = read_cv(run)
        if cv is None:
            raise ConfigError(f"{run.root} holds no cross-validated run to resume")
        return read_config(run) if config is None else config, cv
    if config is None:
        raise ConfigError("a new run needs a config")
    if run.root.exists() and not run.root.is_dir():
        raise ConfigError(f"{run.root} exists and is not a directory: choose another --out")
    if run.cv.exists() or run.latest.exists():
        raise ConfigError(
            f"{run.root} already holds a run; resume it with --resume or choose another --out"
        )
    if folds < 2:
        raise ConfigError(f"--folds {folds} must be at least 2")
    if not config.data.cache:
        raise ConfigError("config key 'data.cache' is empty: set it to a cache written by align")
    cache = open_cache(config.data.cache)
    scenes = run_scenes(config.data, cache, progress)
    plan = region_folds(scenes, folds, config.train.seed)
    cv = CrossValidation(
        tuple(tuple(f) for f in plan),
        tuple(f"folds/{k + 1}" for k in range(folds)),
        final=FINAL if final else None,
    )
    run.root.mkdir(parents=True, exist_ok=True)
    write_config(run, config)
    write_stats(run, config_stats(config, cache, progress))
    write_cv(run, cv)
    return config, cv


def fold_config(
    config: Config, run: RunDir, held_out: Sequence[str], scenes: Sequence[str]
) -> Config:
    """Fold training: every scene but ``held_out``, no validation, the run's statistics."""
    keep = [i for i in scenes if i not in set(held_out)]
    overrides = [
        f"data.scenes={json.dumps(keep)}",
        "data.val_scenes=[]",
        "data.val_fraction=0.0",
        f"data.stats={json.dumps(str(run.stats.resolve()))}",
    ]
    return config.replace(overrides)


def _fold_done(run: RunDir, held_out: Sequence[str], pixel: bool) -> bool:
    names = ("unet", "pixel") if pixel else ("unet",)
    return all(oof_paths(run, i)[n].is_file() for i in held_out for n in names)


def _train_fold(
    config: Config, run: RunDir, member: RunDir, held_out: Sequence[str], cv: CrossValidation,
    progress: bool,
) -> None:  # fmt: skip
    """Train (or resume) fold ``member`` on every scene outside ``held_out``."""
    scenes = cv.scenes
    cfg = fold_config(config, run, held_out, scenes)
    resume = member.latest.is_file()
    result = train(None if resume else cfg, member.root, resume=resume, progress=progress)
    if result.interrupted:
        raise KeyboardInterrupt


def _predict_oof(
    run: RunDir, member: RunDir, cache: Cache, config: Config, held_out: Sequence[str],
    options: PredictOptions, progress: bool,
) -> None:  # fmt: skip
    """Out-of-fold levels of the held-out scenes with the fold's models, in ``RUN/oof``."""
    opts = resolve_options(options, config)
    model, _, _ = load_model(member, "latest", opts.device)
    pixel = load_pixel_model(member) if config.pixel.enabled else None
    stats = read_stats(run)
    assert stats is not None  # written by _open
    for image_id in tqdm(held_out, desc="out-of-fold", unit="scene", disable=not progress):
        image = load_scene(cache, image_id, stats, config.data.indices)
        paths = oof_paths(run, image_id)
        save_levels(paths["unet"], scene_levels(model, image, opts))
        if pixel is not None:
            save_levels(paths["pixel"], quantize(pixel.predict_proba(image)))


def level_histograms(
    cache: Cache, image_id: str, levels: np.ndarray, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """One prediction of a cached scene, uint8 levels ``(K, H, W)``, against its labels (pixels
    they say nothing about left out): ``(pos, neg)`` float64 ``(1, K, 256)``, counts times
    ``weight`` (the scene's pixel area), the form :func:`nested_scores` reads."""
    truth = open_mask(cache, image_id, levels.shape[1:])
    pos, neg = class_histograms(levels, truth, weight, cache.counted(image_id))
    return pos[None], neg[None]


def scene_histograms(
    run: RunDir, cache: Cache, image_id: str, weight: float, pixel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A scene's out-of-fold level histograms ``(B, K, 256)`` against its labels (pixels they
    say nothing about left out), one pair per U-Net weight of :data:`BLEND_GRID` with a pixel
    model (``B = 5``), else ``B = 1``."""
    paths = oof_paths(run, image_id)
    unet = np.load(paths["unet"])
    if not pixel:
        return level_histograms(cache, image_id, unet, weight)
    truth = open_mask(cache, image_id, unet.shape[1:])
    valid = cache.counted(image_id)
    other = np.load(paths["pixel"])
    everywhere = [dict.fromkeys(range(1, len(unet) + 1), w) for w in BLEND_GRID]
    pairs = [
        class_histograms(blend_levels(unet, other, b), truth, weight, valid) for b in everywhere
    ]
    return np.stack([p for p, _ in pairs]), np.stack([n for _, n in pairs])


def run_histograms(
    run: RunDir, cache: Cache, scenes: Sequence[str], root: str, pixel: bool,
    progress: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """:func:`scene_histograms` of every scene of ``scenes``, each weighted by its area
    (``root``: the dataset root whose grid sizes give the areas)."""
    areas = pixel_areas(cache, root, scenes)
    return {
        i: scene_histograms(run, cache, i, areas[i], pixel)
        for i in tqdm(scenes, desc="decisions", unit="scene", disable=not progress, leave=False)
    }


def oof_levels(run: RunDir, image_id: str, blend: Mapping[int, float] | None) -> np.ndarray:
    """A scene's out-of-fold levels uint8 ``(10, H, W)``: the U-Net's, or with ``blend`` (per
    class the U-Net's weight) blended with the per-pixel model's."""
    paths = oof_paths(run, image_id)
    unet = np.load(paths["unet"])
    return unet if blend is None else blend_levels(unet, np.load(paths["pixel"]), blend)


Histograms = dict[str, tuple[np.ndarray, np.ndarray]]
"""Per scene, its ``(pos, neg)`` level histograms ``(B, 10, 256)``."""


def _decide(
    hist: Histograms, scenes: Sequence[str], mode: str, plateau: float = PLATEAU
) -> dict[str, Any]:
    """:func:`tune_blend` on the histograms of ``scenes``, summed."""
    pos = sum(hist[i][0] for i in scenes)
    neg = sum(hist[i][1] for i in scenes)
    return tune_blend(np.asarray(pos), np.asarray(neg), mode, plateau=plateau)


def _score(
    hist: Histograms, scenes: Sequence[str], decided: Mapping[str, Any], blend: Any = "decided"
) -> np.ndarray:
    """Per-scene TP/FP/FN ``(n, K, 3)`` of ``scenes`` at decisions ``decided``; ``blend``
    ``"decided"`` uses their blend weights, a number one weight for every class."""
    if blend == "decided":
        weights = decided["blend"]
        thresholds = decided["thresholds"]
    else:  # one partner alone, at its own thresholds
        weights = dict.fromkeys(decided["thresholds"], float(blend))
        thresholds = decided["thresholds_unet" if blend == 1.0 else "thresholds_pixel"]
    return np.stack([counts_at(*hist[i], thresholds, weights) for i in scenes])


def nested_scores(
    hist: Histograms,
    folds: Sequence[Sequence[str]],
    mode: str,
    blend: Any = "decided",
    names: Sequence[str] = DSTL_SCHEMA.names,
    plateau: float = PLATEAU,
    decide_on: Histograms | None = None,
) -> tuple[Evaluation, list[dict[str, Any]]]:
    """Every fold scored with decisions fitted on the other folds' histograms; the score and
    each fold's decisions (``names``: the classes, in order; ``plateau``: the thresholds'
    rule, :func:`~spectraseg.evaluation.thresholds.choose_thresholds`; ``decide_on``: other
    histograms of the same scenes to fit the decisions on, e.g. of predictions with
    test-time augmentation when ``hist`` has them without; None: ``hist``)."""
    fit_on = hist if decide_on is None else decide_on
    ids: list[str] = []
    counts, decisions = [], []
    for k, held_out in enumerate(folds):
        others = [i for j, f in enumerate(folds) if j != k for i in f]
        decisions.append(_decide(fit_on, others, mode, plateau))
        counts.append(_score(hist, held_out, decisions[-1], blend))
        ids.extend(held_out)
    ev = Evaluation(tuple(ids), np.concatenate(counts), "raster", names=tuple(names))
    return ev, decisions


def _tuned(
    decided: Mapping[str, Any], config: Config, run: RunDir, scenes: Sequence[str],
    options: PredictOptions,
) -> TunedThresholds:  # fmt: skip
    """The record of decisions fitted on every scene's out-of-fold prediction."""
    plain = decided["jaccard"]
    return TunedThresholds(
        thresholds=decided["thresholds"],
        jaccard=plain,
        tuned=decided["tuned"],
        mean_jaccard=float(np.mean(list(plain.values()))),
        jaccard_unet=decided["jaccard_unet"],
        thresholds_unet=decided["thresholds_unet"],
        jaccard_config={},
        mean_jaccard_config=0.0,
        grid=decided["grid"],
        scenes=list(scenes),
        checkpoint="latest",
        checkpoint_mtime_ns=model_mtime_ns(run, "latest"),
        tta=bool(resolve_options(options, config).tta),
        tile=options.tile if options.tile is not None else config.predict.tile,
        margin=options.margin if options.margin is not None else config.predict.margin,
        blend=decided["blend"],
        thresholds_pixel=decided["thresholds_pixel"],
        pixel_model_mtime_ns=pixel_mtime_ns(run),
        metric="raster, out-of-fold predictions of every scene, pooled",
    )


def _scores_doc(result: CVResult) -> dict[str, Any]:
    def brief(ev: Evaluation) -> dict[str, Any]:
        return {"mean": ev.mean, "jaccard": [float(v) for v in ev.jaccard]}

    return {
        "metric": "raster, pooled over all scenes",
        "nested": brief(result.nested),
        "plain": brief(result.plain),
        "models_nested": {name: brief(ev) for name, ev in result.models.items()},
        "steps": result.steps,
        "training_seconds": result.seconds,
    }


def train_folds(
    config: Config | None,
    run_dir: str | os.PathLike[str],
    folds: int = 4,
    resume: bool = False,
    progress: bool = True,
    options: PredictOptions = PredictOptions(),
    final: bool = True,
) -> CVResult:
    """Train ``folds`` region-grouped fold models, predict every scene out of fold, train the
    final model on every scene, fit the per-class decisions on the out-of-fold predictions
    and score them (module docstring).

    Args:
        config: the run's config (``data.cache`` with every labelled scene; the training
            budget applies to each fold and to the final model); None when resuming (the
            run's own).
        run_dir: the run directory ``RUN``.
        folds: number of folds, whole region groups each.
        resume: continue a run: finished folds are kept, an interrupted one resumes.
        progress: progress bars on stderr.
        options: how the held-out scenes are predicted (the run's ``[predict]`` by default).
        final: a new run ships a model trained on every scene (``RUN/final``) rather than
            the fold models' average; a resumed run keeps its own choice. On dstl-lite the
            two scored the same on regions they never saw, within the seed spread, and the
            final model predicts faster (docs/accuracy.md).
    """
    run = RunDir.of(run_dir)
    config, cv = _open(config, run, folds, resume, progress, final)
    cache = open_cache(config.data.cache)
    pixel = config.pixel.enabled
    for k, held_out in enumerate(cv.folds):
        if _fold_done(run, held_out, pixel):
            continue
        member = RunDir(run.root / cv.members[k])
        _train_fold(config, run, member, held_out, cv, progress)
        _predict_oof(run, member, cache, config, held_out, options, progress)
    if cv.final is not None and not _final_done(RunDir(run.root / cv.final), pixel):
        _train_fold(config, run, RunDir(run.root / cv.final), (), cv, progress)
    return _conclude(config, run, cv, cache, options, progress)


def _final_done(final: RunDir, pixel: bool) -> bool:
    """Whether the final model finished: ``best.pt`` is written after the last step (and
    the per-pixel model after it)."""
    return final.best.is_file() and (not pixel or final.pixel_model.is_file())


def _conclude(
    config: Config, run: RunDir, cv: CrossValidation, cache: Cache, options: PredictOptions,
    progress: bool,
) -> CVResult:  # fmt: skip
    """Decisions on every scene, nested and plain scores; ``thresholds.json``, ``cv.json``."""
    scenes = cv.scenes
    pixel = config.pixel.enabled
    hist = run_histograms(run, cache, scenes, config.data.root, pixel, progress)
    mode = config.pixel.blend
    decided = _decide(hist, scenes, mode)
    names = cache.schema.names
    models = (
        {name: nested_scores(hist, cv.folds, mode, w, names)[0] for name, w in MODELS.items()}
        if pixel
        else {}
    )
    nested, fold_decisions = nested_scores(hist, cv.folds, mode, names=names)
    result = CVResult(
        run_dir=run.root,
        folds=[list(f) for f in cv.folds],
        decisions=_tuned(decided, config, run, scenes, options),
        nested=nested,
        plain=Evaluation(
            tuple(scenes), _score(hist, scenes, decided), "raster", names=tuple(names)
        ),
        models=models,
        fold_decisions=fold_decisions,
        final=None if cv.final is None else run.root / cv.final,
    )
    for member in (*cv.members, *([cv.final] if cv.final else [])):
        doc = json.loads((run.root / member / "metrics.json").read_text(encoding="utf-8"))
        last = doc["epochs"][-1] if doc["epochs"] else {"step": 0, "seconds": 0.0}
        result.steps.append(int(last["step"]))
        result.seconds += float(last["seconds"])
    write_thresholds(run, result.decisions)
    write_cv(run, replace(cv, scores=_scores_doc(result)))
    return result
