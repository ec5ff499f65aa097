"""Train, tune, evaluate and save a scikit-learn pipeline on the codes of one store layer.

``fit_pipeline`` uses the store's split: it trains on ``train``, selects hyper-parameters
on ``val`` when there is one (stratified k-fold CV on ``train`` otherwise, and on every
row when the store has no split), reports on ``val`` and ``test``, and saves the fitted
pipeline with its metadata in a run folder (see :mod:`cnncodes.model`). ``val_paths``
holds named training rows out instead, as ``compare`` does for a source without val, so
that every strategy is chosen on the same images; the store itself is not changed.

A store with augmented views (``extract --views``) trains on every view of its training
images, but never lets a view speak for an image: CV folds are drawn by source image
(``StratifiedGroupKFold``: all views of an image in one fold, so none of its views is
trained on while the image is scored), a held-out image takes its views out of training
with it, and every score (CV, val, test) is of the images themselves (view 0).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer

from .._version import __version__
from ..data.splits import validation_record
from ..data.store import CodeStore
from ..errors import CnnCodesError
from ..paths import default_runs_dir, safe_name
from ..progress import log
from ..scoring import check_class_weight, check_scoring, score
from .model import PREDICTIONS_FILE, save_model
from .search import SearchResult, fit_final, search_pipeline

__all__ = ["FitConfig", "FitResult", "check_class_weight_for", "fit_pipeline", "load_pipeline_module", "default_runs_dir",
           "REFIT_CHOICES"]

REFIT_CHOICES = ("train", "train+val")


def _pipeline_names() -> list[str]:
    from ..pipelines import NAMES

    return sorted(NAMES)


def load_pipeline_module(clf: str) -> ModuleType:
    """The module behind ``--clf``: a named pipeline, or a user's ``.py`` file given as a path.

    Raises:
        CnnCodesError: unknown name, missing file, or a file without ``build`` and
            ``search_space``.
    """
    is_path = clf.endswith(".py") or os.sep in clf or "/" in clf
    if not is_path:
        if clf not in _pipeline_names():
            raise CnnCodesError(
                f"Unknown pipeline {clf!r}; choose one of {', '.join(_pipeline_names())}, or "
                "give a path to a .py file defining build(**params) and search_space."
            )
        return importlib.import_module(f"cnncodes.pipelines.{clf}")
    path = Path(clf).expanduser()
    if not path.is_file():
        raise CnnCodesError(
            f"Pipeline file {clf!r} does not exist; give a .py file defining "
            f"build(**params) and search_space, or a name: {', '.join(_pipeline_names())}."
        )
    spec = importlib.util.spec_from_file_location(f"cnncodes_user_pipeline_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise CnnCodesError(f"Pipeline file {clf!r} cannot be imported; is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "build", None)) or not isinstance(
        getattr(module, "search_space", None), dict
    ):
        raise CnnCodesError(
            f"Pipeline file {clf!r} must define build(**params) returning an unfitted "
            "sklearn Pipeline and search_space, a dict of parameter -> candidate values "
            "(see pipelines/logreg.py)."
        )
    return module


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides what :func:`fit_pipeline` trains and where it saves it.

    Attributes:
        clf: a pipeline name (``logreg``, ``torch_logreg``, ``linear_svm``, ``rbf_svm``,
            ``mlp``, ``knn``) or a path to a ``.py`` file with ``build`` and ``search_space``.
        layer: store layer (node name or the spec as typed); None = the first.
        cv: folds of stratified CV when the store has no ``val`` split.
        pca: insert PCA to this many components before the classifier.
        l2norm: L2-normalise every code first.
        out: run folder; default ``cache/runs/<store stem>-<clf>-<layer>``.
        refit_on: ``train``, or ``train+val`` to refit on both after selection.
        seed: random state of folds and of every estimator that takes one.
        progress: print a line per stage (on stderr).
        val_paths: training rows to hold out as the validation set (the store's
            ``file_paths``: relative to the source, as its listing names them), for a store
            without a val split; None: the store's val split, or cross-validation without one.
        device: where torch-fitted classifiers (``torch_logreg``, ``linear_svm``) run:
            ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``; None: the
            pipeline's own setting (``auto`` for the shipped ones).
        n_jobs: CV folds fitted side by side; None: as many as cores and folds allow
            (each with its share of the cores' threads).
        scoring: what the hyper-parameter search maximises on val or the CV folds, one of
            :data:`cnncodes.scoring.SCORINGS`.
        class_weight: ``balanced`` sets the classifier's ``class_weight="balanced"`` (for
            classifiers that take one: ``logreg``, ``rbf_svm``); ``none`` leaves it as built.
    """

    clf: str = "logreg"
    layer: str | int | None = None
    cv: int = 5
    pca: int | None = None
    l2norm: bool = False
    out: str | os.PathLike[str] | None = None
    refit_on: str = "train"
    seed: int = 0
    progress: bool = True
    val_paths: tuple[str, ...] | None = None
    device: str | None = None
    n_jobs: int | None = None
    scoring: str = "accuracy"
    class_weight: str = "none"

    def __post_init__(self) -> None:
        check_scoring(self.scoring)
        check_class_weight(self.class_weight)
        if self.val_paths is not None:
            if isinstance(self.val_paths, str) or not self.val_paths:
                raise CnnCodesError(
                    "val_paths must be a non-empty collection of image paths as the store "
                    f"lists them, or None; got {self.val_paths!r}."
                )
            object.__setattr__(self, "val_paths", tuple(sorted(map(str, self.val_paths))))
        if self.refit_on not in REFIT_CHOICES:
            raise CnnCodesError(
                f"refit_on must be one of {', '.join(REFIT_CHOICES)}; got {self.refit_on!r}."
            )
        if not isinstance(self.cv, int) or self.cv < 2:
            raise CnnCodesError(f"cv must be an integer of at least 2 folds; got {self.cv!r}.")
        if self.pca is not None and (not isinstance(self.pca, int) or self.pca < 1):
            raise CnnCodesError(f"pca must be a positive number of components; got {self.pca!r}.")
        if self.n_jobs is not None and (not isinstance(self.n_jobs, int) or self.n_jobs < 1):
            raise CnnCodesError(
                f"n_jobs must be a positive number of parallel folds, or None; got {self.n_jobs!r}."
            )


