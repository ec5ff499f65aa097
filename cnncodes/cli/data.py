"""Commands on data and stores: models, layers, extract, info, cache."""

from __future__ import annotations

from typing import Any

import click

from .group import CnnCodesGroup
from .options import (
    TABLE_FORMATS,
    device_option,
    layer_option,
    model_option,
    pool_option,
    weights_option,
)


@click.command()
def models() -> None:
    """List the backbones and whether their weights are available offline."""
    from ..nets.backbones import list_backbones

    rows = list_backbones()
    width = max(len(r.name) for r in rows)
    click.echo(f"{'model':<{width}}  {'family':<11}  {'default weights':<32}  offline")
    for row in rows:
        offline = "yes" if row.offline else f"no ({row.missing})"
        line = f"{row.name:<{width}}  {row.family:<11}  {row.default_weights:<32}  {offline}"
        click.echo(line + (f"  {row.note}" if row.note else ""))
    click.echo("Also: any timm model as timm:NAME; --weights path.pth for your own checkpoint.",
               err=True)


@click.command()
@click.argument("model")
@weights_option(default="none")
@pool_option
def layers(model: str, weights: str, pool: str) -> None:
    """Index, FX node name, output shape and code size of every tap point of MODEL."""
    from ..nets.backbones import load_backbone
    from ..nets.layers import code_dim, list_layers

    backbone = load_backbone(model, weights)
    infos = list_layers(backbone)
    width = max(len(info.name) for info in infos)
    click.echo(f"{'index':>6} {'-index':>7}  {'node':<{width}}  {'output shape':<18}  code dim ({pool})")
    for info in infos:
        shape = "x".join(map(str, info.shape)) if info.shape is not None else "-"
        dim = code_dim(info.shape, pool)
        click.echo(
            f"{info.index:>6} {info.index - len(infos):>7}  {info.name:<{width}}  {shape:<18}  "
            f"{dim if dim is not None else '-'}"
        )


@click.command()
@click.argument("source", type=click.Path())
@model_option
@weights_option()
@layer_option
@pool_option
@click.option("--out", "-o", type=click.Path(), help="Store path (default: cache/stores/<source>-<model>-<key>.h5, under $CNNCODES_CACHE).")
@click.option("--batch-size", "-b", type=int, help="Images per forward pass (default: 8 on a CPU, 32 on CUDA; measured in bench/).")
@click.option("--workers", "-j", type=int, help="Decoding processes (default: spare cores on GPU; 0 on a CPU of 2 cores).")
@device_option
@click.option("--amp/--no-amp", default=None, help="Mixed precision: bfloat16 autocast on a CPU or a recent GPU, float16 on an older GPU; codes are stored as float32 (default: on for CUDA, off on CPU).")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--root", type=click.Path(file_okay=False),
              help="Folder that relative paths in a CSV manifest start from (default: the "
              "manifest's folder).")
@click.option("--max-pixels", type=int,
              help="Skip images with more pixels than this as decompression bombs "
              "(default 178,956,970, PIL's limit).")
