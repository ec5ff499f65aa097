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
        except OSError as error:
            # Disk full, permissions, a vanished folder: one line; finished parts are kept.
            where = f": {error.filename}" if getattr(error, "filename", None) else ""
            click.echo(
                f"Error: I/O error ({error.strerror or error}){where}; nothing was written "
                "under the final name. Fix it and run the same command again to resume.",
                err=True,
            )
            sys.exit(1)
        except KeyboardInterrupt:
            # Extraction keeps every finished part file; the same command picks them up.
            click.echo(
                "\nInterrupted. Finished work is kept: run the same command again to resume.",
                err=True,
            )
            sys.exit(130)


def _check_out(out: str | None, *, folder: bool) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if out is not None:
        from .paths import check_output_path

        check_output_path(out, folder=folder)


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
@click.option("--workers", "-j", type=int, help="Decoding processes (default: spare cores on GPU; 0 on a CPU of 2 cores).")
@device_option
@click.option("--amp/--no-amp", default=None, help="Mixed precision (default: on for CUDA).")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--root", type=click.Path(file_okay=False),
              help="Folder that relative paths in a CSV manifest start from (default: the "
              "manifest's folder).")
@click.option("--max-pixels", type=int,
              help="Skip images with more pixels than this as decompression bombs "
              "(default 178,956,970, PIL's limit).")
