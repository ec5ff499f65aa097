"""``cnncodes explain``: saliency, Grad-CAM, activation grids and first-layer filters."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import click

from .group import CnnCodesGroup
from .options import (
    F,
    check_out,
)


@click.group(cls=CnnCodesGroup)
def explain() -> None:
    """What the network looks at: saliency, Grad-CAM, integrated gradients, activations, filters.

    \b
    Each command writes titled PNGs with colour bars into --out and prints their paths.
    The class explained is the model's prediction unless --target names one; with --run
    the model and classes are those of a run: 'cnncodes finetune', or 'cnncodes fit'
    (backbone, pooling, scaler and linear probe as one network). 'maximize' and 'dream'
    draw what a layer responds to instead (maximize adds a CSV of the activations).
    """


def explain_options(function: F) -> F:
    """Options every ``explain`` command shares: the network, the run and the output folder."""
    for option in reversed([
        click.option("--model", "-m", default=None,
                     help="Backbone (default efficientnet_lite0); see 'cnncodes models'."),
        click.option("--weights", "-w", default="DEFAULT", show_default=True,
                     help="Weights enum name, 'none' for random, or a state-dict path."),
        click.option("--run", "-r", type=click.Path(),
                     help="A run folder ('cnncodes fit' with a linear or MLP probe, or "
                     "'cnncodes finetune'): explain its model and its classes."),
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


def _echo_paths(run: Callable[[Any], list[Any]], config: Callable[..., Any],
                options: dict[str, Any]) -> None:
    """Run an explainer with ``config(**options)`` (the default model when none is given,
    the output folder checked first) and print the paths it wrote, one per line."""
    from ..nets.defaults import DEFAULT_MODEL

    options["model"] = options.get("model") or DEFAULT_MODEL
    check_out(options.get("out"), folder=True)
    for path in run(config(**options)):
        click.echo(str(path))


def _explain(kind: str, images: tuple[str, ...], **options: Any) -> None:
    from ..explainers.explain import ExplainConfig
    from ..explainers.explain import explain as run_explain

    _echo_paths(run_explain, partial(ExplainConfig, kind=kind, images=images), options)


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


@explain.command("integrated-gradients")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@explain_options
@target_option
@click.option("--steps", default=64, show_default=True, type=click.IntRange(min=1),
              help="Intervals along the path from the baseline (steps + 1 forward passes).")
@click.option("--baseline", type=click.Choice(["black", "mean", "noise"]), default="black",
              show_default=True,
              help="Start of the path: black pixels, the normalisation's mean colour, or "
              "uniform noise pixels from --seed.")
@click.option("--seed", default=0, show_default=True, help="Seed of the noise baseline.")
def explain_integrated_gradients(images: tuple[str, ...], **options: Any) -> None:
    """Integrated gradients of each IMAGE (Sundararajan 2017): |attribution|, summed over RGB."""
    _explain("integrated-gradients", images, **options)


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


def _optimisation_options(function: F) -> F:
    """Seed, jitter, size and quietness: shared by ``maximize`` and ``dream``."""
    for option in reversed([
        click.option("--seed", default=0, show_default=True, type=int,
                     help="Seeds the random shifts (and maximize's starting noise): same seed, "
                     "same images."),
        click.option("--jitter", default=None, type=click.IntRange(min=0),
                     help="Largest random shift per step in pixels (0: none) [default: 8 for "
                     "maximize, 16 for dream]."),
        click.option("--quiet", "-q", is_flag=True,
                     help="No progress bar and no summary on stderr, only warnings."),
    ]):
        function = option(function)
    return function


@explain.command("maximize")
@explain_options
@click.option("--layer", "-l", default=None,
              help="Layer whose channels to maximise: FX node name, index or container, as "
              "'cnncodes layers MODEL' shows; default the last conv map.")
@click.option("--channels", "-c", default=None,
              help="Channels of --layer, one image each: '0-7' (the default), '3', '1,4,9-12'.")
@click.option("--class", "classes", multiple=True,
              help="Maximise this class's logit instead (name such as 'tabby cat', or index); "
              "repeat for several.")
@click.option("--steps", default=128, show_default=True, type=click.IntRange(min=1),
              help="Adam steps.")
@click.option("--lr", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate on the image's Fourier coefficients.")
@click.option("--size", default=None, type=click.IntRange(min=16),
              help="Image side in pixels [default: the network's input size].")
@_optimisation_options
def explain_maximize(classes: tuple[str, ...], jitter: int | None, quiet: bool,
                     **options: Any) -> None:
    """Images that excite each channel of a layer (or a class logit) the most.

    \b
    Starts from seeded noise and follows the gradient of each channel's mean activation
    (or the logit) with respect to the input, through the network's own normalisation.
    Regularised as in Olah et al. (2017): the image is parametrised by its 1/f-scaled
    Fourier spectrum in decorrelated colour, and each step jitters it (shift, +-5 % scale).
    Writes a PNG grid (one tile per channel, titled start -> final activation) and a CSV
    beside it (layer, unit, label, start, final, ratio) and prints both paths.

    \b
    Example: cnncodes explain maximize --layer blocks.5.0.bn1 --channels 0-7
             cnncodes explain maximize --class 'tabby cat' --class bee
    """
    from ..explainers.maximize import MaximizeConfig, maximize

    if jitter is not None:  # else MaximizeConfig's default
        options["jitter"] = jitter
    _echo_paths(maximize, partial(MaximizeConfig, classes=tuple(classes), progress=not quiet),
                options)


@explain.command("dream")
@click.argument("image", type=click.Path())
@explain_options
@click.option("--layer", "-l", required=True,
              help="Layer to amplify: FX node name, index or container (e.g. blocks.3 of "
              "efficientnet_lite0, layer3 of resnet18); see 'cnncodes layers MODEL'.")
@click.option("--octaves", default=3, show_default=True, type=click.IntRange(min=1),
              help="Scales to process, smallest first; detail carries to the next.")
@click.option("--octave-scale", default=1.4, show_default=True,
              type=click.FloatRange(min=1, min_open=True), help="Size ratio between octaves.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=1),
              help="Gradient-ascent steps per octave.")
@click.option("--lr", default=0.02, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Step length in pixel units (0-1), after dividing the gradient by its mean "
              "absolute value.")
@click.option("--size", default=None, type=click.IntRange(min=16),
              help="Longer side of the processed photo [default: 1.5 x the network's input size].")
@_optimisation_options
def explain_dream(image: str, jitter: int | None, quiet: bool, **options: Any) -> None:
    """DeepDream: amplify what a layer sees in IMAGE (Mordvintsev et al. 2015).

    \b
    Gradient ascent on the mean square of the layer's activations, over a few octaves
    (successive scales) with random shifts. Writes the dreamed image and a figure with the
    photo beside it, prints both paths, and reports the layer's activation RMS before and
    after on stderr.
    """
    from ..explainers.maximize import DreamConfig, dream

    if jitter is not None:  # else DreamConfig's default
        options["jitter"] = jitter
    _echo_paths(dream, partial(DreamConfig, image=image, progress=not quiet), options)