@click.option("--part-size", default=512, show_default=True, help="Images per crash-safe part file.")
@click.option("--views", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Also store K augmented views of each training image (random resized "
              "crop of 25-100 % of the area at the model's input size, then a left-right "
              "flip half the time), each a row after its image's own; val and test images "
              "get none. The store records each row's image (/source_index) and view "
              "(/view, 0 = the image itself).")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the views: each view is drawn from (seed, image path, view "
              "number), so resumed and torchrun-sharded runs store the same views.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out made with other settings.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr; skipped files are still listed there.")
def extract(source: str, layers: tuple[str, ...], quiet: bool, **options: Any) -> None:
    """Extract CNN codes of SOURCE into an HDF5 code store; print the store's path.

    SOURCE is an image folder (class sub-folders, optionally under train/val/test), a CSV
    manifest (path,label[,split]), a folder with MNIST-style idx files, WebDataset tar
    shards ('shards/train-{000..009}.tar', several joined by '::'; needs the tar extra), or
    the built-in sklearn:digits (1,797 real 8x8 digits shipped with scikit-learn). The
    same command twice is a cache hit; a killed run resumes where it stopped. stdout carries only the
    store's path; the summary and every skipped file go to stderr.

    \b
    Sharded over N processes or GPUs (one store, as one process would write it):
      torchrun --nproc-per-node N -m cnncodes extract SOURCE ...
    """
    from ..extraction.extract import ExtractConfig
    from ..extraction.extract import extract as run_extract
    from ..extraction.shards import shard_from_env

    config = ExtractConfig(source=source, layers=tuple(layers), progress=not quiet, **options)
    result = run_extract(config)
    if shard_from_env().rank != 0:  # under torchrun, rank 0 speaks for the job
        return
    status = "cache hit (no model run)" if result.cached else (
        f"{result.n_images} images in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s)"
        + (f", resumed with {result.resumed_from} images already done" if result.resumed_from else "")
        + (f"; {result.n_views} of the rows are augmented views" if result.n_views else "")
    )
    if not quiet:
        click.echo(f"{result.path}: {status}", err=True)
        for name in result.layers:
            click.echo(f"  layer {name}: {result.n_images} x {result.dims[name]}", err=True)
    if result.skipped:  # never silent, even with --quiet
        click.echo(f"  skipped {len(result.skipped)} file(s):", err=True)
        for path, reason in result.skipped:
            click.echo(f"    {path}: {reason}", err=True)
    for note in result.warnings:
        click.echo(f"  warning: {note}", err=True)
    click.echo(str(result.path))


@click.command()
@click.argument("store", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Plain text for reading, or one JSON object.")
def info(store: str, fmt: str) -> None:
    """Show what is inside a code store: source, backbone, layers, splits, skipped images."""
    import json

    from ..data.store import CodeStore

    with CodeStore(store) as codes:
        summary = codes.summary()
    if fmt == "json":
        click.echo(json.dumps(summary, default=str, ensure_ascii=False))
        return
    for key, value in summary.items():
        if key == "layers":
            for layer in value:
                spec = f" (as --layer {layer['spec']})" if layer["spec"] is not None else ""
                click.echo(f"{'layer':>18}: {layer['name']}{spec}: {layer['rows']} x {layer['dim']}")
        elif key == "views":
            if value is not None:
                click.echo(f"{key:>18}: {value['count']} per image ({value['policy']}, seed "
                           f"{value['seed']}): {value['augmented_rows']} augmented rows of "
                           f"{value['images']} images; {value['augment']}")
        elif key in ("classes", "split"):
            if value is not None:
                click.echo(f"{key:>18}: " + ", ".join(f"{k} {n}" for k, n in value.items()))
        elif key == "skipped":
            for row in value:
                click.echo(f"{'skipped':>18}: {row['path']}: {row['reason']}")
        else:
            click.echo(f"{key:>18}: {value}")


@click.group(cls=CnnCodesGroup)
def cache() -> None:
    """What the cache root holds (stores, runs, compare, sweeps, explain), and pruning it.

    \b
    The root is ./cache, or $CNNCODES_CACHE; every default output goes under it.
    """


@cache.command("list")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
def cache_list(fmt: str) -> None:
    """One row per entry: kind, name, status (ok, incomplete, stale, in use), size."""
    import pandas as pd

    from ..cache import CacheEntry, list_cache
    from ..paths import cache_root
    from ..studies.report import format_table

    entries = list_cache()
    columns = list(CacheEntry.__dataclass_fields__)
    click.echo(format_table(pd.DataFrame([e.as_row() for e in entries], columns=columns), fmt))
    total = sum(e.size_mib for e in entries)
    click.echo(f"{len(entries)} entries, {total:,.1f} MiB under {cache_root()}", err=True)


@cache.command("prune")
@click.option("--all", "everything", is_flag=True,
              help="Remove every entry not in use, not only incomplete and stale ones.")
@click.option("--older-than", "older_than_days", type=float,
              help="Only entries not modified for this many days.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
def cache_prune(everything: bool, older_than_days: float | None, dry_run: bool, fmt: str) -> None:
    """Remove incomplete extractions and stores or runs this cnncodes refuses (stale).

    Entries that a running command holds are never removed. stdout lists what was removed.
    """
    import pandas as pd

    from ..cache import CacheEntry, prune_cache
    from ..studies.report import format_table

    removed = prune_cache(everything=everything, older_than_days=older_than_days,
                          dry_run=dry_run)
    columns = list(CacheEntry.__dataclass_fields__)
    click.echo(format_table(pd.DataFrame([e.as_row() for e in removed], columns=columns), fmt))
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} entries, {sum(e.size_mib for e in removed):,.1f} MiB",
               err=True)
