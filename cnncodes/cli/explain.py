"""``cnncodes explain``: saliency, Grad-CAM, activation grids and first-layer filters."""

from __future__ import annotations

from typing import Any

import click

from .group import CnnCodesGroup
from .options import (
    F,
    check_out,
)


@click.group(cls=CnnCodesGroup)
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
        click.option("--out", "-o", default=None, type=click.Path(),
                     help="Folder for the PNGs (default: cache/explain, under $CNNCODES_CACHE)."),
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
    from ..explainers.explain import ExplainConfig
    from ..explainers.explain import explain as run_explain
    from ..nets.defaults import DEFAULT_MODEL

    if options.get("model") is None:
        options["model"] = DEFAULT_MODEL
    check_out(options.get("out"), folder=True)
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
