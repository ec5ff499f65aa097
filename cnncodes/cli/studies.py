"""Studies over many fits: the four-strategy comparison and the layer sweep."""

from __future__ import annotations

from typing import Any

import click

from .options import (
    TABLE_FORMATS,
    check_out,
    device_option,
    head_option,
    model_option,
    pool_option,
    selection_options,
    unfreeze_option,
    validation_options,
    weights_option,
)


@click.command()
@click.argument("source", type=click.Path())
@model_option
@weights_option()
@click.option("--clf", "-c", default="logreg", show_default=True, help="Pipeline for strategies 1 and 2.")
@click.option("--layer", "-l", "layers", multiple=True,
              help="Candidate earlier layer for strategy 2 (repeat); default: the last three stages.")
@pool_option
@click.option("--epochs", "-e", default=5, show_default=True, help="Most epochs for strategies 3 and 4.")
@click.option("--lr", type=float,
              help="Head learning rate of strategies 3 and 4 (default: as 'cnncodes finetune').")
@click.option("--augment/--no-augment", default=None,
              help="Random resized crop + flip for strategies 3 and 4 (default: off for 3, "
              "whose head then trains on the frozen codes as 1 does; on for 4).")
@click.option("--patience", default=3, show_default=True,
              help="Early stopping of 3 and 4: epochs without a better val score (0: off).")
@selection_options(
    "What every selection maximises on val: C of 1-2, the layer of 2, the "
    "best epoch of 3-4.",
    "balanced: weigh classes by n/(classes*count) in every strategy's loss "
    "(sklearn class_weight, weighted cross-entropy); for imbalanced data.",
)
@unfreeze_option
@head_option
@click.option("--batch-size", "-b", default=32, show_default=True, help="Images per training step.")
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--out", "-o", type=click.Path(), help="Folder for runs, table and plot (default: cache/compare/<source>-<time>).")
@device_option
@validation_options("C, the strategy-2 layer and the best epoch (one set for all four)")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the table.")
def compare(source: str, layers: tuple[str, ...], head: str | None, fmt: str, quiet: bool,
            **options: Any) -> None:
    """Strategies 1-4 on SOURCE (same split, same backbone): one table and one plot.

    SOURCE needs training images; a val split is used as it is, otherwise --val-fraction
    of each class's training images is held out (seeded) and every strategy chooses on
    that same set. A test split is only scored, never chosen on.

    Each accuracy comes with n and a 95 % Wilson interval; vs_best marks the rows whose
    accuracy differs from the best row's (exact McNemar, p < 0.05, on the same test
    images, or val without test). Rows 3 and 4 give their epoch budget, best epoch and
    "not converged" when the best epoch was the last.
    """
    from ..finetuning.finetune import parse_head
    from ..studies.compare import CompareConfig
    from ..studies.compare import compare as run_compare
    from ..studies.report import format_table

    check_out(options.get("out"), folder=True)
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



@click.command()
@click.argument("data", type=click.Path())
@click.option("--clf", "-c", default="logreg", show_default=True,
              help="Pipeline fitted on every layer (as for 'cnncodes fit').")
@click.option("--layer", "-l", "layer", multiple=True,
              help="Layer to sweep, repeatable; also a comma list (-2,-5,layer3), 'default' "
              "(last 4 stages + penultimate code, the default) or 'all' (every stage, the "
              "code and the logits).")
@click.option("--layers", "layers_alias", multiple=True, hidden=True)
@model_option
@weights_option()
@pool_option
@click.option("--limit", type=int, help="Only the first N images of each split.")
@click.option("--cv", default=5, show_default=True, help="CV folds when there is no val split.")
@click.option("--pca", type=int, help="PCA to N components first (layers with fewer dims: none).")
@click.option("--l2norm", is_flag=True, help="L2-normalise every code first.")
@click.option("--seed", default=0, show_default=True, help="Random state of folds and estimators.")
@click.option("--out", "-o", type=click.Path(),
              help="Folder for sweep.csv/.md/.png and the runs (default: cache/sweeps/<store>-<clf>).")
