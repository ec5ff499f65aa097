"""The four transfer strategies of DESIGN.md side by side, on one split and one backbone.

(1) penultimate codes + a linear pipeline, (2) the best of a few earlier layers' codes +
the same pipeline (the layer chosen on val, never on test), (3) frozen body + new head,
(4) later layers fine-tuned + MLP head. The codes of (1) and (2) come from one extraction,
which is a cache hit when it was run before. One pandas table, one learning-curve PNG.

All four choose on one validation set: the source's val split or, for data that comes as
train and test only (or without any split), a seeded stratified share of the training
images, drawn from the code store's training rows at run time and handed to every
strategy by path. The store and its cache key stay as they are.

Every accuracy comes with its n and 95 % Wilson interval, and each row is tested against
the most accurate row with the exact McNemar test on the same images (test, or val when there is
no test split), from the per-image predictions every strategy writes. ``scoring`` chooses
what every selection maximises (C, the layer of strategy 2, the best epoch of 3 and 4);
``class_weight="balanced"`` weighs the classes in every strategy's training loss.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.sources import ImageSource, open_source
from ..data.splits import carve_validation, validation_record
from ..data.store import CodeStore
from ..errors import CnnCodesError
from ..extraction.extract import ExtractResult, extract
from ..finetuning.finetune import FinetuneConfig, FinetuneResult, finetune
from ..finetuning.trainer import MemoryMonitor, plot_curves
from ..nets.backbones import DEFAULT_MODEL, load_backbone
from ..nets.layers import node_names, resolve_layer
from ..nets.surgery import install_head, layer_groups
from ..paths import default_dir
from ..probe.fit import check_class_weight_for
from ..probe.model import PREDICTIONS_FILE
from ..progress import log
from ..scoring import check_class_weight, check_scoring, score
from .significance import ALPHA, mcnemar_exact, wilson_interval

__all__ = ["COMPARE_FILE", "CompareConfig", "CompareResult", "body_layout", "compare", "earlier_layers",
           "validation_set"]

COMPARE_FILE = "compare.json"

TABLE_COLUMNS = [
    "strategy", "trained", "trainable_params", "seconds", "peak_memory_mib",
    "epochs_budget", "best_epoch", "converged",
    "val_accuracy", "n_val", "val_ci95_low", "val_ci95_high",
    "test_accuracy", "n_test", "test_ci95_low", "test_ci95_high",
    "p_vs_best", "vs_best",
]
"""The table's columns (``val_<scoring>``/``test_<scoring>`` follow the accuracies when
``scoring`` is not accuracy; the test columns go when there is no test split).
``epochs_budget``/``best_epoch``/``converged`` are for strategies 3 and 4 (``not
converged``: the best epoch was the last one allowed); ``p_vs_best`` is the exact McNemar
p-value against the most accurate row on the scored split, ``vs_best`` reads it: ``best``,
``differs`` (p < 0.05) or ``n.s.``."""
# An earlier layer must sit at least this many nodes before the penultimate code; closer
# ones (the last stage before global pooling) give the same codes again.
MIN_NODE_GAP = 4


@dataclass(frozen=True)
class CompareConfig:
    """What :func:`compare` runs.

    Attributes:
        source: an image source: ``train`` with optional ``val`` and ``test`` splits, or
            class folders without any split (then nothing is test).
        model, weights: the backbone shared by every strategy.
        clf: the pipeline for strategies 1 and 2 (``cnncodes fit --clf``).
        layers: candidate earlier layers for strategy 2; None: the outputs of the last
            three stages that come before the penultimate code.
        pool: pooling of the earlier layers' maps.
        epochs: most epochs for strategies 3 and 4.
        lr: head learning rate of strategies 3 and 4; None: fine-tuning's default.
        augment: random resized crop + flip for strategies 3 and 4; None: fine-tuning's
            default, off for 3 (whose head then trains on the frozen body's codes, as 1's
            probe does), on for 4.
        patience: early stopping of 3 and 4 (epochs without a better val score; 0: off).
        scoring: what every selection maximises on val (:data:`cnncodes.scoring.SCORINGS`).
        class_weight: ``balanced`` or ``none`` (:mod:`cnncodes.scoring`), for every strategy.
        unfreeze_from, head: strategy 4 options (see :class:`FinetuneConfig`).
        batch_size: images per training step.
        limit: first N images of each split only (quick experiments).
        out: folder for the runs, table and plot; default ``cache/compare/<source>-<time>``.
        device: ``auto``, ``cpu``, ``cuda`` ...
        seed: one seed for every strategy; also chooses the validation images when the
            source has no val split.
        val_fraction: share of each class's training images held out for validation when
            the source has no val split.
        progress: progress bars and per-stage lines (on stderr).
    """

    source: str
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    clf: str = "logreg"
    layers: tuple[str, ...] | None = None
    pool: str = "avg"
    epochs: int = 5
    lr: float | None = None
    augment: bool | None = None
    patience: int = 3
    scoring: str = "accuracy"
    class_weight: str = "none"
    unfreeze_from: str | None = None
    head: tuple[int, ...] | None = None
    batch_size: int = 32
    limit: int | None = None
    out: str | None = None
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.2
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise CnnCodesError(f"--epochs must be at least 1; got {self.epochs!r}.")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise CnnCodesError(
                f"--val-fraction must be in (0, 1), e.g. 0.2; got {self.val_fraction!r}."
            )
        if self.layers is not None and not self.layers:
            raise CnnCodesError("layers must name at least one earlier layer, or be None.")
        check_scoring(self.scoring)
        check_class_weight_for(self.clf, check_class_weight(self.class_weight))


@dataclass
class CompareResult:
    """The table (one row per strategy), where everything went, and the runs behind it.

    Attributes:
        validation: what every strategy chose on (:func:`validation_set`).
        notes: one line each on the validation and test images, for under the table
            (also ``table.attrs["notes"]``).
    """

    table: pd.DataFrame
    out: Path
    curves_path: Path
    store_path: Path
    finetune_runs: dict[int, FinetuneResult] = field(default_factory=dict)
    fit_runs: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def earlier_layers(model: str = DEFAULT_MODEL, weights: str = "none", *, count: int = 3) -> list[str]:
    """Node names of the outputs of the last ``count`` stages before the penultimate code."""
    return body_layout(model, weights, count=count)[0]


def body_layout(model: str = DEFAULT_MODEL, weights: str = "none", *, count: int = 3
                ) -> tuple[list[str], str]:
    """:func:`earlier_layers`, and the body group strategy 4 trains from by default (the
    first of the last two, as :func:`~cnncodes.nets.surgery.unfrozen_groups` chooses; ""
    for a model without body groups), from one load of the model."""
    backbone = load_backbone(model, weights)
    names = node_names(backbone)
    head_path = install_head(backbone.model, 2)
    penultimate = len(names) - 2
    body = layer_groups(backbone.model, head_path, names)[:-1]
    chosen: list[str] = []
    for group in reversed(body):
        node = resolve_layer(backbone, group.name, names)
        if names.index(node) <= penultimate - MIN_NODE_GAP and node not in chosen:
            chosen.append(node)
        if len(chosen) == count:
            break
    return chosen, body[-2:][0].name if body else ""


def _log(config: CompareConfig, message: str) -> None:
    log("compare", message, enabled=config.progress)


def _linear_params(fit: Any) -> int | None:
    final = getattr(fit.pipeline, "steps", [(None, fit.pipeline)])[-1][1]
    coef, intercept = getattr(final, "coef_", None), getattr(final, "intercept_", None)
    if coef is None:
        return None
    return int(coef.size + (intercept.size if intercept is not None else 0))


def _check_source(config: CompareConfig) -> ImageSource:
    source = open_source(config.source, limit=config.limit, require_labels=True)
    found = {item.split for item in source.items if item.label >= 0}
    if not found or (source.has_split and "train" not in found):
        raise CnnCodesError(
            f"compare needs labelled training images; {config.source!r} has "
            f"{', '.join(sorted(s for s in found if s)) or 'none'}. Put class folders under "
            "train/ (val/ and test/ beside it are optional), give class folders without "
            "any split, or a CSV manifest with label and split columns."
        )
    return source


def validation_set(store_path: Path, *, val_fraction: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """What every strategy of :func:`compare` selects on, from a code store of the source.

    The store's val split when it has one; otherwise ``val_fraction`` of its training rows
    (of every labelled row when the store has no split at all), stratified by class and
    keyed by path (:func:`cnncodes.data.splits.carve_validation`): the same images that
    ``cnncodes finetune`` holds out of the source with the same fraction and seed. Test
    rows are never drawn.

    Returns:
        A :func:`cnncodes.data.splits.validation_record` (``paths`` when carved).
    """
    with CodeStore(store_path) as store:
        labels, split, paths = store.labels, store.split, np.asarray(store.file_paths, dtype=object)
    labelled = labels >= 0
    if split is not None and np.any(labelled & (split == "val")):
        return validation_record(paths[labelled & (split == "val")].tolist(), origin="val split")
    pool = labelled if split is None else labelled & (split == "train")
    chosen = carve_validation(paths[pool].tolist(), labels[pool].tolist(), val_fraction, seed)
    origin = "carved from all" if split is None else "carved from train"
    return validation_record(chosen, origin=origin, fraction=val_fraction, seed=seed)


def _notes(validation: dict[str, Any], has_test: bool, n_test: int,
           config: CompareConfig) -> list[str]:
    count = validation["count"]
    if validation["origin"] == "val split":
        chosen = f"every strategy is chosen on the source's val split ({count} images)"
    else:
        pool = "the training images" if validation["origin"] == "carved from train" else (
            "all images (the source has no train/val/test split)")
        chosen = (
            f"no val split: {count} images ({validation['fraction']:.0%} of each class, seed "
            f"{validation['seed']}) held out of {pool}; every strategy is chosen on them"
        )
    test = (f"test ({n_test} images) is scored once, after every choice" if has_test
            else "no test split, so no test accuracy")
    weights = "; classes weighted 'balanced'" if config.class_weight == "balanced" else ""
    significance = (
        f"selection maximises val {config.scoring}{weights}; accuracies with n and a 95 % "
        f"Wilson interval; vs_best: exact McNemar test of accuracy against the most accurate "
        f"row on the same {'test' if has_test else 'val'} images (differs: p < {ALPHA}; "
        "that row is picked on these images and each row is tested alone, with no "
        "correction for the three tests)")
    if not has_test:
        significance += "; val also chose every setting, so its scores are optimistic"
    return [chosen, test, significance]


def _extract_codes(config: CompareConfig, candidates: list[str]) -> tuple[ExtractResult, float, float]:
    """One extraction of every layer strategies 1 and 2 need: (result, seconds, peak MiB)."""
    _log(config, f"codes of -2 and {', '.join(candidates)} (cached when extracted before)")
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        extracted = extract(
            source=config.source, model=config.model, weights=config.weights,
            layers=("-2", *candidates), pool=config.pool, limit=config.limit,
            device=config.device, progress=config.progress,
        )
    return extracted, time.perf_counter() - started, monitor.peak_rss_mib


def _read_predictions(run_dir: Path) -> pd.DataFrame:
    """A run's held-out predictions (``path``, ``split``, ``label``, ``predicted``)."""
    return pd.read_csv(run_dir / PREDICTIONS_FILE, dtype=str, keep_default_na=False)


