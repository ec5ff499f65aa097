"""Batched, device-aware, resumable extraction of CNN codes into an HDF5 code store."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .backbones import DEFAULT_MODEL, Backbone, load_backbone
from .errors import CnnCodesError
from .layers import LARGE_CODE_DIM, CodeExtractor, check_pool, resolve_layers
from .paths import check_output_path, default_cache_dir, exclusive, safe_name
from .progress import Progress, log
from .runtime import amp_dtype, tune_cpu_allocator
from .sources import ImageDataset, ImageSource, collate_items, open_source
from .store import CodeStore, PartWriter, assemble_store

__all__ = ["ExtractConfig", "ExtractResult", "extract", "default_cache_dir", "resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; anything else is checked and used."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise CnnCodesError(
            f"Device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N."
        ) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CnnCodesError(
            f"Device {device!r} was asked for but CUDA is not available here; use --device cpu."
        )
    return chosen


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what an extraction computes and where it goes.

    Attributes:
        source: image folder, CSV manifest or idx folder (see :func:`open_source`).
        model: backbone name (``cnncodes models``).
        weights: weights name, ``none``, or a state-dict path.
        layers: layer specs: node names or indices into the eval node list.
        pool: ``avg``, ``max``, ``avgmax`` or ``none`` for spatial maps.
        out: store path; default ``<cache_dir>/<source>-<model>-<key>.h5``.
        batch_size: images per forward pass.
        workers: DataLoader decoding processes (default: see :func:`default_workers`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        amp: mixed precision; default on for CUDA, off on CPU.
        limit: first N images of each split only.
        root: folder that relative paths of a CSV manifest start from (default: the
            manifest's own folder).
        max_pixels: images with more pixels are skipped as decompression bombs.
        part_size: images per crash-safe part file (what a killed run can lose at most).
        overwrite: replace an existing store at ``out`` made with other settings.
        progress: show a tqdm progress bar.
    """

    source: str
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    layers: tuple[int | str, ...] = (-2,)
    pool: str = "avg"
    out: str | None = None
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    amp: bool | None = None
    limit: int | None = None
    root: str | None = None
    max_pixels: int | None = None
    part_size: int = 512
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_pool(self.pool)
        if self.batch_size < 1:
            raise CnnCodesError(f"batch_size must be at least 1; got {self.batch_size!r}.")
        if self.part_size < 1:
            raise CnnCodesError(f"part_size must be at least 1; got {self.part_size!r}.")
        if self.workers is not None and self.workers < 0:
            raise CnnCodesError(f"workers must be 0 or more; got {self.workers!r}.")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise CnnCodesError(f"max_pixels must be at least 1; got {self.max_pixels!r}.")


@dataclass
class ExtractResult:
    """What :func:`extract` did."""

    path: Path
    cached: bool
    n_images: int
    skipped: list[tuple[str, str]]
    layers: list[str]
    dims: dict[str, int]
    seconds: float
    resumed_from: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")