@click.option("--store", type=click.Path(), help="Code store path (default: the extraction cache).")
@click.option("--batch-size", "-b", type=int, help="Images per forward pass (default: 8 on a CPU, 32 on CUDA; measured in bench/).")
@click.option("--workers", "-j", type=int, help="Decoding processes (default: spare cores on GPU; 0 on a CPU of 2 cores).")
@device_option
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the table (on stdout); nothing on stderr.")
def sweep(data: str, layer: tuple[str, ...], layers_alias: tuple[str, ...], fmt: str,
          quiet: bool, **options: Any) -> None:
    """Accuracy of one pipeline on codes from several layers: the transferability curve.

    DATA is an image source (extracted once, all layers in one pass) or a code store (.h5),
    whose layers are then swept as they are.
    """
    from ..studies.report import format_table
    from ..studies.sweep import SweepConfig
    from ..studies.sweep import sweep as run_sweep

    check_out(options.get("out"), folder=True)
    specs = [s.strip() for text in (*layer, *layers_alias) for s in text.split(",") if s.strip()]
    keywords = [s for s in specs if s.lower() in ("default", "all")]
    if keywords and len(specs) > 1:
        raise click.UsageError(f"--layer {keywords[0]} cannot be combined with other layers.")
    chosen = keywords[0].lower() if keywords else (",".join(specs) or "default")
    result = run_sweep(SweepConfig(source=data, layers=chosen, progress=not quiet, **options))
    click.echo(format_table(result.table, fmt))
    if not quiet:
        for path in (result.table_path, result.markdown_path, result.plot_path):
            click.echo(f"wrote {path}", err=True)


@click.command()
@click.argument("data", type=click.Path())
@model_option
@weights_option()
@pool_option
@click.option("--layer", "-l", "layers", multiple=True,
              help="Earlier layer to probe against the penultimate code (repeat); default: "
              "those 'compare' tries for strategy 2.")
@click.option("--limit", type=int,
              help="The data you will train on (as 'compare --limit'): images per class are "
              "counted in its first N images of each split.")
@click.option("--sample", default=400, show_default=True,
              help="Most images of each split extracted for the probe (non-test ones probed).")
@click.option("--folds", default=5, show_default=True, help="Cross-validation folds of the probe.")
@click.option("--large-per-class", default=1000, show_default=True,
              help="Median training images per class from which data counts as large.")
@click.option("--min-confidence", default=0.5, show_default=True,
              help="Mean ImageNet top-1 probability below which data counts as different.")
@click.option("--margin", default=0.02, show_default=True,
              help="Probe-accuracy lead of an earlier layer over the penultimate code that "
              "also makes data count as different.")
@device_option
@click.option("--seed", default=0, show_default=True, help="Folds of the probe.")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the table (on stdout); nothing on stderr.")
def advise(data: str, layers: tuple[str, ...], fmt: str, quiet: bool, **options: Any) -> None:
    """Which strategy (1-4) and layer to try first on DATA, from a small sample.

    Counts training images per class and measures the distance from the backbone's
    training domain (its ImageNet confidence; how earlier vs penultimate codes separate a
    stratified sample under cross-validated logistic regression), then applies the rule of
    thumb: small data -> a linear probe on the penultimate code (1), or on an earlier layer
    whose codes separate the sample better by more than --margin (2); large + similar ->
    3; large + different -> 4. Prints one row with the numbers and the reasons ("why"); the reasons
    also go to stderr. Test images never enter the probe. The sample's codes stay in the
    extraction cache for 'fit' (and for 'compare' when the sample is the whole source).
    """
    from ..studies.advise import AdviseConfig
    from ..studies.advise import advise as run_advise
    from ..studies.report import format_table

    result = run_advise(AdviseConfig(source=data, layers=tuple(layers) or None,
                                     progress=not quiet, **options))
    click.echo(format_table(result.table, fmt))
    if not quiet:
        click.echo(f"codes of the sample in {result.store_path}", err=True)
