"""Batched, device-aware, resumable extraction of CNN codes into an HDF5 code store."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..data.decode import MAX_PIXELS, first_line
from ..data.preprocess import split_preprocessing
from ..data.sources import ImageDataset, ImageSource, collate_items, open_source
from ..data.store import CodeStore, PartWriter, assemble_store
from ..errors import CnnCodesError, RankFailure
from ..nets.backbones import DEFAULT_MODEL, Backbone, load_backbone
from ..nets.layers import LARGE_CODE_DIM, CodeExtractor, check_pool, node_names, resolve_layers
from ..paths import check_output_path, default_cache_dir, exclusive, safe_name
from ..progress import Progress, log
from ..runtime import Runtime, setup_runtime
from .execution import (
    Execution,
    ThreadGovernor,
    default_workers,
    lower_priority,
    plan_execution,
    reuse_execution,
)
from .shards import (
    Shard,
    gather_errors,
    missing_ranges,
    owned_parts,
    process_group,
    shard_from_env,
    thread_budget,
)
from .views import ViewPlan, view_dataset, view_rows

__all__ = ["ExtractConfig", "ExtractResult", "default_workers", "extract"]


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
        batch_size: images per forward pass (default: per device, see
            :mod:`cnncodes.extraction.execution`).
        workers: DataLoader decoding processes (default: see :func:`default_workers`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        amp: mixed precision (bfloat16 autocast on CPUs and recent GPUs, float16 on older
            GPUs); default on for CUDA, off on CPU. Codes are stored as float32 either way.
        limit: first N images of each split only.
        root: folder that relative paths of a CSV manifest start from (default: the
            manifest's own folder).
        max_pixels: images with more pixels are skipped as decompression bombs.
        part_size: images per crash-safe part file (what a killed run can lose at most).
        overwrite: replace an existing store at ``out`` made with other settings.
        progress: show a tqdm progress bar.
        views: augmented views stored after each training image's own row (see
            :mod:`cnncodes.extraction.views`); 0: one row per image.
        seed: the seed of the views (each view's randomness comes from (seed, path, view)).
        view_policy: ``train`` (views of training images only) or ``tta`` (of every image,
            view 1 the plain flip: what ``predict --tta`` extracts).
    """

    source: str
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    layers: tuple[int | str, ...] = (-2,)
    pool: str = "avg"
    out: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    device: str = "auto"
    amp: bool | None = None
    limit: int | None = None
    root: str | None = None
    max_pixels: int | None = None
    part_size: int = 512
    overwrite: bool = False
    progress: bool = True
    views: int = 0
    seed: int = 0
    view_policy: str = "train"

    def __post_init__(self) -> None:
        check_pool(self.pool)
        ViewPlan(self.views, self.seed, self.view_policy)  # checks count and policy
        if self.batch_size is not None and self.batch_size < 1:
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
    n_views: int = 0  # of the n_images rows, augmented views (extract --views)

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")


def _store_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class _Plan:
    """What an extraction will compute and where it goes, decided before any image."""

    source: ImageSource
    backbone: Backbone
    layers: list[str]
    runtime: Runtime
    extractor: CodeExtractor
    dims: dict[str, int]
    key_parts: dict[str, Any]
    key: str
    out: Path
    notes: list[str]
    node_names: list[str]
    view_plan: ViewPlan
    # (source position, view) of every row; None without views: a row is an item
    rows: tuple[np.ndarray, np.ndarray] | None

    @property
    def n_rows(self) -> int:
        return len(self.source.items) if self.rows is None else len(self.rows[0])

    @property
    def row_items(self) -> list[Any]:
        """The source item of every row (the items themselves when there are no views)."""
        if self.rows is None:
            return self.source.items
        items = self.source.items
        return [items[position] for position in self.rows[0].tolist()]


