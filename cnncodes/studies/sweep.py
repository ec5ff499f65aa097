"""The layer sweep: one pipeline fitted on codes from several depths of one network.

The resulting transferability curve (accuracy against depth, with each layer's code size)
shows where a network's general features end and its ImageNet-specific ones begin, which
is the choice between strategies 1 and 2 of DESIGN.md. All layers come from a single
forward pass into one code store; the fits reuse :func:`cnncodes.fit.fit_pipeline`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from ..data.store import CodeStore
from ..errors import CnnCodesError
from ..nets.backbones import DEFAULT_MODEL, Backbone, load_backbone
from ..nets.layers import check_pool, is_spatial, list_layers, node_names, resolve_layers
from ..paths import default_dir, safe_name
from ..progress import log

__all__ = [
    "DEFAULT_STAGES",
    "SweepConfig",
    "SweepResult",
    "stage_outputs",
    "sweep",
    "sweep_layers",
]

DEFAULT_STAGES = 4
STORE_SUFFIXES = (".h5", ".hdf5")


def stage_outputs(backbone: Backbone) -> list[str]:
    """The output node of every stage of the network, shallow to deep.

    A stage is a container module whose output is a spatial map (``layer1``..``layer4`` of
    a ResNet; ``blocks.0``..``blocks.6`` of an EfficientNet, whose ``blocks`` container holds
    most of the network and so is split into its children). Networks built as one flat
    sequence of layers (AlexNet, VGG) have no such containers; their stages are the runs of
    nodes at one spatial resolution, ending where the resolution drops.
    """
    infos = list_layers(backbone)
    names = [info.name for info in infos]
    shapes = {info.name: info.shape for info in infos}

    def members(prefix: str) -> list[str]:
        return [n for n in names if n.startswith(prefix + ".")] if prefix else names

    def children(prefix: str) -> list[str]:
        depth = prefix.count(".") + 1 if prefix else 0
        found: list[str] = []
        for name in members(prefix):
            parts = name.split(".")
            child = ".".join(parts[: depth + 1])
            if child not in found:
                found.append(child)
        return found

    stages: list[str] = []

    def visit(prefix: str) -> None:
        for child in children(prefix):
            inside = members(child)
            # Inside a split body container, a single-node child (torchvision's stem
            # ``features.0``) is a stage too; at the top level it is just a layer.
            if not inside and prefix and is_spatial(shapes.get(child)):
                stages.append(child)
                continue
            if len(inside) < 2:
                continue
            containers = [c for c in children(child) if len(members(c)) >= 2]
            if len(containers) >= 2 and len(inside) > len(names) / 2:
                visit(child)
            elif is_spatial(shapes[inside[-1]]):
                stages.append(inside[-1])

    visit("")
    if len(stages) >= 3:
        return stages
    spatial = [n for n in names[1:] if is_spatial(shapes[n])]
    return [
        name for name, after in zip(spatial, spatial[1:] + [""])
        if not after or shapes[after][1:] != shapes[name][1:]  # type: ignore[index]
    ]


def _same_as_code(backbone: Backbone, names: Sequence[str], stage: str, pool: str) -> bool:
    """Whether a stage's pooled code is the penultimate code itself.

    In most CNNs the penultimate code is the global average of the last stage's maps, so
    with ``avg`` pooling both would give the very same columns; the curve shows it once.
    """
    modules = dict(backbone.model.named_modules())
    passive = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)

    def is_passive(name: str) -> bool:
        # Dropout is the identity in eval mode (torchvision's EfficientNet code is a Dropout).
        last = name.rsplit(".", 1)[-1]
        module = modules.get(name)
        named_pool = module is None or type(module).__name__ == "SelectAdaptivePool2d"
        return isinstance(module, passive) or (
            named_pool and any(word in last for word in ("pool", "flatten"))
        )

    start, code = names.index(stage), len(names) - 2
    return pool == "avg" and all(is_passive(n) for n in names[start + 1 : code + 1])


def sweep_layers(
    backbone: Backbone, layers: str | Sequence[int | str] = "default", pool: str = "avg"
) -> list[str]:
    """Resolve a sweep's layer set to FX node names.

    Args:
        backbone: the network.
        layers: ``"default"`` (the outputs of the last four stages and the penultimate
            code), ``"all"`` (every stage, the penultimate code and the logits), a comma
            separated string (``"-2,-5,layer3"``) or a sequence of layer specs.
        pool: the pooling the codes will use (decides which stage duplicates the code).

    Returns:
        Node names: in graph order for ``default`` and ``all``; in the order given (repeats
        dropped) for explicit specs, which keeps the extraction cache key of the same
        ``cnncodes extract --layer ...`` call.

    Raises:
        CnnCodesError: an unknown layer, or fewer than one layer.
    """
    names = node_names(backbone)
    if isinstance(layers, str) and layers.strip().lower() in ("default", "all"):
        every = layers.strip().lower() == "all"
        stages = [s for s in stage_outputs(backbone) if not _same_as_code(backbone, names, s, pool)]
        chosen = (stages if every else stages[-DEFAULT_STAGES:]) + [names[-2]]
        if every:
            chosen.append(names[-1])
        return sorted(dict.fromkeys(chosen), key=names.index)
    specs = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    specs = [s for s in specs if str(s).strip() != ""]
    if not specs:
        raise CnnCodesError(
            f"No layer in {layers!r}; give a comma-separated list such as -2,-5,layer3, "
            "or 'default' or 'all'."
        )
    return resolve_layers(backbone, specs)


@dataclass(frozen=True)
class SweepConfig:
    """What ``cnncodes sweep`` extracts and fits.

    Attributes:
        source: an image source (folder, CSV manifest, idx folder) or an existing code
            store (``.h5``), whose layers are then swept without extracting anything.
        layers: ``default``, ``all``, a comma-separated list, or a sequence of specs.
        model, weights, pool, limit, batch_size, workers, device: as for extraction.
        store: where the code store goes (default: the extraction cache).
        clf, cv, pca, l2norm, refit_on, seed: as for :func:`cnncodes.fit.fit_pipeline`.
        out: folder for the table, the PNG and one run folder per layer.
        progress: progress lines and bars (on stderr).
    """

    source: str
    layers: str | tuple[int | str, ...] = "default"
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    pool: str = "avg"
    limit: int | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    store: str | None = None
    clf: str = "logreg"
    cv: int = 5
    pca: int | None = None
    l2norm: bool = False
    refit_on: str = "train"
    seed: int = 0
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_pool(self.pool)


@dataclass
class SweepResult:
    """What :func:`sweep` produced.

    Attributes:
        table: one row per layer: node index, code dimension, accuracies, fit time.
        store: the code store the fits read.
        table_path: the table as CSV.
        markdown_path: the same table as Markdown.
        plot_path: the transferability curve (PNG).
        run_dirs: the fitted run folder of each layer.
    """

    table: pd.DataFrame
    store: Path
    table_path: Path
    markdown_path: Path
    plot_path: Path
    run_dirs: dict[str, Path]


def _log(config: SweepConfig, message: str) -> None:
    log("sweep", message, enabled=config.progress)


def _extract_layers(config: SweepConfig) -> tuple[Path, list[str], dict[str, int]]:
    """Extract every layer of the sweep in one pass; the store, layers and their depth."""
    from ..extraction.extract import extract

    backbone = load_backbone(config.model, config.weights)
    layers = sweep_layers(backbone, config.layers, config.pool)
    names = node_names(backbone)
    depth = {name: names.index(name) for name in layers}
    _log(config, f"extracting {len(layers)} layers in one pass: {', '.join(layers)}")
    extracted = extract(
        source=config.source, model=config.model, weights=config.weights,
        layers=tuple(layers), pool=config.pool, limit=config.limit, out=config.store,
        batch_size=config.batch_size, workers=config.workers, device=config.device,
        progress=config.progress,
    )
    return extracted.path, layers, depth


def _store_layers(config: SweepConfig) -> tuple[Path, list[str], dict[str, int]]:
    """Layers of an existing store, in depth order, with node indices where known."""
    path = Path(config.source)
    with CodeStore(path) as store:
        available, backbone_name = store.layers, str(store.attrs.get("backbone", ""))
        chosen = available
        if not (isinstance(config.layers, str) and config.layers.lower() in ("default", "all")):
            specs = (
                [s.strip() for s in config.layers.split(",") if s.strip()]
                if isinstance(config.layers, str) else list(config.layers)
            )
            chosen = list(dict.fromkeys(store.resolve(spec) for spec in specs))
    try:  # node indices need only the architecture, never the weights
        names = node_names(load_backbone(backbone_name, "none"))
        depth = {name: names.index(name) for name in chosen}
    except (CnnCodesError, ValueError):
        depth = {name: available.index(name) for name in chosen}
    return path, sorted(chosen, key=depth.__getitem__), depth


def sweep(config: SweepConfig | None = None, /, **options: Any) -> SweepResult:
    """Extract several layers in one pass, fit the same pipeline on each, tabulate and plot.

    Call as ``sweep(SweepConfig(...))`` or ``sweep(source=..., clf="logreg")``.

    Raises:
        CnnCodesError: any problem with the source, model, layers or pipeline options.
    """
    from ..explainers import figures
    from ..probe.fit import fit_pipeline

    if config is None:
        if isinstance(options.get("layers"), list):
            options["layers"] = tuple(options["layers"])
        config = SweepConfig(**options)
    elif options:
        raise TypeError("Pass either a SweepConfig or keyword options, not both.")
    if not os.path.exists(config.source):
        raise CnnCodesError(
            f"Sweep source {config.source!r} does not exist; give an image folder, CSV "
            "manifest, idx folder or a code store (.h5)."
        )
    if Path(config.source).suffix.lower() in STORE_SUFFIXES:
        store_path, layers, depth = _store_layers(config)
    else:
        store_path, layers, depth = _extract_layers(config)
    with CodeStore(store_path) as store:
        dims = {name: store.dim(name) for name in layers}
        attrs = store.attrs
    out = Path(config.out) if config.out else default_dir("sweeps") / safe_name(
        f"{store_path.stem}-{Path(config.clf).stem}"
    )
    out.mkdir(parents=True, exist_ok=True)
    rows, run_dirs = [], {}
    for name in sorted(layers, key=depth.__getitem__):
        # PCA to more components than the code has is impossible; such a layer is fitted raw.
        pca = config.pca if config.pca is not None and config.pca < dims[name] else None
        fitted = fit_pipeline(
            store_path, clf=config.clf, layer=name, cv=config.cv, pca=pca,
            l2norm=config.l2norm, out=out / "runs" / safe_name(name), refit_on=config.refit_on,
            seed=config.seed, progress=False,
        )
        metrics = fitted.metrics
        run_dirs[name] = fitted.run_dir
        rows.append({
            "layer": name, "node_index": depth[name], "code_dim": dims[name],
            "train_accuracy": metrics.get("train_accuracy"),
            "cv_accuracy": metrics.get("cv_accuracy"),
            "val_accuracy": metrics.get("val_accuracy"),
            "test_accuracy": metrics.get("test_accuracy"),
            "params": fitted.row.get("params", ""),
            "fit_seconds": metrics.get("fit_seconds"),
        })
        held_out = {k: metrics.get(k) for k in ("cv_accuracy", "val_accuracy", "test_accuracy")}
        _log(config, f"{name} ({dims[name]}-d): " + ", ".join(
            f"{k.removesuffix('_accuracy')} {v:.4f}" for k, v in held_out.items() if v is not None
        ))
    table = pd.DataFrame(rows)
    table = table.dropna(axis=1, how="all")
    table_path, markdown_path, plot_path = out / "sweep.csv", out / "sweep.md", out / "sweep.png"
    table.to_csv(table_path, index=False)
    markdown_path.write_text(table.round(4).to_markdown(index=False) + "\n")
    source_name = Path(str(attrs.get("source", config.source))).name
    figures.plot_sweep(
        table, plot_path,
        title=f"Transferability: {attrs.get('backbone', config.model)} codes "
        f"({attrs.get('pooling', config.pool)}-pooled) on {source_name}, {Path(config.clf).stem}",
    )
    return SweepResult(table, store_path, table_path, markdown_path, plot_path, run_dirs)