def _split_score(config: CompareConfig, predictions: pd.DataFrame, split: str) -> float | None:
    rows = predictions[predictions["split"] == split]
    return score(config.scoring, rows["label"], rows["predicted"]) if len(rows) else None


def _code_strategies(
    config: CompareConfig, out: Path, codes: tuple[ExtractResult, float, float],
    val_paths: tuple[str, ...] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Strategies 1 and 2: one fit per layer of the extracted codes; strategy 2's layer is
    the earlier one with the best val ``scoring``."""
    from ..probe.fit import fit_pipeline  # scikit-learn side, imported only when comparing

    extracted, extract_seconds, extract_memory = codes
    penultimate = extracted.layers[0]
    options: dict[str, Any] = dict(clf=config.clf, seed=config.seed, progress=config.progress,
                   val_paths=val_paths, scoring=config.scoring, class_weight=config.class_weight)
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        first = fit_pipeline(extracted.path, layer=penultimate, out=out / "strategy1", **options)
        fit_seconds = time.perf_counter() - started
    note = "cached codes" if extracted.cached else f"extraction {extract_seconds:.0f}s shared with 2"
    rows = [{
        "strategy": f"1 codes + {config.clf}",
        "trained": f"{config.clf} on {penultimate} ({extracted.dims[penultimate]}-d); {note}",
        "trainable_params": _linear_params(first),
        "seconds": extract_seconds + fit_seconds,
        "peak_memory_mib": max(extract_memory, monitor.peak_rss_mib),
        "predictions": _read_predictions(first.run_dir),
    }]
    fits: dict[str, Any] = {penultimate: first}
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        for layer in extracted.layers[1:]:
            fits[layer] = fit_pipeline(
                extracted.path, layer=layer, out=out / f"strategy2-{layer.replace('.', '_')}",
                **options)
        fit_seconds = time.perf_counter() - started
    predicted = {name: _read_predictions(fits[name].run_dir) for name in extracted.layers[1:]}
    val_scores = {name: _split_score(config, frame, "val") or 0.0
                  for name, frame in predicted.items()}
    best = max(val_scores, key=lambda name: val_scores[name])
    tried = ", ".join(f"{name} {value:.3f}" for name, value in val_scores.items())
    rows.append({
        "strategy": f"2 earlier codes + {config.clf}",
        "trained": f"{config.clf} on {best} ({extracted.dims[best]}-d), best val "
                   f"{config.scoring} of: {tried}",
        "trainable_params": _linear_params(fits[best]),
        "seconds": (0.0 if extracted.cached else extract_seconds) + fit_seconds,
        "peak_memory_mib": monitor.peak_rss_mib,
        "predictions": predicted[best],
    })
    return rows, fits


def _finetune_strategies(
    config: CompareConfig, out: Path, val_paths: tuple[str, ...] | None,
) -> tuple[list[dict[str, Any]], dict[int, FinetuneResult]]:
    """Strategies 3 and 4: PyTorch fine-tuning from the same pretrained weights."""
    rows: list[dict[str, Any]] = []
    runs: dict[int, FinetuneResult] = {}
    for strategy in (3, 4):
        _log(config, f"strategy {strategy}: fine-tuning (at most {config.epochs} epoch"
             f"{'s' if config.epochs != 1 else ''})")
        settings = FinetuneConfig(
            source=config.source, strategy=strategy, model=config.model, weights=config.weights,
            unfreeze_from=config.unfreeze_from if strategy == 4 else None,
            head=config.head if strategy == 4 else None, epochs=config.epochs, lr=config.lr,
            augment=config.augment, patience=config.patience, scoring=config.scoring,
            class_weight=config.class_weight,
            batch_size=config.batch_size, limit=config.limit, out=str(out / f"strategy{strategy}"),
            device=config.device, seed=config.seed, progress=config.progress,
            val_fraction=config.val_fraction, val_paths=val_paths,
        )
        monitor = MemoryMonitor()
        with monitor.track():
            runs[strategy] = result = finetune(settings)
        epochs_run = len(result.history)
        rows.append({
            "strategy": "3 frozen body + new head" if strategy == 3 else "4 fine-tune top + new head",
            "trained": f"{result.trained}; lr {settings.head_lr:g}, "
                       f"{'augmented' if settings.augment else 'no augmentation'}",
            "trainable_params": result.trainable_params,
            "seconds": result.seconds,
            "peak_memory_mib": monitor.peak_cuda_mib or monitor.peak_rss_mib,
            "epochs_budget": config.epochs,
            "best_epoch": result.best_epoch,
            "converged": "not converged" if result.best_epoch == epochs_run else "yes",
            "predictions": _read_predictions(result.run_dir),
        })
    return rows, runs


def _accuracy_columns(row: dict[str, Any], config: CompareConfig, splits: list[str]) -> None:
    """Accuracy, n and the 95 % Wilson interval (and the ``scoring`` score) per split."""
    predictions = row["predictions"]
    for split in splits:
        rows = predictions[predictions["split"] == split]
        n, correct = len(rows), int((rows["label"] == rows["predicted"]).sum())
        low, high = wilson_interval(correct, n)
        row.update({f"{split}_accuracy": correct / n if n else None, f"n_{split}": n,
                    f"{split}_ci95_low": low, f"{split}_ci95_high": high})
        if config.scoring != "accuracy":
            row[f"{split}_{config.scoring}"] = _split_score(config, predictions, split)


def _mark_best(rows: list[dict[str, Any]], split: str) -> None:
    """``p_vs_best``/``vs_best``: the exact McNemar test of each row against the most
    accurate row on ``split``, on the same images (McNemar tests accuracy, whatever
    ``scoring`` selected on). A row whose images are not the best row's is marked, not
    tested."""
    key = f"{split}_accuracy"
    values = [float(row[key]) if row.get(key) is not None else -1.0 for row in rows]
    best = int(np.argmax(values))
    outcome = [row["predictions"][row["predictions"]["split"] == split]
               .assign(right=lambda f: f["label"] == f["predicted"]).set_index("path")["right"]
               for row in rows]
    for index, row in enumerate(rows):
        if index == best:
            row.update(p_vs_best=None, vs_best="best")
            continue
        if not (outcome[best].index.sort_values().equals(outcome[index].index.sort_values())):
            log("compare", f"{row['strategy']}: its {split} predictions are not of the best "
                "row's images, so it is not tested against it")
            row.update(p_vs_best=None, vs_best="other images")
            continue
        shared = outcome[best].index
        _, _, p = mcnemar_exact(outcome[best].loc[shared].to_numpy(),
                                outcome[index].loc[shared].to_numpy())
        row.update(p_vs_best=p, vs_best="differs" if p < ALPHA else "n.s.")


def _table(rows: list[dict[str, Any]], config: CompareConfig, has_test: bool) -> pd.DataFrame:
    """The rows as the table: accuracy columns, significance against the best, and the
    columns of :data:`TABLE_COLUMNS` in order."""
    splits = ["val", "test"] if has_test else ["val"]
    for row in rows:
        _accuracy_columns(row, config, splits)
    _mark_best(rows, splits[-1])
    columns = list(TABLE_COLUMNS)
    if not has_test:
        columns = [c for c in columns if "test" not in c]
    if config.scoring != "accuracy":
        for split in splits:
            columns.insert(columns.index(f"{split}_ci95_high") + 1, f"{split}_{config.scoring}")
    table = pd.DataFrame([{k: v for k, v in row.items() if k != "predictions"} for row in rows],
                         columns=columns)
    # Whole seconds and MiB: the float format of a rendered table would add fake digits.
    table["seconds"] = table["seconds"].round().astype(int)
    table["peak_memory_mib"] = table["peak_memory_mib"].round().astype(int)
    for column in ("epochs_budget", "best_epoch", *[f"n_{split}" for split in splits]):
        table[column] = table[column].astype("Int64")
    table["converged"] = table["converged"].fillna("")
    return table


def compare(config: CompareConfig | None = None, /, **options: Any) -> CompareResult:
    """Run strategies 1-4 on ``config.source`` and tabulate accuracy, its certainty and cost.

    Call as ``compare(CompareConfig(...))`` or ``compare(source=..., epochs=3, ...)``.

    Every choice (C, the earlier layer of strategy 2, the best epoch of 3 and 4) is made
    on one validation set: the source's val split, or, without one, ``val_fraction`` of
    the training images (of all images when the source has no split), carved out by
    ``seed`` and recorded in ``compare.json`` and every run. Test images are only scored.
    Every strategy's per-image predictions on val and test go to ``predictions.csv``
    (column ``strategy``: 1-4), the table to ``compare.csv``.

    Raises:
        CnnCodesError: a source without labelled training images, or any bad option of
            the steps it runs (unknown layer, pipeline, model ...).
    """
    if config is None:
        config = CompareConfig(**options)
    elif options:
        raise TypeError("Pass either a CompareConfig or keyword options, not both.")
    source = _check_source(config)
    test_items = [item for item in source.items if item.label >= 0 and item.split == "test"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(config.out) if config.out else default_dir("compare") / f"{source.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    candidates = list(config.layers) if config.layers else earlier_layers(config.model)

    # The codes come first: their store's training rows are what a carve-out is drawn from.
    codes = _extract_codes(config, candidates)
    extracted = codes[0]
    validation = validation_set(extracted.path, val_fraction=config.val_fraction,
                                seed=config.seed)
    if not validation["count"]:
        raise CnnCodesError(
            f"{config.source!r} has no val split and too few training images to hold some "
            "out (a class needs at least two); add images or a val/ folder."
        )
    val_paths = None if validation["origin"] == "val split" else tuple(validation["paths"])
    notes = _notes(validation, bool(test_items), len(test_items), config)
    _log(config, notes[0])
    code_rows, fits = _code_strategies(config, out, codes, val_paths)
    tune_rows, runs = _finetune_strategies(config, out, val_paths)

    rows = code_rows + tune_rows
    table = _table(rows, config, bool(test_items))
    table.attrs["notes"] = notes
    pd.concat([row["predictions"].assign(strategy=row["strategy"].split()[0]) for row in rows]
              ).to_csv(out / PREDICTIONS_FILE, index=False)
    curves = plot_curves(
        {"strategy 3": runs[3].history, "strategy 4": runs[4].history}, out / "curves.png",
        title=f"{config.model} on {source.name}: strategies 3 and 4",
    )
    table.to_csv(out / "compare.csv", index=False)
    record = {"config": asdict(config), "store": str(extracted.path), "notes": notes,
              "validation": validation}
    (out / COMPARE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n",
                                    encoding="utf-8")
    return CompareResult(table, out, curves, extracted.path, runs, fits, validation, notes)