@click.option("--part-size", default=512, show_default=True, help="Images per crash-safe part file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out made with other settings.")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no summary on stderr.")
def extract(source: str, layers: tuple[str, ...], quiet: bool, **options: Any) -> None:
    """Extract CNN codes of SOURCE into an HDF5 code store; print the store's path.

    SOURCE is an image folder (class sub-folders, optionally under train/val/test), a CSV
    manifest (path,label[,split]), a folder with MNIST-style idx files, or the built-in
    sklearn:digits (1,797 real 8x8 digits shipped with scikit-learn). The same command
    twice is a cache hit; a killed run resumes where it stopped. stdout carries only the
    store's path; the summary and every skipped file go to stderr.
    """
    from .extract import ExtractConfig
    from .extract import extract as run_extract

    config = ExtractConfig(source=source, layers=tuple(layers), progress=not quiet, **options)
    result = run_extract(config)
    status = "cache hit (no model run)" if result.cached else (
        f"{result.n_images} images in {result.seconds:.1f}s ({result.images_per_second:.1f} img/s)"
        + (f", resumed at image {result.resumed_from}" if result.resumed_from else "")
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


@main.command()
@click.argument("store", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Plain text for reading, or one JSON object.")
def info(store: str, fmt: str) -> None:
    """Show what is inside a code store: source, backbone, layers, splits, skipped images."""
    import collections
    import json

    from .store import CodeStore

    with CodeStore(store) as codes:
        attrs = codes.attrs
        classes = codes.classes
        labels = collections.Counter(codes.labels.tolist())
        split = codes.split
        summary: dict[str, Any] = {
            key: attrs.get(key, "") for key in (
                "backbone", "weights", "weights_sha256", "pooling", "preprocessing", "source",
                "source_kind", "source_fingerprint", "precision", "cnncodes_version", "created",
            )
        }
        specs = attrs.get("layer_specs", [])
        summary["layers"] = [
            {"name": name, "spec": specs[i] if i < len(specs) else None, "rows": len(codes),
             "dim": codes.dim(name)}
            for i, name in enumerate(codes.layers)
        ]
        summary["classes"] = {
            (classes[i] if 0 <= i < len(classes) else "unlabeled"): n
            for i, n in sorted(labels.items())
        }
        summary["split"] = dict(collections.Counter(split.tolist())) if split is not None else None
        summary["skipped"] = [{"path": p, "reason": r} for p, r in codes.skipped]
    if fmt == "json":
        click.echo(json.dumps(summary, default=str, ensure_ascii=False))
        return
    for key, value in summary.items():
        if key == "layers":
            for layer in value:
                spec = f" (as --layer {layer['spec']})" if layer["spec"] is not None else ""
                click.echo(f"{'layer':>18}: {layer['name']}{spec}: {layer['rows']} x {layer['dim']}")
        elif key in ("classes", "split"):
            if value is not None:
                click.echo(f"{key:>18}: " + ", ".join(f"{k} {n}" for k, n in value.items()))
        elif key == "skipped":
            for row in value:
                click.echo(f"{'skipped':>18}: {row['path']}: {row['reason']}")
        else:
            click.echo(f"{key:>18}: {value}")


# --- fit, predict, report: classical pipelines on the codes -------------------------------

TABLE_FORMATS = ("md", "csv", "json", "latex", "html")


@main.command()
@click.argument("store", type=click.Path())
@click.option("--clf", "-c", default="logreg", show_default=True,
              help="Pipeline: logreg, linear_svm, rbf_svm, mlp, knn, or a path to your own "
              ".py file defining build(**params) and search_space.")
@click.option("--layer", "-l", default=None,
              help="Store layer: node name or the spec used at extraction (-2); default the first.")
@click.option("--cv", default=5, show_default=True,
              help="Stratified CV folds, used when the store has no val split.")
@click.option("--pca", type=int, help="Insert PCA to N components before the classifier.")
@click.option("--l2norm", is_flag=True, help="L2-normalise every code first.")
@click.option("--refit-on", type=click.Choice(["train", "train+val"]), default="train",
              show_default=True, help="Rows the final model is fitted on after selection.")
@click.option("--seed", default=0, show_default=True, help="Random state of folds and estimators.")
@click.option("--out", "-o", type=click.Path(), help="Run folder (default: runs/<store>-<clf>-<layer>).")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True,
              help="Format of the result row printed on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr; only the result row.")
def fit(store: str, quiet: bool, fmt: str, **options: Any) -> None:
    """Train, tune (C on a log grid), evaluate and save a pipeline on the codes of STORE.

    stdout carries the result row (--format); progress and the run folder go to stderr.
    """
    import pandas as pd

    from .fit import fit_pipeline
    from .report import format_table

    _check_out(options.get("out"), folder=True)
    result = fit_pipeline(store, progress=not quiet, **options)
    if not quiet:
        click.echo(f"saved {result.model_path}", err=True)
    click.echo(format_table(pd.DataFrame([result.row]), fmt))


@main.command()
@click.argument("model", type=click.Path())
@click.argument("source", type=click.Path())
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Also write the predictions to this CSV file.")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="csv", show_default=True,
              help="Format of the predictions printed on stdout.")
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per forward pass.")
@device_option
@click.option("--trust", "trusted", multiple=True,
              help="A type name in the model file to load although it is not one of the "
              "shipped pipelines' (only for files you made yourself). Repeatable.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr.")
def predict(model: str, source: str, out: str | None, fmt: str, quiet: bool,
            **options: Any) -> None:
    """Predict with run MODEL on SOURCE: images (extracted like the training codes) or a store.

    stdout carries one row per image (--format); skipped files are listed on stderr.
    """
    from .predict import predict as run_predict
    from .report import format_table

    if not options["trusted"]:
        options.pop("trusted")
    _check_out(out, folder=False)
    frame = run_predict(model, source, out, progress=not quiet, **options)
    skipped = frame.attrs.get("skipped", [])
    click.echo(format_table(frame, fmt, digits=6), nl=fmt != "csv")
    if out is not None and not quiet:
        click.echo(f"{out}: {len(frame)} predictions", err=True)
    for path, reason in skipped:
        click.echo(f"  skipped {path}: {reason}", err=True)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--per-class", is_flag=True, help="Add precision/recall/F1 per class.")