@dataclass
class FitResult:
    """What :func:`fit_pipeline` trained: the run folder, chosen parameters and metrics.

    Attributes:
        run_dir: the run folder.
        model_path: the saved pipeline (``model.skops``) inside it.
        best_params: the selected hyper-parameters (``set_params`` names).
        metrics: accuracies, mean per-class accuracy, macro F1, sizes and seconds.
        row: one row of ``cnncodes report``.
        metadata: everything written to ``metadata.json``.
        pipeline: the fitted pipeline.
        search: the full search record.
    """

    run_dir: Path
    model_path: Path
    best_params: dict[str, Any]
    metrics: dict[str, Any]
    row: dict[str, Any]
    metadata: dict[str, Any] = field(repr=False)
    pipeline: Pipeline = field(repr=False)
    search: SearchResult = field(repr=False)


def _seeded(pipeline: Pipeline, seed: int, device: str | None) -> Pipeline:
    """Give every unset ``random_state`` the run's seed, so that a run can be repeated,
    and every step's ``device`` the one asked for."""
    params = pipeline.get_params()
    unset = {k: seed for k, v in params.items() if k.endswith("random_state") and v is None}
    if device is not None:
        unset.update({k: device for k in params if k.endswith("__device")})
    return pipeline.set_params(**unset)


def _with_steps(pipeline: Pipeline, pca: int | None, l2norm: bool, seed: int) -> Pipeline:
    steps = list(pipeline.steps)
    if pca is not None:
        steps.insert(len(steps) - 1, ("pca", PCA(n_components=pca, random_state=seed)))
    if l2norm:
        steps.insert(0, ("l2norm", Normalizer(norm="l2")))
    return Pipeline(steps)


def _check_weighted(pipeline: Pipeline, clf: str, class_weight: str) -> None:
    classifier = pipeline.steps[-1][1]
    if "class_weight" not in classifier.get_params():
        raise CnnCodesError(
            f"--class-weight {class_weight} needs a classifier that takes class weights; "
            f"{type(classifier).__name__} of {clf!r} does not. Use --clf logreg or rbf_svm, "
            "or --class-weight none."
        )


def check_class_weight_for(clf: str, class_weight: str) -> None:
    """Refuse ``class_weight`` other than ``none`` for a pipeline whose classifier takes
    no class weights, before any work (``compare`` checks this ahead of extraction)."""
    if class_weight == "none":
        return
    try:
        pipeline = load_pipeline_module(clf).build()
    except TypeError:  # a user's build() that needs its search parameters: fit checks it
        return
    if isinstance(pipeline, Pipeline):
        _check_weighted(pipeline, clf, class_weight)


