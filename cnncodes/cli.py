"""The ``cnncodes`` command line: a thin skin over the Python API.

Each command parses options into the library's config object and calls one library
function; no torch or scikit-learn logic lives here. A :class:`CnnCodesError` becomes one
line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .errors import CnnCodesError

F = Callable[..., Any]


class CnnCodesGroup(click.Group):
    """Turns user-input errors into one line and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CnnCodesError as error:
            click.echo(f"Error: {error}", err=True)
            sys.exit(2)


# --- options shared by several commands, defined once -------------------------------------


def model_option(function: F) -> F:
    from .backbones import DEFAULT_MODEL

    return click.option(
        "--model", "-m", default=DEFAULT_MODEL, show_default=True,
        help="Backbone: efficientnet_lite0 (offline), a torchvision model name, or timm:NAME. "
        "See 'cnncodes models'.",
    )(function)


def weights_option(default: str = "DEFAULT") -> Callable[[F], F]:
    return click.option(
        "--weights", "-w", default=default, show_default=True,
        help="Weights enum name (DEFAULT, IMAGENET1K_V1, ...), 'none' for random, or a path "
        "to a state dict (.pth).",
    )


def layer_option(function: F) -> F:
    return click.option(
        "--layer", "-l", "layers", multiple=True, default=("-2",), show_default=True,
        help="Layer to tap: an FX node name or an index into the eval node list (-1 logits, "
        "-2 penultimate code, lower = earlier). Repeat for several layers in one pass.",
    )(function)


def pool_option(function: F) -> F:
    return click.option(
        "--pool", type=click.Choice(["avg", "max", "avgmax", "none"]), default="avg",
        show_default=True, help="How spatial maps become vectors.",
    )(function)


def device_option(function: F) -> F:
    return click.option(
        "--device", default="auto", show_default=True,
        help="auto (CUDA when present), cpu, cuda, cuda:N.",
    )(function)


@click.group(cls=CnnCodesGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnncodes")
def main() -> None:
    """Transfer learning with CNN codes.

    \b
    Typical use:
      cnncodes extract DATA --layer -2        # codes into an HDF5 store under cache/
      cnncodes fit cache/STORE.h5 --clf logreg
    """


@main.command()
def models() -> None:
    """List the backbones and whether their weights are available offline."""
    from .backbones import list_backbones

    rows = list_backbones()
    width = max(len(r.name) for r in rows)
    click.echo(f"{'model':<{width}}  {'family':<11}  {'default weights':<32}  offline")
    for row in rows:
        offline = "yes" if row.offline else "no (downloads on first use)"
        line = f"{row.name:<{width}}  {row.family:<11}  {row.default_weights:<32}  {offline}"
        click.echo(line + (f"  {row.note}" if row.note else ""))
    click.echo("\nAlso: any timm model as timm:NAME; --weights path.pth for your own checkpoint.")


@main.command()
@click.argument("model")
@weights_option(default="none")
@pool_option
def layers(model: str, weights: str, pool: str) -> None:
    """Index, FX node name, output shape and code size of every tap point of MODEL."""
    from .backbones import load_backbone
    from .layers import code_dim, list_layers

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


@main.command()
@click.argument("source", type=click.Path())
@model_option
@weights_option()
@layer_option
@pool_option
@click.option("--out", "-o", type=click.Path(), help="Store path (default: cache/<source>-<model>-<key>.h5).")
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per forward pass.")
@click.option("--workers", "-j", type=int, help="Decoding processes (default: cores - 1).")
@device_option
@click.option("--amp/--no-amp", default=None, help="Mixed precision (default: on for CUDA).")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--part-size", default=512, show_default=True, help="Images per crash-safe part file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out made with other settings.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def extract(source: str, layers: tuple[str, ...], quiet: bool, **options: Any) -> None:
    """Extract CNN codes of SOURCE into an HDF5 code store.

    SOURCE is an image folder (class sub-folders, optionally under train/val/test), a CSV
    manifest (path,label[,split]) or a folder with MNIST-style idx files. The same command
    twice is a cache hit; a killed run resumes where it stopped.
    """
    from .extract import ExtractConfig
    from .extract import extract as run_extract

    config = ExtractConfig(source=source, layers=tuple(layers), progress=not quiet, **options)
    result = run_extract(config)
    status = "cache hit (no model run)" if result.cached else (
        f"{result.n_images} images in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s)"
        + (f", resumed at image {result.resumed_from}" if result.resumed_from else "")
    )
    click.echo(f"{result.path}: {status}")
    for name in result.layers:
        click.echo(f"  layer {name}: {result.n_images} x {result.dims[name]}")
    if result.skipped:
        click.echo(f"  skipped {len(result.skipped)} file(s):")
        for path, reason in result.skipped:
            click.echo(f"    {path}: {reason}")
    for note in result.warnings:
        click.echo(f"  warning: {note}", err=True)


@main.command()
@click.argument("store", type=click.Path())
def info(store: str) -> None:
    """Show what is inside a code store: source, backbone, layers, splits, skipped images."""
    import collections

    from .store import CodeStore

    with CodeStore(store) as codes:
        attrs = codes.attrs
        for key in ("backbone", "weights", "weights_sha256", "pooling", "preprocessing",
                    "source", "source_kind", "source_fingerprint", "precision",
                    "cnncodes_version", "created"):
            click.echo(f"{key:>18}: {attrs.get(key, '')}")
        specs = attrs.get("layer_specs", [])
        for index, name in enumerate(codes.layers):
            spec = f" (as --layer {specs[index]})" if index < len(specs) else ""
            click.echo(f"{'layer':>18}: {name}{spec}: {len(codes)} x {codes.dim(name)}")
        labels = collections.Counter(codes.labels.tolist())
        classes = codes.classes
        click.echo(f"{'classes':>18}: " + ", ".join(
            f"{classes[i] if 0 <= i < len(classes) else 'unlabeled'} {n}" for i, n in sorted(labels.items())
        ))
        split = codes.split
        if split is not None:
            click.echo(f"{'split':>18}: " + ", ".join(
                f"{s} {n}" for s, n in collections.Counter(split.tolist()).items()
            ))
        for path, reason in codes.skipped:
            click.echo(f"{'skipped':>18}: {path}: {reason}")
