"""The four transfer strategies of DESIGN.md side by side, on one split and one backbone.

(1) penultimate codes + a linear pipeline, (2) the best of a few earlier layers' codes +
the same pipeline (the layer chosen on val, never on test), (3) frozen body + new head,
(4) later layers fine-tuned + MLP head. The codes of (1) and (2) come from one extraction,
which is a cache hit when it was run before. One pandas table, one learning-curve PNG.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .backbones import DEFAULT_MODEL, load_backbone
from .errors import CnnCodesError
from .extract import extract
from .finetune import FinetuneConfig, FinetuneResult, finetune
from .layers import node_names, resolve_layer
from .paths import default_runs_dir
from .sources import open_source
from .surgery import install_head, layer_groups
from .trainer import MemoryMonitor, plot_curves

__all__ = ["CompareConfig", "CompareResult", "compare", "earlier_layers"]

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
        source: an image source with ``train`` and ``val`` splits (``test`` optional).
        model, weights: the backbone shared by every strategy.
        clf: the pipeline for strategies 1 and 2 (``cnncodes fit --clf``).
        layers: candidate earlier layers for strategy 2; None: the outputs of the last
            three stages that come before the penultimate code.
        pool: pooling of the earlier layers' maps.
        epochs: most epochs for strategies 3 and 4.
        unfreeze_from, head: strategy 4 options (see :class:`FinetuneConfig`).
        batch_size: images per training step.
        limit: first N images of each split only (quick experiments).
        out: folder for the runs, table and plot; default ``runs/compare-<source>-<time>``.
        device: ``auto``, ``cpu``, ``cuda`` ...
        seed: one seed for every strategy.
        progress: progress bars and per-stage lines.
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
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise CnnCodesError(f"--epochs must be at least 1; got {self.epochs!r}.")
        if self.layers is not None and not self.layers:
            raise CnnCodesError("layers must name at least one earlier layer, or be None.")


@dataclass
class CompareResult:
    """The table (one row per strategy), where everything went, and the runs behind it."""

    table: pd.DataFrame
    out: Path
    curves_path: Path
    store_path: Path
    finetune_runs: dict[int, FinetuneResult] = field(default_factory=dict)
    fit_runs: dict[str, Any] = field(default_factory=dict)


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
    if config.progress:
        print(f"[compare] {message}", flush=True)


def _linear_params(fit: Any) -> int | None:
    final = getattr(fit.pipeline, "steps", [(None, fit.pipeline)])[-1][1]
    coef, intercept = getattr(final, "coef_", None), getattr(final, "intercept_", None)
    if coef is None:
        return None
    return int(coef.size + (intercept.size if intercept is not None else 0))


def compare(config: CompareConfig | None = None, /, **options: Any) -> CompareResult:
    """Run strategies 1-4 on ``config.source`` and tabulate accuracy and cost.

    Call as ``compare(CompareConfig(...))`` or ``compare(source=..., epochs=3, ...)``.

    Raises:
        CnnCodesError: a source without train and val splits, or any bad option of the
            steps it runs (unknown layer, pipeline, model ...).
    """
    if config is None:
        config = CompareConfig(**options)
    elif options:
        raise TypeError("Pass either a CompareConfig or keyword options, not both.")
    from .fit import fit_pipeline  # scikit-learn side, imported only when comparing

    source = open_source(config.source, limit=config.limit)
    found = {item.split for item in source.items if item.label >= 0}
    if not {"train", "val"} <= found:
        raise CnnCodesError(
            f"compare needs a source with train and val splits so that every strategy is "
            f"judged on the same images; {config.source!r} has "
            f"{', '.join(sorted(s for s in found if s)) or 'no split'}. Put the images under "
            "train/ and val/ (or give a CSV manifest with a split column)."
        )
    has_test = "test" in found
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(config.out) if config.out else default_runs_dir() / f"compare-{source.name}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    candidates = list(config.layers) if config.layers else earlier_layers(config.model)
    rows: list[dict[str, Any]] = []

    # (1) and (2): one extraction of every layer needed, then one fit per layer.
    _log(config, f"codes of -2 and {', '.join(candidates)} (cached when extracted before)")
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        extracted = extract(
            source=config.source, model=config.model, weights=config.weights,
            layers=("-2", *candidates), pool=config.pool, limit=config.limit,
            device=config.device, progress=config.progress,
        )
        extract_seconds = time.perf_counter() - started
        penultimate = extracted.layers[0]
        started = time.perf_counter()
        first = fit_pipeline(
            extracted.path, clf=config.clf, layer=penultimate, out=out / "strategy1",
            seed=config.seed, progress=config.progress,
        )
        fit_seconds = time.perf_counter() - started
    note = "cached codes" if extracted.cached else f"extraction {extract_seconds:.0f}s shared with 2"
    rows.append({
        "strategy": f"1 codes + {config.clf}",
        "trained": f"{config.clf} on {penultimate} ({extracted.dims[penultimate]}-d); {note}",
        "trainable_params": _linear_params(first),
        "seconds": extract_seconds + fit_seconds,
        "peak_memory_mib": monitor.peak_rss_mib,
        "val_accuracy": first.metrics.get("val_accuracy"),
        "test_accuracy": first.metrics.get("test_accuracy"),
    })
    fits: dict[str, Any] = {penultimate: first}
    monitor = MemoryMonitor()
    with monitor.track():
        started = time.perf_counter()
        for layer in extracted.layers[1:]:
            fits[layer] = fit_pipeline(
                extracted.path, clf=config.clf, layer=layer,
                out=out / f"strategy2-{layer.replace('.', '_')}", seed=config.seed,
                progress=config.progress,
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

    # (3) and (4): PyTorch fine-tuning from the same pretrained weights.
    runs: dict[int, FinetuneResult] = {}
    for strategy in (3, 4):
        _log(config, f"strategy {strategy}: fine-tuning ({config.epochs} epochs at most)")
        settings = FinetuneConfig(
            source=config.source, strategy=strategy, model=config.model, weights=config.weights,
            unfreeze_from=config.unfreeze_from if strategy == 4 else None,
            head=config.head if strategy == 4 else None, epochs=config.epochs,
            batch_size=config.batch_size, limit=config.limit, out=str(out / f"strategy{strategy}"),
            device=config.device, seed=config.seed, progress=config.progress,
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

    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    if not has_test:
        table = table.drop(columns="test_accuracy")
    # Whole seconds and MiB: the float format of a rendered table would add fake digits.
    table["seconds"] = table["seconds"].round().astype(int)
    table["peak_memory_mib"] = table["peak_memory_mib"].round().astype(int)
    curves = plot_curves(
        {"strategy 3": runs[3].history, "strategy 4": runs[4].history}, out / "curves.png",
        title=f"{config.model} on {source.name}: strategies 3 and 4",
    )
    table.to_csv(out / "compare.csv", index=False)
    (out / "compare.json").write_text(
        pd.Series({"config": asdict(config), "store": str(extracted.path)}).to_json(indent=2),
        encoding="utf-8",
    )
    return CompareResult(table, out, curves, extracted.path, runs, fits)
