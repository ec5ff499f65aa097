"""The four transfer strategies of DESIGN.md side by side, on one split and one backbone.

(1) penultimate codes + a linear pipeline, (2) the best of a few earlier layers' codes +
the same pipeline (the layer chosen on val, never on test), (3) frozen body + new head,
(4) later layers fine-tuned + MLP head. The codes of (1) and (2) come from one extraction,
which is a cache hit when it was run before. One pandas table, one learning-curve PNG.

All four choose on one validation set: the source's val split or, for data that comes as
train and test only (or without any split), a seeded stratified share of the training
images, drawn from the code store's training rows at run time and handed to every
strategy by path. The store and its cache key stay as they are.
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
from ..progress import log

__all__ = ["COMPARE_FILE", "CompareConfig", "CompareResult", "compare", "earlier_layers",
           "validation_set"]

COMPARE_FILE = "compare.json"

TABLE_COLUMNS = [
    "strategy", "trained", "trainable_params", "seconds", "peak_memory_mib",
    "val_accuracy", "test_accuracy",
]
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
    backbone = load_backbone(model, weights)
    names = node_names(backbone)
    head_path = install_head(backbone.model, 2)
    penultimate = len(names) - 2
    chosen: list[str] = []
    for group in reversed(layer_groups(backbone.model, head_path, names)[:-1]):
        node = resolve_layer(backbone, group.name, names)
        if names.index(node) <= penultimate - MIN_NODE_GAP and node not in chosen:
            chosen.append(node)
        if len(chosen) == count:
            break
    return chosen


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


def _notes(validation: dict[str, Any], has_test: bool, n_test: int) -> list[str]:
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
    return [chosen, test]


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


def _code_strategies(
    config: CompareConfig, out: Path, codes: tuple[ExtractResult, float, float],
    val_paths: tuple[str, ...] | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Strategies 1 and 2: one fit per layer of the extracted codes."""
    from ..probe.fit import fit_pipeline  # scikit-learn side, imported only when comparing

    extracted, extract_seconds, extract_memory = codes
    penultimate = extracted.layers[0]
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        first = fit_pipeline(
            extracted.path, clf=config.clf, layer=penultimate, out=out / "strategy1",
            seed=config.seed, progress=config.progress, val_paths=val_paths,
        )
        fit_seconds = time.perf_counter() - started
    note = "cached codes" if extracted.cached else f"extraction {extract_seconds:.0f}s shared with 2"
    rows = [{
        "strategy": f"1 codes + {config.clf}",
        "trained": f"{config.clf} on {penultimate} ({extracted.dims[penultimate]}-d); {note}",
        "trainable_params": _linear_params(first),
        "seconds": extract_seconds + fit_seconds,
        "peak_memory_mib": max(extract_memory, monitor.peak_rss_mib),
        "val_accuracy": first.metrics.get("val_accuracy"),
        "test_accuracy": first.metrics.get("test_accuracy"),
    }]
    fits: dict[str, Any] = {penultimate: first}
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        for layer in extracted.layers[1:]:
            fits[layer] = fit_pipeline(
                extracted.path, clf=config.clf, layer=layer,
                out=out / f"strategy2-{layer.replace('.', '_')}", seed=config.seed,
                progress=config.progress, val_paths=val_paths,
            )
        fit_seconds = time.perf_counter() - started
    earlier = {name: fits[name] for name in extracted.layers[1:]}
    best = max(earlier, key=lambda name: earlier[name].metrics.get("val_accuracy") or 0.0)
    tried = ", ".join(
        f"{name} {earlier[name].metrics.get('val_accuracy') or 0:.3f}" for name in earlier
    )
    rows.append({
        "strategy": f"2 earlier codes + {config.clf}",
        "trained": f"{config.clf} on {best} ({extracted.dims[best]}-d), best on val of: {tried}",
        "trainable_params": _linear_params(earlier[best]),
        "seconds": (0.0 if extracted.cached else extract_seconds) + fit_seconds,
        "peak_memory_mib": monitor.peak_rss_mib,
        "val_accuracy": earlier[best].metrics.get("val_accuracy"),
        "test_accuracy": earlier[best].metrics.get("test_accuracy"),
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
            head=config.head if strategy == 4 else None, epochs=config.epochs,
            batch_size=config.batch_size, limit=config.limit, out=str(out / f"strategy{strategy}"),
            device=config.device, seed=config.seed, progress=config.progress,
            val_fraction=config.val_fraction, val_paths=val_paths,
        )
        monitor = MemoryMonitor()
        with monitor.track():
            runs[strategy] = result = finetune(settings)
        memory = monitor.peak_cuda_mib or monitor.peak_rss_mib
        rows.append({
            "strategy": "3 frozen body + new head" if strategy == 3 else "4 fine-tune top + new head",
            "trained": f"{result.trained}; best epoch {result.best_epoch}/{len(result.history)}",
            "trainable_params": result.trainable_params,
            "seconds": result.seconds,
            "peak_memory_mib": memory,
            "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy,
        })
    return rows, runs


def compare(config: CompareConfig | None = None, /, **options: Any) -> CompareResult:
    """Run strategies 1-4 on ``config.source`` and tabulate accuracy and cost.

    Call as ``compare(CompareConfig(...))`` or ``compare(source=..., epochs=3, ...)``.

    Every choice (C, the earlier layer of strategy 2, the best epoch of 3 and 4) is made
    on one validation set: the source's val split, or, without one, ``val_fraction`` of
    the training images (of all images when the source has no split), carved out by
    ``seed`` and recorded in ``compare.json`` and every run. Test images are only scored.

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
    notes = _notes(validation, bool(test_items), len(test_items))
    _log(config, notes[0])
    code_rows, fits = _code_strategies(config, out, codes, val_paths)
    tune_rows, runs = _finetune_strategies(config, out, val_paths)

    table = pd.DataFrame(code_rows + tune_rows, columns=TABLE_COLUMNS)
    if not test_items:
        table = table.drop(columns="test_accuracy")
    # Whole seconds and MiB: the float format of a rendered table would add fake digits.
    table["seconds"] = table["seconds"].round().astype(int)
    table["peak_memory_mib"] = table["peak_memory_mib"].round().astype(int)
    table.attrs["notes"] = notes
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
