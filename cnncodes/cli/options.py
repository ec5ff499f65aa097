"""Options that several commands share, defined once, and the output-path check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

F = Callable[..., Any]

TABLE_FORMATS = ("md", "csv", "json", "latex", "html")
"""Every table a command prints on stdout comes in these formats."""


def check_out(out: str | None, *, folder: bool) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    if out is not None:
        from ..paths import check_output_path

        check_output_path(out, folder=folder)



def model_option(function: F) -> F:
    from ..nets.defaults import DEFAULT_MODEL

    return click.option(
        "--model", "-m", default=DEFAULT_MODEL, show_default=True,
        help="Backbone: efficientnet_lite0 (offline), efficientnet_lite1 or _lite2 (offline "
        "with the [ladder] extra), a torchvision model name, or timm:NAME. See 'cnncodes models'.",
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


def validation_options(chosen: str) -> Callable[[F], F]:
    """``--val-fraction`` and ``--seed`` for commands that hold out validation images when
    the source has no val split; ``chosen`` says what is chosen on them."""

    def decorate(function: F) -> F:
        function = click.option(
            "--seed", default=0, show_default=True,
            help="Makes runs repeatable; also picks the held-out validation images when "
            "SOURCE has no val split.",
        )(function)
        return click.option(
            "--val-fraction", default=0.2, show_default=True,
            help=f"When SOURCE has no val split: share of each class's training images held "
            f"out to choose {chosen}; seeded and stratified, the same images that 'compare' "
            "and 'finetune' hold out. Test images are never used to choose.",
        )(function)

    return decorate


def selection_options(scoring_help: str, class_weight_help: str) -> Callable[[F], F]:
    """``--scoring`` and ``--class-weight``: what selection maximises, and class weights."""
    from ..scoring import CLASS_WEIGHTS, SCORINGS

    def decorate(function: F) -> F:
        function = click.option(
            "--class-weight", type=click.Choice(CLASS_WEIGHTS), default="none",
            show_default=True, help=class_weight_help,
        )(function)
        return click.option(
            "--scoring", type=click.Choice(SCORINGS), default="accuracy", show_default=True,
            help=scoring_help,
        )(function)

    return decorate