def _store_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def extract(config: ExtractConfig | None = None, /, **options: Any) -> ExtractResult:
    """Extract codes of ``config.layers`` for every image of ``config.source``.

    Call as ``extract(ExtractConfig(...))`` or ``extract(source=..., layers=(-2,), ...)``.
    Running the same extraction twice is a cache hit that runs no model; a killed run
    resumes from its last finished part.

    Raises:
        CnnCodesError: any problem with the source, model, weights, layers or output path.
    """
    if config is None:
        if isinstance(options.get("layers"), (str, int)):
            options["layers"] = (options["layers"],)
        config = ExtractConfig(**options)
    elif options:
        raise TypeError("Pass either an ExtractConfig or keyword options, not both.")
    started = time.perf_counter()
    source_options = {k: v for k, v in (("root", config.root), ("max_pixels", config.max_pixels))
                      if v is not None}
    source = open_source(config.source, limit=config.limit, **source_options)
    if config.out:
        check_output_path(config.out)
    backbone = load_backbone(config.model, config.weights)
    layers = resolve_layers(backbone, config.layers)
    device = resolve_device(config.device)
    amp = device.type == "cuda" if config.amp is None else config.amp
    precision = amp_dtype(device) if amp else torch.float32

    extractor = CodeExtractor(backbone, layers, config.pool)
    dims = _code_dims(extractor, backbone)
    notes = [
        f"layer {name} gives {dim:,}-d codes with --pool none; consider --pool avg"
        for name, dim in dims.items()
        if dim > LARGE_CODE_DIM
    ]
    for note in notes:
        warnings.warn(note, stacklevel=2)
    notes += list(getattr(source, "warnings", []))
    key_parts = {
        "source_fingerprint": source.fingerprint,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "layers": layers,
        "pooling": config.pool,
        "preprocessing": backbone.preprocessing,
        "precision": str(precision).removeprefix("torch."),
    }
    key = _store_key(key_parts)
    out = Path(config.out) if config.out else (
        default_cache_dir() / f"{safe_name(source.name)}-{safe_name(backbone.name)}-{key}.h5"
    )
    check_output_path(out)
    with exclusive(out, on_wait=lambda: log(
        "extract", f"another cnncodes run is writing {out}; waiting for it to finish",
        enabled=True,
    )):
        hit = _cache_hit(out, key, overwrite=config.overwrite, explicit=config.out is not None)
        if hit is not None:
            hit.seconds = time.perf_counter() - started
            hit.warnings = notes
            return hit
        writer = PartWriter(out.with_name(out.name + ".parts"), {"store_key": key, **key_parts})
        resumed_from = writer.done_until()
        todo = range(resumed_from, len(source.items))
        model_started = time.perf_counter()
        if todo:
            _run(config, source, backbone, extractor, device, precision, writer, todo, dims)
        attrs = {
            "cnncodes_version": __version__,
            "torch_version": torch.__version__,
            "store_key": key,
            **key_parts,
            "layer_specs": [str(spec) for spec in config.layers],
            "source": str(source.root),
            "source_kind": source.kind,
            "device": str(device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _check_some_encoded(writer, source)
        assemble_store(
            writer, out, layers=layers, dims=dims, items=source.items, classes=source.classes,
            has_split=source.has_split, attrs=attrs,
        )
    with CodeStore(out) as store:
        n_images, skipped = len(store), store.skipped
        notes += _empty_class_notes(store)
    return ExtractResult(
        out, False, n_images, skipped, layers, dims, time.perf_counter() - model_started,
        resumed_from, notes,
    )


def _check_some_encoded(writer: PartWriter, source: ImageSource) -> None:
    """Refuse to write a store without a single code: every image was unreadable."""
    import h5py

    encoded, reasons = 0, []
    for _, _, path in writer.parts():
        with h5py.File(path, "r") as part:
            encoded += len(part["positions"])
            reasons += [r.decode() if isinstance(r, bytes) else str(r)
                        for r in part["skipped_reasons"][:3]]
    if encoded == 0:
        first = f" (e.g. {reasons[0]})" if reasons else ""
        raise CnnCodesError(
            f"Source {str(source.root)!r}: none of its {len(source.items)} files could be "
            f"read as an image{first}; check the path and the files ('cnncodes extract' "
            "lists each skipped file with its reason)."
        )


def _empty_class_notes(store: CodeStore) -> list[str]:
    """Warnings for classes that ended up with no image at all."""
    labels = store.labels
    return [
        f"class {name!r} has no readable image: every file of it was skipped"
        for index, name in enumerate(store.classes) if not (labels == index).any()
    ]


def default_workers(device: torch.device) -> int:
    """Decoding processes: as many as spare cores on GPU; on CPU only beyond two cores.

    On a CPU the forward pass already keeps every core busy; measured on 2 cores, decoding
    in the main process (0 workers) beat 1 and 2 workers by 15-20 % (bench/results/).
    """
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(1, cores - 1))
    return 0 if cores <= 2 else min(4, cores // 2)


def _code_dims(extractor: CodeExtractor, backbone: Backbone) -> dict[str, int]:
    size = backbone.input_size
    with torch.inference_mode():
        outputs = extractor(torch.zeros(1, 3, size, size))
    return {name: int(value.shape[1]) for name, value in outputs.items()}


def _cache_hit(out: Path, key: str, *, overwrite: bool, explicit: bool) -> ExtractResult | None:
    if not out.exists():
        return None
    try:
        with CodeStore(out) as store:
            if store.attrs.get("store_key") == key:
                layers = store.layers
                return ExtractResult(
                    out, True, len(store), store.skipped, layers,
                    {name: store.dim(name) for name in layers}, 0.0,
                )
    except CnnCodesError:
        pass
    if explicit and not overwrite:
        raise CnnCodesError(
            f"{str(out)!r} already exists and holds other codes; pass --overwrite to "
            "replace it (the old file stays intact until the new one is complete) or "
            "choose another --out."
        )
    return None


def _run(
    config: ExtractConfig,
    source: ImageSource,
    backbone: Backbone,
    extractor: CodeExtractor,
    device: torch.device,
    precision: torch.dtype,
    writer: PartWriter,
    todo: Sequence[int],
    dims: dict[str, int],
) -> None:
    if device.type == "cpu":
        tune_cpu_allocator()
    workers = config.workers if config.workers is not None else default_workers(device)
    loader = torch.utils.data.DataLoader(
        ImageDataset(source, todo, backbone.transform),
        batch_size=config.batch_size,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    extractor = extractor.to(device)
    if device.type == "cuda":
        extractor = extractor.to(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device.type, dtype=precision)
        if precision != torch.float32 else nullcontext()
    )
    part_size = config.part_size
    part_start = todo[0]
    part_end = min(len(source.items), (part_start // part_size + 1) * part_size)
    positions: list[int] = []
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in extractor.layers}
    skipped: list[tuple[int, str]] = []

    def flush(end: int) -> None:
        nonlocal positions, skipped, part_start
        keep = [i for i, p in enumerate(positions) if p < end]
        codes = {
            name: (np.concatenate(arrays)[keep] if arrays else np.zeros((0, dims[name]), np.float32))
            for name, arrays in chunks.items()
        }
        writer.write(
            part_start, end, [positions[i] for i in keep], codes,
            [(p, r) for p, r in skipped if p < end],
        )
        rest = [i for i, p in enumerate(positions) if p >= end]
        for name, arrays in chunks.items():
            chunks[name] = [np.concatenate(arrays)[rest]] if arrays and rest else []
        positions = [positions[i] for i in rest]
        skipped = [(p, r) for p, r in skipped if p >= end]
        part_start = end

    bar = Progress(
        total=len(source.items), initial=todo[0], unit="img", enabled=config.progress,
        desc=f"extract {backbone.name}",
    )
    n_skipped = 0
    with bar, torch.inference_mode():
        for batch in loader:
            if batch["images"] is not None:
                images = batch["images"].to(device, non_blocking=True)
                if device.type == "cuda":
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast:
                    outputs = extractor(images)
                for name in extractor.layers:
                    chunks[name].append(outputs[name].float().cpu().numpy())
                positions += batch["positions"]
            skipped += batch["skipped"]
            n_skipped += len(batch["skipped"])
            last = max(batch["positions"] + [p for p, _ in batch["skipped"]])
            bar.update(len(batch["positions"]) + len(batch["skipped"]))
            if n_skipped:
                bar.set_postfix(skipped=n_skipped)
            while last >= part_end - 1 and part_start < len(source.items):
                flush(part_end)
                part_end = min(len(source.items), part_end + part_size)
