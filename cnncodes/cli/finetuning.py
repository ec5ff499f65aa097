"""Fine-tuning in PyTorch: strategies 3 and 4."""

from __future__ import annotations

from typing import Any

import click

from .options import (
    TABLE_FORMATS,
    check_out,
    device_option,
    head_option,
    model_option,
    selection_options,
    unfreeze_option,
    validation_options,
    weights_option,
)


@click.command()
@click.argument("source", type=click.Path())
@click.option("--strategy", "-s", type=click.Choice(["3", "4"]), default="3", show_default=True,
              help="3: frozen body, new head. 4: fine-tune later layers + MLP head.")
@model_option
@weights_option()
@unfreeze_option
@head_option
@click.option("--replace-fc", default=1, show_default=True,
              help="Rebuild the last N linear layers (AlexNet exercise: 2).")
@click.option("--epochs", "-e", default=5, show_default=True,
              help="Most epochs (early stopping may end sooner); with --sizes, in all, shared "
              "out over the sizes evenly, the remainder to the largest (7 over 3 sizes: 2,2,3).")
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per step.")
@click.option("--lr", type=float, help="Head learning rate (default 1e-3 AdamW, 1e-2 SGD; "
              "1e-2 AdamW for strategy 3's linear head).")
@click.option("--lr-decay", default=0.3, show_default=True,
              help="Each earlier layer group trains at this times the rate of the one above.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "onecycle", "constant"]), default="cosine",
              show_default=True)
@click.option("--weight-decay", default=0.01, show_default=True)
@click.option("--dropout", default=0.2, show_default=True, help="Dropout inside the MLP head.")
@click.option("--augment/--no-augment", default=None,
              help="Random resized crop + flip on training images (default: on for strategy "
              "4; off for 3, whose head then trains on the frozen codes, computed once).")
@click.option("--patience", default=3, show_default=True,
              help="Early stopping: epochs without a better val score (0: off).")
@selection_options(
    "What the best epoch (and early stopping) maximises on val.",
    "balanced: cross-entropy weighted by n/(classes*count), for imbalanced data.",
)
@click.option("--progressive", is_flag=True, help="Strategy 4: unfreeze one layer group per epoch.")
@click.option("--sizes", "sizes_text", metavar="S1,S2,...",
              help="Progressive resizing: train at these image sizes in turn, ascending, e.g. "
              "128,160,224, the same model, optimizer and schedule carried on. Validation, "
              "test and predictions stay at the model's own size; the best epoch is chosen "
              "over all stages; --patience stops only in the last stage.")
@click.option("--freeze-bn/--train-bn", default=True, show_default=True,
              help="Keep BatchNorm statistics of trainable layers as pretrained.")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--out", "-o", type=click.Path(), help="Run folder (default: cache/runs/<source>-<model>-strategy<N>-<time>).")
@device_option
@click.option("--amp/--no-amp", default=None, help="Mixed precision (default: on for CUDA).")
@validation_options("the best epoch (early stopping)")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True,
              help="Format of the result row printed on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr; only the result row.")
def finetune(source: str, strategy: str, head: str | None, sizes_text: str | None, fmt: str,
             quiet: bool, **options: Any) -> None:
    """Fine-tune a pretrained backbone on SOURCE (strategy 3 or 4).

    \b
    cnncodes finetune DATA --strategy 3
    cnncodes finetune DATA --strategy 4 --unfreeze-from blocks.5 --head 512,256 --epochs 10
    cnncodes finetune DATA --model alexnet --replace-fc 2
    cnncodes finetune DATA --strategy 4 --sizes 128,160,224 --epochs 6
    """
    from ..finetuning.finetune import FinetuneConfig, parse_head, parse_sizes
    from ..finetuning.finetune import finetune as run_finetune
    from ..studies.report import format_table, run_table

    check_out(options.get("out"), folder=True)
    config = FinetuneConfig(
        source=source, strategy=int(strategy), head=parse_head(head),
        sizes=parse_sizes(sizes_text), progress=not quiet, **options
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
        if config.sizes:
            for number, stage in enumerate(result.stages, start=1):
                click.echo(_stage_line(number, stage), err=True)
    for path, reason in result.skipped:
        click.echo(f"  skipped {path}: {reason}", err=True)
    click.echo(format_table(run_table([result.run_dir]), fmt))


def _stage_line(number: int, stage: dict[str, Any]) -> str:
    """One stage of progressive resizing, for the summary on stderr."""
    if not stage["epochs_run"]:
        return f"  stage {number}: {stage['size']}px, not run"
    first, last = stage["first_epoch"], stage["last_epoch"]
    epochs = f"epoch {first}" if first == last else f"epochs {first}-{last}"
    return (f"  stage {number}: {stage['size']}px, {epochs}, best val accuracy "
            f"{stage['val_accuracy']:.3f} (epoch {stage['best_epoch']}), {stage['seconds']:.0f}s")