@click.option("--confusion", is_flag=True, help="Add a confusion matrix per run.")
@click.option("--split", help="Held-out split for per-class tables (default: test, val or cv).")
@click.option("--out", "-o", type=click.Path(), help="Also write the report to this file.")
def report(runs: tuple[str, ...], fmt: str, out: str | None, **options: Any) -> None:
    """One comparison table of the fitted RUNS (run folders), in Markdown, CSV, LaTeX or HTML."""
    from pathlib import Path

    from .report import report as render

    _check_out(out, folder=False)
    text = render(list(runs), fmt=fmt, **options)
    click.echo(text)
    if out is not None:
        Path(out).write_text(text + "\n", encoding="utf-8")


# --- fine-tuning (strategies 3 and 4) and the four-strategy comparison ----------------------


def head_option(function: F) -> F:
    return click.option(
        "--head", default=None,
        help="Hidden sizes of a new MLP head, e.g. 512,256; 'none' for one linear layer "
        "(default: linear for strategy 3, 256 for strategy 4).",
    )(function)


def unfreeze_option(function: F) -> F:
    return click.option(
        "--unfreeze-from", default=None,
        help="Strategy 4: first layer that trains (node name, index as for --layer, or a "
        "module such as layer4 / blocks.5). Default: the last two layer groups.",
    )(function)


@main.command()
@click.argument("source", type=click.Path())
@click.option("--strategy", "-s", type=click.Choice(["3", "4"]), default="3", show_default=True,
              help="3: frozen body, new head. 4: fine-tune later layers + MLP head.")
@model_option
@weights_option()
@unfreeze_option
@head_option
@click.option("--replace-fc", default=1, show_default=True,
              help="Rebuild the last N linear layers (AlexNet exercise: 2).")
@click.option("--epochs", "-e", default=5, show_default=True, help="Most epochs (early stopping may end sooner).")
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per step.")
@click.option("--lr", type=float, help="Head learning rate (default 1e-3 AdamW, 1e-2 SGD).")
@click.option("--lr-decay", default=0.3, show_default=True,
              help="Each earlier layer group trains at this times the rate of the one above.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default="cosine",
              show_default=True)
@click.option("--weight-decay", default=0.01, show_default=True)
@click.option("--dropout", default=0.2, show_default=True, help="Dropout inside the MLP head.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random resized crop + flip on training images.")
@click.option("--patience", default=3, show_default=True,
              help="Early stopping: epochs without better val accuracy (0: off).")
@click.option("--progressive", is_flag=True, help="Strategy 4: unfreeze one layer group per epoch.")
@click.option("--freeze-bn/--train-bn", default=True, show_default=True,
              help="Keep BatchNorm statistics of trainable layers as pretrained.")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--out", "-o", type=click.Path(), help="Run folder (default: runs/<source>-<model>-strategy<N>-<time>).")
@device_option
@click.option("--amp/--no-amp", default=None, help="Mixed precision (default: on for CUDA).")
@click.option("--val-fraction", default=0.2, show_default=True,
              help="When SOURCE has no val split: share of each class's training images held "
              "out for early stopping (the images 'cnncodes compare' holds out with the same "
              "--seed).")
@click.option("--seed", default=0, show_default=True,
              help="Makes CPU runs repeatable; also picks the held-out validation images when "
              "SOURCE has no val split.")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True,
              help="Format of the result row printed on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr; only the result row.")