def _build(module: ModuleType, config: FitConfig, params: dict[str, Any]) -> Pipeline:
    pipeline = module.build(**params)
    if not isinstance(pipeline, Pipeline):
        raise CnnCodesError(
            f"build() of pipeline {config.clf!r} returned {type(pipeline).__name__}, not a "
            "sklearn.pipeline.Pipeline; wrap the estimator with make_pipeline(...)."
        )
    if config.class_weight != "none":
        _check_weighted(pipeline, config.clf, config.class_weight)
        pipeline.steps[-1][1].set_params(class_weight=config.class_weight)
    return _seeded(_with_steps(pipeline, config.pca, config.l2norm, config.seed), config.seed,
                   config.device)


def _short(params: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.rsplit('__', 1)[-1]}={value(v)}" for k, v in params.items())


def _check_data(store: CodeStore, y: np.ndarray, rows: dict[str, np.ndarray], config: FitConfig,
                selection: str, dim: int) -> None:
    name = store.path.name
    if len(store) == 0:
        raise CnnCodesError(
            f"Code store {name!r} holds no codes (0 images); extract a source with images."
        )
    if len(rows["train"]) == 0:
        found = sorted({s for s in (store.split if store.split is not None else []) if s})
        raise CnnCodesError(
            f"Code store {name!r} has no labeled 'train' images (splits found: "
            f"{', '.join(found) or 'none'}); fit needs a train split, or a store without "
            "any split (then all labeled images are used with cross-validation)."
        )
    classes = store.classes
    present = np.unique(y[rows["train"]])
    if len(present) < 2:
        only = classes[present[0]] if len(present) and present[0] < len(classes) else "?"
        raise CnnCodesError(
            f"Training images of {name!r} all belong to one class ({only!r}); a classifier "
            "needs at least two classes."
        )
    if config.refit_on == "train+val" and len(rows["val"]) == 0:
        raise CnnCodesError(
            f"refit_on='train+val' needs a 'val' split but {name!r} has none; use "
            "refit_on='train'."
        )
    if selection == "cv":
        train = rows["train"]
        counts = np.bincount(y[train[store.views[train] == 0]])  # images, not views
        smallest = int(counts[counts > 0].min())
        if smallest < config.cv:
            fix = (f"lower --cv to {smallest} or less" if smallest >= 2 else
                   "add training images to that class, or give a val split (folder or "
                   "CSV split column) so that no CV is needed")
            raise CnnCodesError(
                f"cv={config.cv} needs at least {config.cv} training images per class, but a "
                f"class of {name!r} has {smallest}; {fix}."
            )
    if config.pca is not None:
        n_fit = len(rows["train"]) if selection == "val" else len(rows["train"]) * (config.cv - 1) // config.cv
        if config.pca > min(dim, n_fit):
            raise CnnCodesError(
                f"pca={config.pca} exceeds what the data allows (code dim {dim}, "
                f"{n_fit} training rows per fit); choose --pca {min(dim, n_fit)} or less."
            )


def fit_pipeline(
    store: str | os.PathLike[str] | CodeStore,
    *,
    clf: str = "logreg",
    layer: str | int | None = None,
    cv: int = 5,
    pca: int | None = None,
    l2norm: bool = False,
    out: str | os.PathLike[str] | None = None,
    refit_on: str = "train",
    seed: int = 0,
    progress: bool = True,
    val_paths: Collection[str] | None = None,
    device: str | None = None,
    n_jobs: int | None = None,
    scoring: str = "accuracy",
    class_weight: str = "none",
) -> FitResult:
    """Train, tune, evaluate and save a pipeline on one layer of a code store.

    Args:
        store: a code store path or an open :class:`CodeStore`.
        clf, layer, cv, pca, l2norm, out, refit_on, seed, progress: see :class:`FitConfig`.
        val_paths: training rows (by path) held out to select on, for a store without a
            val split (see :func:`cnncodes.data.splits.carve_validation`).
        device, n_jobs, scoring, class_weight: see :class:`FitConfig`.

    Returns:
        The run folder, chosen hyper-parameters, metrics and report row.

    Raises:
        CnnCodesError: unknown pipeline or layer, no train split, a single class, an empty
            store, options the data cannot support, or ``val_paths`` that are not training
            rows of a store without val.
    """
    config = FitConfig(clf, layer, cv, pca, l2norm, out, refit_on, seed, progress,
                       None if val_paths is None else tuple(val_paths), device, n_jobs,
                       scoring, class_weight)
    if isinstance(store, CodeStore):
        return _fit(store, config)
    with CodeStore(store) as opened:
        return _fit(opened, config)