def extract(config: ExtractConfig | None = None, /, **options: Any) -> ExtractResult:
    """Extract codes of ``config.layers`` for every image of ``config.source``.

    Call as ``extract(ExtractConfig(...))`` or ``extract(source=..., layers=(-2,), ...)``.
    Running the same extraction twice is a cache hit that runs no model; a killed run
    resumes from its last finished part. A second run on the same store waits for the
    first (a lock beside the store) and then finds its result.

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
    shard = shard_from_env()
    plan = _plan(config, shard)
    if shard.distributed:  # torchrun coordinates the ranks; no lock between them
        return _cached_or_extracted(config, plan, shard, started)
    waiting = f"another cnncodes run is writing {plan.out}; waiting for it to finish"
    with exclusive(plan.out, on_wait=lambda: log("extract", waiting)):
        return _cached_or_extracted(config, plan, shard, started)


def _cached_or_extracted(config: ExtractConfig, plan: _Plan, shard: Shard,
                         started: float) -> ExtractResult:
    hit = _cache_hit(plan.out, plan.key, overwrite=config.overwrite,
                     explicit=config.out is not None)
    if hit is not None:
        hit.seconds = time.perf_counter() - started
        hit.warnings = plan.notes
        return hit
    return _extract_into_store(config, plan, shard)


def _plan(config: ExtractConfig, shard: Shard) -> _Plan:
    """List the source, load the backbone, resolve layers and device, name the store."""
    source = open_source(
        config.source, limit=config.limit, root=config.root,
        max_pixels=config.max_pixels if config.max_pixels is not None else MAX_PIXELS,
    )
    if config.out:
        check_output_path(config.out)
    backbone = load_backbone(config.model, config.weights)
    names = node_names(backbone)  # traced once: layer specs here, the store's index below
    layers = resolve_layers(backbone, config.layers, names)
    runtime = setup_runtime(config.device, config.amp)
    if shard.distributed:
        runtime = _rank_runtime(runtime, shard)
    extractor = CodeExtractor(backbone, layers, config.pool)
    dims = _code_dims(extractor, backbone)
    notes = [
        f"layer {name} gives {dim:,}-d codes with --pool none; consider --pool avg"
        for name, dim in dims.items()
        if dim > LARGE_CODE_DIM
    ]
    for note in notes:
        warnings.warn(note, stacklevel=3)
    key_parts: dict[str, Any] = {
        "source_fingerprint": source.fingerprint,
        "backbone": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "layers": layers,
        "pooling": config.pool,
        "preprocessing": backbone.preprocessing,
        "precision": runtime.precision_name,
    }
    view_plan = ViewPlan(config.views, config.seed, config.view_policy)
    if view_plan.count:  # left out otherwise: stores without views keep their keys
        key_parts["views"] = view_plan.record()
    key = _store_key(key_parts)
    out = Path(config.out) if config.out else (
        default_cache_dir() / f"{safe_name(source.name)}-{safe_name(backbone.name)}-{key}.h5"
    )
    if not config.out:  # an explicit --out was checked above, before the model loaded
        check_output_path(out)
    return _Plan(source, backbone, layers, runtime, extractor, dims, key_parts, key, out,
                 notes + list(source.warnings), names, view_plan,
                 view_rows(source.items, view_plan) if view_plan.count else None)


def _rank_runtime(runtime: Runtime, shard: Shard) -> Runtime:
    """One GPU per rank (``LOCAL_RANK``) and this node's cores shared by its ranks."""
    torch.set_num_threads(thread_budget(shard))
    if runtime.device.type == "cuda" and runtime.device.index is None:
        device = torch.device("cuda", shard.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return replace(runtime, device=device)
    return runtime


def _extract_into_store(config: ExtractConfig, plan: _Plan, shard: Shard) -> ExtractResult:
    """Encode every image of this shard not yet in a finished part, then join the parts."""
    writer = PartWriter(plan.out.with_name(plan.out.name + ".parts"),
                        {"store_key": plan.key, **plan.key_parts})
    owned = owned_parts(plan.n_rows, config.part_size, shard)
    todo = missing_ranges(owned, [(start, end) for start, end, _ in writer.parts()])
    resumed_from = sum(end - start for start, end in owned) - sum(e - s for s, e in todo)
    started = time.perf_counter()
    explicit = {key for key in ("batch_size", "workers") if getattr(config, key) is not None}
    execution = reuse_execution(writer.folder, plan_execution(
        plan.runtime.device, batch_size=config.batch_size, workers=config.workers,
        ranks=shard.local_world,
    ), explicit=explicit)
    with process_group(shard, plan.runtime.device):
        _on_every_rank(shard, "encoding its images",
                       lambda: _run(config, plan, writer, todo, execution, shard, resumed_from)
                       if todo else None)
        _on_every_rank(shard, "joining the parts",
                       lambda: _join(config, plan, writer, execution) if shard.rank == 0 else None)
    with CodeStore(plan.out) as store:
        n_images, skipped = len(store), store.skipped
        notes = plan.notes + _empty_class_notes(store)
        n_views = int(np.count_nonzero(store.views))
    return ExtractResult(plan.out, False, n_images, skipped, plan.layers, plan.dims,
                         time.perf_counter() - started, resumed_from, notes, n_views)


def _on_every_rank(shard: Shard, doing: str, step: Callable[[], None]) -> None:
    """Run ``step``; under torchrun, then learn whether every rank succeeded, and fail on
    every rank, in one line naming the first failed rank, if one did not."""
    if not shard.distributed:
        step()
        return
    error = ""
    try:
        step()
    except CnnCodesError as caught:
        error = str(caught)
    except Exception as caught:  # reported by rank, below, on every rank
        error = f"{type(caught).__name__}: {first_line(caught)}"
    failed = gather_errors(shard, error)
    if failed:
        rank, text = failed[0]
        others = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise RankFailure(
            f"rank {rank} of {shard.world}{others} failed while {doing}: {text.rstrip('.')}. "
            "Finished parts are kept: run the same command again to resume.",
            reporter=shard.rank == 0,
        )


def _join(config: ExtractConfig, plan: _Plan, writer: PartWriter, execution: Execution) -> None:
    """Join the finished parts into the store under its final name."""
    names = plan.node_names
    attrs = {
        "cnncodes_version": __version__,
        "torch_version": torch.__version__,
        "store_key": plan.key,
        **plan.key_parts,
        "layer_specs": [str(spec) for spec in config.layers],
        # The backbone's eval node list, so that any index (-2) maps to a stored layer
        # (left out where it would pass HDF5's 64 KiB limit on an attribute).
        "node_names": names if len(json.dumps(names)) < 60_000 else [],
        "source": str(plan.source.root),
        "source_kind": plan.source.kind,
        "device": str(plan.runtime.device),
        "execution": execution.as_dict(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _check_some_encoded(writer, plan.source)
    assemble_store(
        writer, plan.out, layers=plan.layers, dims=plan.dims, items=plan.row_items,
        classes=plan.source.classes, has_split=plan.source.has_split, attrs=attrs,
        views=plan.rows,
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
        # Nothing worth resuming: the parts hold only skips. Left behind, they would block
        # the next run once the files are fixed (another source fingerprint, same --out).
        shutil.rmtree(writer.folder, ignore_errors=True)
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


def _code_dims(extractor: CodeExtractor, backbone: Backbone) -> dict[str, int]:
    """Each layer's code width, from a forward pass on the meta device: shapes only, no
    arithmetic (a real pass on one image cost about a second of start-up on a CPU)."""
    size = backbone.input_size
    state = {name: torch.empty_like(tensor, device="meta") for name, tensor in
             itertools.chain(extractor.named_parameters(), extractor.named_buffers())}
    with torch.inference_mode():
        try:
            outputs = torch.func.functional_call(
                extractor, state, (torch.empty(1, 3, size, size, device="meta"),))
        except (NotImplementedError, RuntimeError):  # an operation with no meta kernel
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
                    n_views=int(np.count_nonzero(store.views)),
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


def _run(config: ExtractConfig, plan: _Plan, writer: PartWriter, todo: Sequence[tuple[int, int]],
         execution: Execution, shard: Shard, done: int) -> None:
    """Encode the positions of the ``todo`` ranges, writing one part file per range
    (``done``: this shard's images already in finished parts, for the progress bar)."""
    source, dims = plan.source, plan.dims
    memory = "channels_last" if execution.channels_last else "contiguous"
    runtime = replace(plan.runtime, memory_format=memory)
    workers = execution.workers
    preprocessing = split_preprocessing(plan.backbone.transform)
    positions = [p for start, end in todo for p in range(start, end)]
    dataset: ImageDataset | Any = ImageDataset(
        source, positions, preprocessing.image, execution.decode_threads,
    ) if plan.rows is None else view_dataset(
        source, positions, *plan.rows, preprocessing, plan.backbone.input_size,
        plan.view_plan, execution.decode_threads,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=execution.batch_size,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=runtime.device.type == "cuda",
        prefetch_factor=4 if workers else None,
        worker_init_fn=partial(lower_priority, execution.worker_nice) if workers else None,
    )
    extractor = runtime.place(plan.extractor.folded()[0] if execution.fold_norms
                              else plan.extractor)
    parts = _PartBuffer(writer, dims, todo)
    bar = Progress(
        total=done + len(positions), initial=done, unit="img" if plan.rows is None else "row",
        enabled=config.progress and shard.rank == 0,
        desc=f"extract {plan.backbone.name}" + (f" ({shard.label})" if shard.distributed else ""),
    )
    n_skipped, threads = 0, torch.get_num_threads()
    governor = ThreadGovernor(threads if runtime.device.type == "cpu" else 1)
    with bar, torch.inference_mode(), _restored_threads(threads), contextlib.closing(dataset):
        for batch in loader:
            codes: dict[str, np.ndarray] = {}
            if batch["images"] is not None:
                pixels = batch["images"].to(runtime.device, non_blocking=True)
                started = time.perf_counter()
                with runtime.autocast():
                    outputs = extractor(runtime.images(preprocessing.batch(pixels)))
                codes = {name: outputs[name].float().cpu().numpy() for name in plan.layers}
                governor.record(len(batch["positions"]), time.perf_counter() - started)
            parts.add(batch["positions"], codes, batch["skipped"])
            n_skipped += len(batch["skipped"])
            bar.update(len(batch["positions"]) + len(batch["skipped"]))
            if n_skipped:
                bar.set_postfix(skipped=n_skipped)
    if governor.summary():
        log("extract", governor.summary(), enabled=config.progress)


@contextlib.contextmanager
def _restored_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _PartBuffer:
    """Collects codes in position order and writes a part file each time every position
    of the next ``[start, end)`` range is done (encoded or skipped)."""

    def __init__(self, writer: PartWriter, dims: dict[str, int],
                 ranges: Sequence[tuple[int, int]]) -> None:
        self.writer, self.dims = writer, dims
        self.ranges = list(ranges)
        self.positions: list[int] = []
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in dims}
        self.skipped: list[tuple[int, str]] = []

    def add(self, positions: list[int], codes: dict[str, np.ndarray],
            skipped: list[tuple[int, str]]) -> None:
        if positions:
            for name, array in codes.items():
                self.chunks[name].append(array)
            self.positions += positions
        self.skipped += skipped
        last = max(positions + [p for p, _ in skipped])
        while self.ranges and last >= self.ranges[0][1] - 1:
            self._flush(*self.ranges.pop(0))

    def _flush(self, start: int, end: int) -> None:
        keep = [i for i, p in enumerate(self.positions) if p < end]
        rest = [i for i, p in enumerate(self.positions) if p >= end]
        codes = {}
        for name, arrays in self.chunks.items():
            joined = np.concatenate(arrays) if arrays else np.zeros((0, self.dims[name]), np.float32)
            codes[name] = joined[keep]
            self.chunks[name] = [joined[rest]] if rest else []
        self.writer.write(
            start, end, [self.positions[i] for i in keep], codes,
            [(p, r) for p, r in self.skipped if p < end],
        )
        self.positions = [self.positions[i] for i in rest]
        self.skipped = [(p, r) for p, r in self.skipped if p >= end]