def finetune(source: str, strategy: str, head: str | None, fmt: str, quiet: bool,
             **options: Any) -> None:
    """Fine-tune a pretrained backbone on SOURCE (strategy 3 or 4).

    \b
    cnncodes finetune DATA --strategy 3
    cnncodes finetune DATA --strategy 4 --unfreeze-from blocks.5 --head 512,256 --epochs 10
    cnncodes finetune DATA --model alexnet --replace-fc 2
    """
    from .finetune import FinetuneConfig, parse_head
    from .finetune import finetune as run_finetune
    from .report import format_table, run_table

    _check_out(options.get("out"), folder=True)
    config = FinetuneConfig(
        source=source, strategy=int(strategy), head=parse_head(head), progress=not quiet, **options
    )
    result = run_finetune(config)
    if not quiet:
        click.echo(f"{result.run_dir}: strategy {result.strategy}, trained {result.trained}", err=True)
        click.echo(
            f"  trainable parameters {result.trainable_params:,} of {result.total_params:,}; "
            f"best epoch {result.best_epoch}/{len(result.history)}; {result.seconds:.0f}s",
            err=True,
        )
        for group in result.groups:
            if group["trainable_params"]:
                click.echo(f"  group {group['group']}: lr {group['lr']:.2e}, "
                           f"{group['trainable_params']:,} params", err=True)
    for path, reason in result.skipped:
        click.echo(f"  skipped {path}: {reason}", err=True)
    click.echo(format_table(run_table([result.run_dir]), fmt))


@main.command()
@click.argument("source", type=click.Path())
@model_option
@weights_option()
@click.option("--clf", "-c", default="logreg", show_default=True, help="Pipeline for strategies 1 and 2.")
@click.option("--layer", "-l", "layers", multiple=True,
              help="Candidate earlier layer for strategy 2 (repeat); default: the last three stages.")
@pool_option
@click.option("--epochs", "-e", default=5, show_default=True, help="Most epochs for strategies 3 and 4.")
@unfreeze_option
@head_option
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per training step.")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--out", "-o", type=click.Path(), help="Folder for runs, table and plot (default: runs/compare-<source>-<time>).")
@device_option
@click.option("--val-fraction", default=0.2, show_default=True,
              help="When SOURCE has no val split: share of each class's training images held "
              "out to choose on (C, the strategy-2 layer, the best epoch), the same images "
              "for all four strategies. Test images are never used to choose.")
@click.option("--seed", default=0, show_default=True,
              help="Random state of every strategy; also picks the held-out validation images "
              "when SOURCE has no val split.")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the table.")
def compare(source: str, layers: tuple[str, ...], head: str | None, fmt: str, quiet: bool,
            **options: Any) -> None:
    """Strategies 1-4 on SOURCE (same split, same backbone): one table and one plot.

    SOURCE needs training images; a val split is used as it is, otherwise --val-fraction
    of each class's training images is held out (seeded) and every strategy chooses on
    that same set. A test split is only scored, never chosen on.
    """
    from .compare import CompareConfig
    from .compare import compare as run_compare
    from .finetune import parse_head
    from .report import format_table

    _check_out(options.get("out"), folder=True)
    config = CompareConfig(
        source=source, layers=tuple(layers) or None, head=parse_head(head),
        progress=not quiet, **options,
    )
    result = run_compare(config)
    click.echo(format_table(result.table, fmt))
    if not quiet:
        for note in result.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(f"runs, compare.csv and curves.png in {result.out}", err=True)


# --- seeing inside the network (explain) and the layer sweep ---------------------------------


@main.group(cls=CnnCodesGroup)
def explain() -> None:
    """What the network looks at: saliency, Grad-CAM, activation grids, first-layer filters.

    \b
    Each command writes titled PNGs with colour bars into --out and prints their paths.
    The class explained is the model's prediction unless --target names one; with --run
    the model and classes are those of a fine-tuned run ('cnncodes finetune').
    """


def explain_options(function: F) -> F:
    """Options every ``explain`` command shares: the network, the run and the output folder."""
    for option in reversed([
        click.option("--model", "-m", default=None,
                     help="Backbone (default efficientnet_lite0); see 'cnncodes models'."),
        click.option("--weights", "-w", default="DEFAULT", show_default=True,
                     help="Weights enum name, 'none' for random, or a state-dict path."),
        click.option("--run", "-r", type=click.Path(),
                     help="A fine-tuned run folder: explain its model and its classes."),
        click.option("--out", "-o", default="explain", show_default=True, type=click.Path(),
                     help="Folder for the PNGs."),
    ]):
        function = option(function)
    return function