def _log(config: FitConfig, message: str) -> None:
    log("fit", message, enabled=config.progress)


def _fit_space_to_folds(space: dict[str, Any], smallest: int) -> dict[str, Sequence[Any]]:
    """Drop neighbour counts (``*n_neighbors``) above the smallest training fold: k-NN
    cannot ask for more neighbours than it has samples. None left: the fold size itself."""
    fitted = {}
    for key, values in space.items():
        if key.endswith("n_neighbors"):
            values = [v for v in values if v <= smallest] or [smallest]
        fitted[key] = values
    return fitted


def _hold_out(store: CodeStore, rows: dict[str, np.ndarray], val_paths: tuple[str, ...]) -> None:
    """Move the training rows named in ``val_paths`` to ``rows["val"]`` (in place)."""
    name = store.path.name
    if len(rows["val"]):
        raise CnnCodesError(
            f"val_paths hold training rows out for validation, but {name!r} has its own "
            "val split; leave val_paths out to select on it."
        )
    train_paths = np.asarray(store.file_paths, dtype=object)[rows["train"]]
    missing = sorted(set(val_paths) - set(train_paths.tolist()))
    if missing:
        raise CnnCodesError(
            f"{len(missing)} of the {len(val_paths)} val_paths are not training rows of "
            f"{name!r} (first: {missing[0]!r}); validation images come from train, never "
            "from test. Give paths as the store lists them (relative to the source)."
        )
    held_out = np.isin(train_paths, np.asarray(val_paths, dtype=object))
    rows["val"] = rows["train"][held_out]
    rows["train"] = rows["train"][~held_out]


def _fit(store: CodeStore, config: FitConfig) -> FitResult:
    started = time.perf_counter()
    module = load_pipeline_module(config.clf)
    if config.device is not None:
        from ..runtime import resolve_device

        resolve_device(config.device)  # an unknown or absent device fails before any work
    layer = store.resolve(config.layer)
    dim = store.dim(layer)
    y = store.labels
    split = store.split
    labeled = y >= 0
    if split is None:
        split = np.where(labeled, "train", "")
    split = np.where(labeled, split, "")
    rows = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    if config.val_paths is not None:
        _hold_out(store, rows, config.val_paths)
    views = store.views
    for held in ("val", "test"):  # scored on the images themselves, never on views
        rows[held] = rows[held][views[rows[held]] == 0]
    selection = "val" if len(rows["val"]) else "cv"
    _check_data(store, y, rows, config, selection, dim)
    X = store.codes(layer)
    # What the search fits with: the built pipeline with the module's search-only settings.
    pipeline = _build(module, config, dict(getattr(module, "search_settings", {})))
    space = dict(getattr(module, "search_space", {}))
    path_parameter = getattr(module, "path_parameter", None)
    if path_parameter not in space:
        path_parameter = None

    if selection == "val":
        search_rows = np.concatenate([rows["train"], rows["val"]])
        n_train = len(rows["train"])
        folds = [(np.arange(n_train), np.arange(n_train, len(search_rows)))]
    else:
        search_rows = rows["train"]
        folds = cv_folds(y, store.groups, views, search_rows, config.cv, config.seed)
    space = _fit_space_to_folds(space, min(len(train) for train, _ in folds))
    n_images = int(np.sum(views[rows["train"]] == 0))
    shape = (f"{len(rows['train'])} x {dim}" if n_images == len(rows["train"]) else
             f"{len(rows['train'])} rows x {dim}: {n_images} images and their views")
    _log(config, f"{config.clf} on {layer} ({shape}); selecting on "
         f"{'val' if selection == 'val' else f'{config.cv}-fold CV'} over "
         f"{int(np.prod([len(v) for v in space.values()])) if space else 1} candidates")
    found = search_pipeline(
        pipeline, space, X[search_rows], y[search_rows], folds, path_parameter=path_parameter,
        n_jobs=config.n_jobs, scoring=config.scoring,
    )
    _log(config, f"best {_short(found.best_params) or 'defaults'}: {found.best_score:.4f} "
         f"({len(found.candidates)} evaluated in {found.seconds:.1f}s)")

    fit_rows = rows["train"] if config.refit_on == "train" else np.concatenate(
        [rows["train"], rows["val"]])
    # Started from the search's own solutions at the chosen C (see search.fit_final).
    final = fit_final(_build(module, config, found.best_params), X[fit_rows], y[fit_rows],
                      found.start)
    fit_seconds = time.perf_counter() - started

    held_out = _held_out_predictions(final, X, y, rows, search_rows, found, config, selection)
    metrics = _metrics(final, X, y, rows, fit_rows, held_out, found, config, selection, dim,
                       views)
    metrics["fit_seconds"] = round(fit_seconds, 3)
    metrics["search_seconds"] = round(found.seconds, 3)
    clf_name = Path(config.clf).stem if config.clf.endswith(".py") else config.clf
    run_dir = Path(config.out) if config.out else default_runs_dir() / _run_name(
        store, config, clf_name, layer)
    row = {
        "run": run_dir.name, "backbone": store.attrs.get("backbone"),
        "weights": store.attrs.get("weights"), "layer": layer, "pipeline": clf_name,
        "params": _short(found.best_params), "selected_on": metrics["selected_on"],
        "n_train": metrics["n_train"], "code_dim": dim,
        **{key: metrics[key] for key in ("train_accuracy", "val_accuracy", "test_accuracy",
                                         "cv_accuracy", "mean_per_class_accuracy", "macro_f1",
                                         "fit_seconds")},
    }
    metadata = _metadata(store, config, module, layer, dim, found, metrics, row, clf_name, rows)
    model_path = save_model(run_dir, final, metadata)
    _predictions_frame(store, y, held_out).to_csv(run_dir / PREDICTIONS_FILE, index=False)
    return FitResult(run_dir, model_path, found.best_params, metrics, row, metadata, final, found)


