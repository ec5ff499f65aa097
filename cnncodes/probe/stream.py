"""A linear probe fitted beyond RAM: the store's codes are read in row chunks, never whole.

:func:`fit_streamed` is ``fit --stream``: one pass fits a StandardScaler from per-chunk
moments, then every epoch reads the store once, chunk by chunk in a seeded random order
(rows shuffled within each chunk), and feeds each chunk to every candidate model at once: an
``SGDClassifier`` (log loss for ``logreg``, hinge for ``linear_svm``) per value of C and
per training set. C maps to SGD's penalty as ``alpha = 1 / (C * n_train)``. The split
rules are :func:`cnncodes.fit_pipeline`'s: train on ``train``, select on ``val`` when the
store has one, else by stratified k-fold CV on train (each fold's models see the chunks'
train rows outside that fold, scaled by a scaler of their own); a last pass scores
val and test. Memory grows with ``chunk_rows`` and the number of candidates, not with the
number of rows (labels, splits and paths aside). The run folder is ``fit``'s: a plain
``Pipeline(StandardScaler, SGDClassifier)`` that ``cnncodes predict`` and ``report`` read.

The per-chunk work lives in :mod:`cnncodes.probe.chunks` and runs through a runner: in this
process, or with ``scheduler`` on a Dask cluster (:mod:`cnncodes.probe.dask_fit`), whose
workers train the same models.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..data.store import CodeStore
from ..errors import CnnCodesError
from ..paths import default_runs_dir
from ..progress import log
from .chunks import (
    ChunkRunner,
    Group,
    LocalChunks,
    Moments,
    Plan,
    chunk_counts,
    chunk_moments,
    chunk_predictions,
    merge_moments,
    moments_scaler,
)
from .fit import (
    FitConfig,
    FitResult,
    _check_data,
    _metadata,
    _predictions_frame,
    _run_name,
    held_out_metrics,
    load_pipeline_module,
)
from .model import PREDICTIONS_FILE, save_model
from .search import SearchResult

__all__ = ["StreamConfig", "fit_streamed", "STREAM_LOSSES", "STREAM_C", "DEFAULT_CHUNK_ROWS"]

# --clf -> SGDClassifier loss.
STREAM_LOSSES = {"logreg": "log_loss", "linear_svm": "hinge"}
DEFAULT_CHUNK_ROWS = 4096
DEFAULT_EPOCHS = 10


def _stream_grid() -> list[float]:
    from ..pipelines import LINEAR_PROBE_C

    # One value per decade of the in-memory grid: every candidate is a model trained on
    # every chunk of every epoch, so the grid's size is the streamed fit's cost.
    return LINEAR_PROBE_C[::2]


STREAM_C: list[float] = _stream_grid()


@dataclass(frozen=True)
class StreamConfig:
    """What :func:`fit_streamed` trains; see :class:`cnncodes.FitConfig` for the shared fields.

    Attributes:
        clf: ``logreg`` (SGD with log loss) or ``linear_svm`` (SGD with hinge loss).
        chunk_rows: rows read from the store at a time; memory is bounded by it.
        epochs: passes over the training rows.
        scheduler: where it runs: the address of a Dask scheduler (``tcp://host:8786``),
            whose workers read the chunks; None fits in this process.
    """

    clf: str = "logreg"
    layer: str | int | None = None
    cv: int = 5
    out: str | os.PathLike[str] | None = None
    seed: int = 0
    progress: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    epochs: int = DEFAULT_EPOCHS
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.clf not in STREAM_LOSSES:
            raise CnnCodesError(
                f"--stream fits logreg or linear_svm only; got --clf {self.clf!r}. Use one of "
                f"{', '.join(STREAM_LOSSES)}, or leave --stream out to fit {self.clf!r} in memory."
            )
        for name, value in (("chunk_rows", self.chunk_rows), ("epochs", self.epochs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CnnCodesError(f"{name} must be a positive integer; got {value!r}.")


def fit_streamed(
    store: str | os.PathLike[str] | CodeStore,
    *,
    clf: str = "logreg",
    layer: str | int | None = None,
    cv: int = 5,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    epochs: int = DEFAULT_EPOCHS,
    scheduler: str | None = None,
) -> FitResult:
    """Fit a linear probe on one layer of a code store without loading the layer into RAM.

    The choice for stores larger than memory; in memory, :func:`cnncodes.fit_pipeline`
    solves the same probes exactly.

    Args:
        store: a code store path or an open :class:`CodeStore`.
        clf: ``logreg`` or ``linear_svm``.
        layer, cv, out, seed, progress: as for :func:`cnncodes.fit_pipeline`.
        chunk_rows: rows read at a time.
        epochs: passes over the training rows.
        scheduler: fit on the Dask cluster of this scheduler address instead of in this
            process (needs ``pip install 'cnncodes[dask]'``). Its workers open the store
            by its path, so it must be on a filesystem that they and this process share.
            The models are the ones this process would train with the same settings.

    Returns:
        The run folder, chosen parameters, metrics and report row, as ``fit_pipeline``.

    Raises:
        CnnCodesError: another classifier, bad chunk_rows or epochs, and whatever
            ``fit_pipeline`` refuses of the store (no train split, one class, too few
            images per class for ``cv``), Dask not installed, a scheduler that cannot
            be reached or has no workers, a worker that cannot open the store.
    """
    config = StreamConfig(clf, layer, cv, out, seed, progress, chunk_rows, epochs, scheduler)
    FitConfig(clf=clf, cv=cv)  # the checks shared with fit
    if isinstance(store, CodeStore):
        return _fit_on(store, config)
    with CodeStore(store) as opened:
        return _fit_on(opened, config)


def _fit_on(store: CodeStore, config: StreamConfig) -> FitResult:
    """The fit, run here or on the Dask cluster that ``config.scheduler`` names."""
    layer = store.resolve(config.layer)
    if store.view_settings is not None and store.views.any():
        raise CnnCodesError(
            f"Code store {store.path.name!r} holds augmented views (extract --views); "
            "fit --stream does not keep an image's views in one fold: fit it in memory "
            "(leave out --stream and --scheduler), or extract without --views."
        )
    if config.scheduler is None:
        return _fit_streamed(store, config, layer, LocalChunks(store, layer))
    from .dask_fit import dask_chunks

    with dask_chunks(config.scheduler, store, layer) as runner:
        _log(config, f"on the Dask cluster at {config.scheduler} ({runner.describe()})")
        return _fit_streamed(store, config, layer, runner)


def _log(config: StreamConfig, message: str) -> None:
    log("fit", message, enabled=config.progress)


def _chunks(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_rows, n_rows)) for start in range(0, n_rows, chunk_rows)]


def _groups(
    n_rows: int, rows: dict[str, np.ndarray], y: np.ndarray, selection: str, config: StreamConfig
) -> tuple[list[Group], np.ndarray]:
    """The training sets (CV folds' complements first, all of train last) and the CV fold
    of every store row (-1: in no fold)."""
    from sklearn.model_selection import StratifiedKFold

    fold = np.full(n_rows, -1, dtype=np.int64)
    is_train = np.zeros(n_rows, dtype=bool)
    is_train[rows["train"]] = True
    if selection == "cv":
        splitter = StratifiedKFold(config.cv, shuffle=True, random_state=config.seed)
        train = rows["train"]
        for number, (_, held) in enumerate(splitter.split(np.zeros(len(train)), y[train])):
            fold[train[held]] = number
    n_folds = config.cv if selection == "cv" else 0
    loss = STREAM_LOSSES[config.clf]
    groups = []
    for number in range(n_folds + 1):  # the last, number == n_folds, is in no fold
        members = is_train & (fold != number)
        n_train = int(members.sum())
        models = [
            SGDClassifier(
                loss=loss, alpha=1.0 / (C * n_train), average=True, random_state=config.seed
            )
            for C in STREAM_C
        ]
        groups.append(Group(members, StandardScaler(), models))
    return groups, fold


def _scale_pass(runner: ChunkRunner, chunks: list[tuple[int, int]], groups: list[Group]) -> None:
    """Every training set's scaler, from per-chunk moments merged in chunk order."""
    calls = ((start, stop, ([g.train[start:stop] for g in groups],)) for start, stop in chunks)
    totals: list[Moments | None] = [None] * len(groups)
    for moments in runner.map(chunk_moments, calls):
        totals = [merge_moments(total, part) for total, part in zip(totals, moments)]
    for group, total in zip(groups, totals):
        assert total is not None  # _check_data refused training sets without rows
        group.scaler = moments_scaler(total)


def _epoch_plan(chunks: list[tuple[int, int]], rng: np.random.Generator) -> Plan:
    """One epoch: every chunk once, in a random order, its rows in a random order."""
    plan = []
    for index in rng.permutation(len(chunks)):
        start, stop = chunks[index]
        plan.append((start, stop, rng.permutation(stop - start)))
    return plan


def _score_pass(
    runner: ChunkRunner,
    chunks: list[tuple[int, int]],
    groups: list[Group],
    y: np.ndarray,
    fold: np.ndarray,
    val: np.ndarray,
) -> np.ndarray:
    """Held-out (correct, seen) counts [group, candidate, 2]: fold rows for a fold's
    models, val rows for the last group's when selecting on val."""
    fitted = runner.share([(group.scaler, group.models) for group in groups])
    n_folds = len(groups) - 1

    def held(start: int, stop: int) -> list[np.ndarray]:
        return [fold[start:stop] == number for number in range(n_folds)] + [val[start:stop]]

    calls = ((start, stop, (fitted, y[start:stop], held(start, stop))) for start, stop in chunks)
    counts = np.zeros((len(groups), len(STREAM_C), 2), dtype=np.int64)
    for part in runner.map(chunk_counts, calls):
        counts += part
    return counts


def _select(counts: np.ndarray, selection: str, n_train: int) -> tuple[int, list[dict[str, Any]]]:
    """The best candidate (the most regularised of any tie) and every candidate's record."""
    scored = counts[:-1] if selection == "cv" else counts[-1:]
    per_group = scored[..., 0] / np.maximum(scored[..., 1], 1)
    means = per_group.mean(axis=0)
    best = int(np.flatnonzero(means == means.max())[0])
    candidates = [
        {
            "params": {"C": C, "classifier__alpha": 1.0 / (C * n_train)},
            "score": round(float(means[index]), 6),
            "fold_scores": [round(float(s), 6) for s in per_group[:, index]],
        }
        for index, C in enumerate(STREAM_C)
    ]
    return best, candidates


def _predict_pass(
    runner: ChunkRunner,
    chunks: list[tuple[int, int]],
    groups: list[Group],
    best: int,
    fold: np.ndarray,
    wanted: np.ndarray,
) -> np.ndarray:
    """Predicted labels of the ``wanted`` rows (-1 elsewhere): train, val and test rows by
    the final model, CV rows also by their fold's model (returned as a second row)."""
    final = runner.share((groups[-1].scaler, groups[-1].models[best]))
    folds = runner.share([(group.scaler, group.models[best]) for group in groups[:-1]])
    calls = (
        (start, stop, (final, wanted[start:stop], folds, fold[start:stop]))
        for start, stop in chunks
    )
    predicted = np.full((2, len(fold)), -1, dtype=np.int64)
    for (start, stop), part in zip(chunks, runner.map(chunk_predictions, calls)):
        predicted[:, start:stop] = part
    return predicted


def _final_pipeline(group: Group, best: int) -> Pipeline:
    model = group.models[best]
    # A compiled loss object, needed only to go on training; predict does without it,
    # and the model loader need not rebuild a compiled type from a file.
    if hasattr(model, "_loss_function_"):
        del model._loss_function_
    return Pipeline([("scaler", group.scaler), ("classifier", model)])


def _rows(store: CodeStore, y: np.ndarray) -> dict[str, np.ndarray]:
    """Store rows per split, as fit reads them (unlabeled rows in none; no split: train)."""
    split = store.split
    labeled = y >= 0
    split = np.where(labeled, "train", "") if split is None else np.where(labeled, split, "")
    return {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}


def _fit_streamed(
    store: CodeStore, config: StreamConfig, layer: str, runner: ChunkRunner
) -> FitResult:
    started = time.perf_counter()
    dim, y = store.dim(layer), store.labels
    rows = _rows(store, y)
    selection = "val" if len(rows["val"]) else "cv"
    shared = FitConfig(clf=config.clf, layer=layer, cv=config.cv, seed=config.seed)
    _check_data(store, y, rows, shared, selection, dim)
    chunks = _chunks(len(store), config.chunk_rows)
    groups, fold = _groups(len(store), rows, y, selection, config)
    classes = np.unique(y[rows["train"]])
    _log(
        config,
        f"{config.clf} streamed on {layer} ({len(rows['train'])} x {dim}, "
        f"{len(chunks)} chunks of {config.chunk_rows} rows); selecting on "
        f"{'val' if selection == 'val' else f'{config.cv}-fold CV'} over {len(STREAM_C)} "
        f"values of C, {len(groups) * len(STREAM_C)} models, {config.epochs} epochs",
    )
    _scale_pass(runner, chunks, groups)
    rng = np.random.default_rng(config.seed)
    for epoch in range(config.epochs):
        runner.train_epoch(_epoch_plan(chunks, rng), groups, y, classes)
        _log(config, f"epoch {epoch + 1}/{config.epochs} ({time.perf_counter() - started:.1f}s)")
    val = np.zeros(len(store), dtype=bool)
    val[rows["val"]] = True
    counts = _score_pass(runner, chunks, groups, y, fold, val)
    best, candidates = _select(counts, selection, len(rows["train"]))
    search_seconds = time.perf_counter() - started
    _log(config, f"best C={STREAM_C[best]:.3g}: {candidates[best]['score']:.4f}")
    wanted = np.zeros(len(store), dtype=bool)
    for name in ("train", "val", "test"):
        wanted[rows[name]] = True
    predicted = _predict_pass(runner, chunks, groups, best, fold, wanted)
    found = SearchResult(
        best_params={"classifier__alpha": candidates[best]["params"]["classifier__alpha"]},
        best_score=candidates[best]["score"],
        candidates=candidates,
        n_candidates=len(STREAM_C),
        seconds=search_seconds,
    )
    return _save(
        store,
        config,
        layer,
        dim,
        y,
        rows,
        selection,
        predicted,
        found,
        _final_pipeline(groups[-1], best),
        STREAM_C[best],
        time.perf_counter() - started,
    )


def _held_out(
    rows: dict[str, np.ndarray], predicted: np.ndarray, selection: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    if selection == "cv":
        out["cv"] = (rows["train"], predicted[1, rows["train"]])
    for split in ("val", "test"):
        if len(rows[split]):
            out[split] = (rows[split], predicted[0, rows[split]])
    return out


def _metrics(
    y: np.ndarray,
    rows: dict[str, np.ndarray],
    predicted: np.ndarray,
    held_out: dict[str, tuple[np.ndarray, np.ndarray]],
    found: SearchResult,
    config: StreamConfig,
    selection: str,
    dim: int,
) -> dict[str, Any]:
    """The metrics of :func:`cnncodes.fit_pipeline`, from the streamed predictions."""
    train = rows["train"]
    train_accuracy = float(np.mean(predicted[0, train] == y[train]))
    metrics = held_out_metrics(y, rows, len(train), train_accuracy, held_out, found, config.cv,
                               selection, dim)
    metrics.update(streamed=True, chunk_rows=config.chunk_rows, epochs=config.epochs)
    return metrics


def _save(
    store: CodeStore,
    config: StreamConfig,
    layer: str,
    dim: int,
    y: np.ndarray,
    rows: dict[str, np.ndarray],
    selection: str,
    predicted: np.ndarray,
    found: SearchResult,
    pipeline: Pipeline,
    best_C: float,
    seconds: float,
) -> FitResult:
    held_out = _held_out(rows, predicted, selection)
    metrics = _metrics(y, rows, predicted, held_out, found, config, selection, dim)
    metrics["fit_seconds"] = round(seconds, 3)
    metrics["search_seconds"] = round(found.seconds, 3)
    shared = FitConfig(
        clf=config.clf, layer=config.layer, cv=config.cv, out=config.out, seed=config.seed
    )
    run_dir = (
        Path(config.out)
        if config.out
        else default_runs_dir() / (_run_name(store, shared, config.clf, layer) + "-stream")
    )
    row = {
        "run": run_dir.name,
        "backbone": store.attrs.get("backbone"),
        "weights": store.attrs.get("weights"),
        "layer": layer,
        "pipeline": f"{config.clf} (streamed)",
        "params": f"C={best_C:.3g} (alpha={found.best_params['classifier__alpha']:.3g})",
        "selected_on": metrics["selected_on"],
        "n_train": metrics["n_train"],
        "code_dim": dim,
        **{
            key: metrics[key]
            for key in (
                "train_accuracy",
                "val_accuracy",
                "test_accuracy",
                "cv_accuracy",
                "mean_per_class_accuracy",
                "macro_f1",
                "fit_seconds",
            )
        },
    }
    module = load_pipeline_module(config.clf)
    metadata = _metadata(store, shared, module, layer, dim, found, metrics, row, config.clf, rows)
    metadata.update(
        {
            "pipeline_source": __name__,
            "search": {
                "space": {"C": STREAM_C},
                "path_parameter": None,
                "search_settings": {},
                "candidates": found.candidates,
            },
            "stream": {
                "loss": STREAM_LOSSES[config.clf],
                "C": best_C,
                "chunk_rows": config.chunk_rows,
                "epochs": config.epochs,
                "alpha": "1 / (C * n_train)",
                "average": True,
                # Where it ran; the models are the same either way.
                "dask_scheduler": config.scheduler,
            },
        }
    )
    model_path = save_model(run_dir, pipeline, metadata)
    _predictions_frame(store, y, held_out).to_csv(run_dir / PREDICTIONS_FILE, index=False)
    return FitResult(
        run_dir, model_path, found.best_params, metrics, row, metadata, pipeline, found
    )