def target_option(function: F) -> F:
    return click.option(
        "--target", "-t", default=None,
        help="Class to explain: an index or a name ('bee', 'tiger cat'); default the prediction.",
    )(function)


def explain_layer_option(function: F) -> F:
    return click.option(
        "--layer", "-l", default=None,
        help="Conv layer: FX node name, index (-5) or container (layer4); default the last "
        "conv map. See 'cnncodes layers MODEL'.",
    )(function)


def _explain(kind: str, images: tuple[str, ...], **options: Any) -> None:
    from .backbones import DEFAULT_MODEL
    from .explain import ExplainConfig
    from .explain import explain as run_explain

    if options.get("model") is None:
        options["model"] = DEFAULT_MODEL
    _check_out(options.get("out"), folder=True)
    for path in run_explain(ExplainConfig(kind=kind, images=images, **options)):
        click.echo(str(path))


@explain.command("saliency")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@explain_options
@target_option
def explain_saliency(images: tuple[str, ...], **options: Any) -> None:
    """Saliency of each IMAGE: |d class score / d pixel|, max over colour (Simonyan 2014)."""
    _explain("saliency", images, **options)


@explain.command("gradcam")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@explain_options
@explain_layer_option
@target_option
def explain_gradcam(images: tuple[str, ...], **options: Any) -> None:
    """Grad-CAM heat map of a conv layer over each IMAGE."""
    _explain("gradcam", images, **options)


@explain.command("activations")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@explain_options
@explain_layer_option
@click.option("--top", default=32, show_default=True, help="Channels to show, most active first.")
def explain_activations(images: tuple[str, ...], **options: Any) -> None:
    """Grid of a layer's feature maps for each IMAGE, most active channels first."""
    _explain("activations", images, **options)


@explain.command("filters")
@explain_options
def explain_filters(**options: Any) -> None:
    """The first conv layer's kernels as RGB tiles (e.g. --model alexnet)."""
    _explain("filters", (), **options)


@main.command()
@click.argument("data", type=click.Path())
@click.option("--clf", "-c", default="logreg", show_default=True,
              help="Pipeline fitted on every layer (as for 'cnncodes fit').")
@click.option("--layers", "-l", default="default", show_default=True,
              help="'default' (last 4 stages + penultimate code), 'all' (every stage, the "
              "code and the logits) or a comma-separated list: -2,-5,layer3.")
@model_option
@weights_option()
@pool_option
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--cv", default=5, show_default=True, help="CV folds when there is no val split.")
@click.option("--pca", type=int, help="PCA to N components first (layers with fewer dims: none).")
@click.option("--l2norm", is_flag=True, help="L2-normalise every code first.")
@click.option("--seed", default=0, show_default=True, help="Random state of folds and estimators.")
@click.option("--out", "-o", type=click.Path(),
              help="Folder for sweep.csv/.md/.png and the runs (default: sweeps/<store>-<clf>).")
@click.option("--store", type=click.Path(), help="Code store path (default: the extraction cache).")
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per forward pass.")
@click.option("--workers", "-j", type=int, help="Decoding processes (default: spare cores on GPU; 0 on a CPU of 2 cores).")
@device_option
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the table (on stdout); nothing on stderr.")
def sweep(data: str, fmt: str, quiet: bool, **options: Any) -> None:
    """Accuracy of one pipeline on codes from several layers: the transferability curve.

    DATA is an image source (extracted once, all layers in one pass) or a code store (.h5),
    whose layers are then swept as they are.
    """
    from .report import format_table
    from .sweep import SweepConfig
    from .sweep import sweep as run_sweep

    _check_out(options.get("out"), folder=True)
    result = run_sweep(SweepConfig(source=data, progress=not quiet, **options))
    click.echo(format_table(result.table, fmt))
    if not quiet:
        for path in (result.table_path, result.markdown_path, result.plot_path):
            click.echo(f"wrote {path}", err=True)


if __name__ == "__main__":
    main()