def cv_folds(y: np.ndarray, groups: np.ndarray, views: np.ndarray, rows: np.ndarray,
             cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cv`` stratified folds of ``rows`` (indices into ``rows``). With augmented views,
    folds of source images (``groups``): every view of an image in its image's fold, the
    held-out side reduced to the images themselves (view 0)."""
    if not views[rows].any():
        splitter = StratifiedKFold(cv, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(rows)), y[rows]))
    grouped = StratifiedGroupKFold(cv, shuffle=True, random_state=seed)
    original = views[rows] == 0
    return [(train, held[original[held]])
            for train, held in grouped.split(np.zeros(len(rows)), y[rows], groups[rows])]


def _run_name(store: CodeStore, config: FitConfig, clf_name: str, layer: str) -> str:
    name = f"{store.path.stem}-{clf_name}-{layer}"
    if config.pca is not None:
        name += f"-pca{config.pca}"
    if config.l2norm:
        name += "-l2norm"
    if config.refit_on != "train":
        name += "-trainval"
    return safe_name(name)


def _held_out_predictions(final: Pipeline, X: np.ndarray, y: np.ndarray,
                          rows: dict[str, np.ndarray], search_rows: np.ndarray,
                          found: SearchResult, config: FitConfig,
                          selection: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Held-out (rows, predicted labels) per split: never rows the final model saw."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if found.held_out_predictions is not None:
        searched = found.held_out_predictions
        if selection == "cv":  # rows held out in no fold (views) predict -1
            out["cv"] = (search_rows[searched >= 0], searched[searched >= 0])
        elif config.refit_on == "train+val":
            # The final model saw val; the search's model (trained on train only) did not.
            out["val"] = (rows["val"], searched[len(rows["train"]):])
    if selection == "val" and config.refit_on == "train":
        out["val"] = (rows["val"], final.predict(X[rows["val"]]))
    if len(rows["test"]):
        out["test"] = (rows["test"], final.predict(X[rows["test"]]))
    return out


def _metrics(final: Pipeline, X: np.ndarray, y: np.ndarray, rows: dict[str, np.ndarray],
             fit_rows: np.ndarray, held_out: dict[str, tuple[np.ndarray, np.ndarray]],
             found: SearchResult, config: FitConfig, selection: str, dim: int,
             views: np.ndarray) -> dict[str, Any]:
    """Every count and accuracy is of images: a view row (``extract --views``) is
    training data, not an image (``n_train_rows`` counts the rows fitted on)."""
    train_rows = rows["train"][views[rows["train"]] == 0]
    train_accuracy = float(np.mean(final.predict(X[train_rows]) == y[train_rows]))
    metrics = held_out_metrics(y, rows, int(np.sum(views[fit_rows] == 0)), train_accuracy,
                               held_out, found, config.cv, selection, dim)
    if views[fit_rows].any():
        metrics["n_train_rows"] = len(fit_rows)
    metrics["scoring"] = config.scoring  # what selection_score is
    if config.scoring != "accuracy" and "cv" in held_out:  # best_score is not an accuracy
        index, predicted = held_out["cv"]
        metrics["cv_accuracy"] = round(float(np.mean(predicted == y[index])), 6)
    return metrics


def held_out_metrics(y: np.ndarray, rows: dict[str, np.ndarray], n_train: int,
                     train_accuracy: float, held_out: dict[str, tuple[np.ndarray, np.ndarray]],
                     found: SearchResult, cv: int, selection: str, dim: int) -> dict[str, Any]:
    """A run's metrics from its held-out predictions (``split -> (rows, predicted)``): what
    ``fit`` and ``fit --stream`` both record."""
    def accuracy(split: str) -> float | None:
        if split not in held_out:
            return None
        index, predicted = held_out[split]
        return round(float(np.mean(predicted == y[index])), 6)

    eval_split = next((s for s in ("test", "val", "cv") if s in held_out), None)
    metrics: dict[str, Any] = {
        "train_accuracy": round(train_accuracy, 6),
        "val_accuracy": accuracy("val"),
        "test_accuracy": accuracy("test"),
        "cv_accuracy": round(found.best_score, 6) if selection == "cv" else None,
        "selected_on": "val" if selection == "val" else f"{cv}-fold CV",
        "selection_score": round(found.best_score, 6),
        "eval_split": eval_split,
        "mean_per_class_accuracy": None,
        "macro_f1": None,
        "n_train": int(n_train),
        "n_val": int(len(rows["val"])),
        "n_test": int(len(rows["test"])),
        "code_dim": dim,
        "n_candidates": found.n_candidates,
        "n_evaluated": len(found.candidates),
        "n_not_converged": found.n_not_converged,
    }
    if eval_split is not None:
        index, predicted = held_out[eval_split]
        metrics["mean_per_class_accuracy"] = round(score("balanced_accuracy", y[index], predicted), 6)
        metrics["macro_f1"] = round(score("macro_f1", y[index], predicted), 6)
    return metrics


def _predictions_frame(store: CodeStore, y: np.ndarray,
                       held_out: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    classes, paths = store.classes, store.paths
    frames = [
        pd.DataFrame({
            "path": [paths[i] for i in index], "split": split,
            "label": [classes[i] for i in y[index]],
            "predicted": [classes[i] for i in predicted],
        })
        for split, (index, predicted) in held_out.items()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["path", "split", "label", "predicted"])


def _versions() -> dict[str, str]:
    import sklearn
    import skops

    return {"cnncodes": __version__, "scikit-learn": sklearn.__version__,
            "skops": skops.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "python": platform.python_version()}


def _metadata(store: CodeStore, config: FitConfig, module: ModuleType, layer: str, dim: int,
              found: SearchResult, metrics: dict[str, Any], row: dict[str, Any],
              clf_name: str, rows: dict[str, np.ndarray]) -> dict[str, Any]:
    attrs = store.attrs
    validation = None  # cross-validation on train
    if len(rows["val"]):
        paths = store.file_paths
        validation = validation_record(
            [paths[i] for i in rows["val"]],
            origin="given" if config.val_paths is not None else "val split",
        )
    spec = store.spec_of(layer)
    return {
        "format": "cnncodes-fit/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "pipeline": clf_name,
        "pipeline_source": str(Path(config.clf).resolve()) if config.clf.endswith(".py")
        else module.__name__,
        "store": {"path": str(store.path.resolve()), "store_key": attrs.get("store_key"),
                  "source": attrs.get("source"),
                  "source_fingerprint": attrs.get("source_fingerprint")},
        **{key: attrs.get(key) for key in ("backbone", "weights", "weights_sha256", "pooling",
                                           "preprocessing", "precision")},
        "layer": layer, "layer_spec": spec, "code_dim": dim, "classes": store.classes,
        "params": found.best_params, "pca": config.pca, "l2norm": config.l2norm,
        "refit_on": config.refit_on, "seed": config.seed, "cv": config.cv,
        "validation": validation,
        "views": store.view_settings,
        "search": {"space": dict(getattr(module, "search_space", {})),
                   "path_parameter": getattr(module, "path_parameter", None),
                   "search_settings": dict(getattr(module, "search_settings", {})),
                   "candidates": found.candidates},
        "metrics": metrics, "row": row,
        "versions": {**_versions(), "torch (extraction)": str(attrs.get("torch_version", ""))},
    }
