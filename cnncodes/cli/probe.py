"""Commands for scikit-learn pipelines on the codes: fit, predict, report."""

from __future__ import annotations

from typing import Any

import click

from ..errors import CnnCodesError
from .options import (
    TABLE_FORMATS,
    check_out,
    device_option,
    selection_options,
)


@click.command()
@click.argument("store", type=click.Path())
@click.option("--clf", "-c", default="logreg", show_default=True,
              help="Pipeline: logreg, torch_logreg, linear_svm, rbf_svm, mlp, knn, or a path to "
              "your own .py file defining build(**params) and search_space.")
@click.option("--layer", "-l", default=None,
              help="Store layer: node name or the spec used at extraction (-2); default the first.")
@click.option("--cv", default=5, show_default=True,
              help="Stratified CV folds, used when the store has no val split.")
@click.option("--pca", type=int, help="Insert PCA to N components before the classifier.")
@click.option("--l2norm", is_flag=True, help="L2-normalise every code first.")
@click.option("--refit-on", type=click.Choice(["train", "train+val"]), default="train",
              show_default=True, help="Rows the final model is fitted on after selection.")
@click.option("--seed", default=0, show_default=True, help="Random state of folds and estimators.")
@selection_options(
    "What the search maximises on val or the CV folds.",
    "balanced: class_weight='balanced' (logreg, rbf_svm), for imbalanced data.",
)
@click.option("--device", default=None,
              help="Where torch_logreg and linear_svm fit: auto (CUDA when present), cpu, cuda, "
              "cuda:N  [default: auto].")
@click.option("--jobs", "n_jobs", type=click.IntRange(min=1), default=None,
              help="CV folds fitted side by side, sharing the cores  [default: cores and folds].")
@click.option("--stream", is_flag=True,
              help="The choice beyond RAM: read the codes in row chunks and fit logreg or "
              "linear_svm by SGD (partial_fit), never loading the layer whole.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=4096, show_default=True,
              help="With --stream: rows read from the store at a time (bounds the memory).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --stream: passes over the training rows.")
@click.option("--scheduler", metavar="ADDRESS", envvar="DASK_SCHEDULER_ADDRESS",
              help="With --stream: fit on the Dask cluster whose scheduler is at ADDRESS "
              "(tcp://host:8786; default $DASK_SCHEDULER_ADDRESS, used only with --stream). "
              "Its workers open STORE by its path: it must be on a filesystem they share. "
              "Needs pip install 'cnncodes[dask]'.")
@click.option("--out", "-o", type=click.Path(), help="Run folder (default: cache/runs/<store>-<clf>-<layer>).")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True,
              help="Format of the result row printed on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Nothing on stderr; only the result row.")
def fit(store: str, quiet: bool, fmt: str, stream: bool, chunk_rows: int, epochs: int,
        scheduler: str | None, **options: Any) -> None:
    """Train, tune (C on a log grid), evaluate and save a pipeline on the codes of STORE.

    stdout carries the result row (--format); progress and the run folder go to stderr.
    """
    import pandas as pd

    from ..studies.report import format_table

    check_out(options.get("out"), folder=True)
    if scheduler and not stream:
        source = click.get_current_context().get_parameter_source("scheduler")
        if source != click.core.ParameterSource.ENVIRONMENT:  # the variable alone is no request
            raise CnnCodesError(
                f"--scheduler {scheduler!r} runs the streamed fit on Dask; add --stream "
                "(cnncodes fit STORE --stream --scheduler ADDRESS), or leave --scheduler out "
                "to fit in memory here."
            )
    if stream:
        from ..probe.stream import fit_streamed

        result = fit_streamed(store, progress=not quiet, chunk_rows=chunk_rows, epochs=epochs,
                              scheduler=scheduler or None, **_stream_options(options))
    else:
        from ..probe.fit import fit_pipeline

        result = fit_pipeline(store, progress=not quiet, **options)
    if not quiet:
        click.echo(f"saved {result.model_path}", err=True)
    click.echo(format_table(pd.DataFrame([result.row]), fmt))


def _stream_options(options: dict[str, Any]) -> dict[str, Any]:
    """fit's options that --stream takes; one that it cannot honour is a usage error."""
    unsupported = {"pca": None, "l2norm": False, "refit_on": "train", "device": None,
                   "n_jobs": None, "scoring": "accuracy", "class_weight": "none"}
    for name, default in unsupported.items():
        if options.get(name, default) != default:
            flag = "--" + {"n_jobs": "jobs"}.get(name, name).replace("_", "-")
            raise CnnCodesError(
                f"--stream fits scaler + SGD only; {flag} is not available with it "
                f"(got {options[name]!r}): leave {flag} out, or --stream to fit in memory."
            )
    return {key: options[key] for key in ("clf", "layer", "cv", "seed", "out")}


@click.command()
@click.argument("model", type=click.Path())
@click.argument("source", type=click.Path())
@click.option("--keep-codes", type=click.Path(dir_okay=False),
              help="Keep the codes extracted from SOURCE in this store (.h5); by default they "
              "go to a temporary store that is removed (a store of other codes is refused).")
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              help="Also write the predictions to this CSV file.")
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="csv", show_default=True,
              help="Format of the predictions printed on stdout.")
@click.option("--batch-size", "-b", type=int, help="Images per forward pass (default: 8 on a CPU, 32 on CUDA).")
@device_option
@click.option("--tta", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Test-time augmentation with K views: average the probabilities of each "
              "image, its left-right flip (K=1) and K-1 further seeded views (random resized "
              "crop + flip, as extract --views makes); 0: the image alone. Needs images, "
              "not a store, and a fit run.")
@click.option("--seed", default=0, show_default=True, help="Seed of the --tta views.")
@click.option("--trust", "trusted", multiple=True,
              help="A type name in the model file to load although it is not one of the "
              "shipped pipelines' (only for files you made yourself). Repeatable.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr.")
def predict(model: str, source: str, out: str | None, fmt: str, quiet: bool,
            **options: Any) -> None:
    """Predict with run MODEL on SOURCE: images (extracted like the training codes) or a store.

    stdout carries one row per image (--format); skipped files are listed on stderr.
    """
    from ..probe.predict import predict as run_predict
    from ..studies.report import format_table

    if not options["trusted"]:
        options.pop("trusted")
    check_out(out, folder=False)
    check_out(options.get("keep_codes"), folder=False)
    frame = run_predict(model, source, out, progress=not quiet, **options)
    skipped = frame.attrs.get("skipped", [])
    click.echo(format_table(frame, fmt, digits=6), nl=fmt != "csv")
    if out is not None and not quiet:
        click.echo(f"{out}: {len(frame)} predictions", err=True)
    for path, reason in skipped:
        click.echo(f"  skipped {path}: {reason}", err=True)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(TABLE_FORMATS), default="md", show_default=True)
@click.option("--per-class", is_flag=True, help="Add precision/recall/F1 per class.")
@click.option("--confusion", is_flag=True, help="Add a confusion matrix per run.")
@click.option("--split", help="Held-out split for per-class tables (default: test, val or cv).")
@click.option("--out", "-o", type=click.Path(), help="Also write the report to this file.")
def report(runs: tuple[str, ...], fmt: str, out: str | None, **options: Any) -> None:
    """One comparison table of the fitted RUNS (run folders): Markdown, CSV, JSON, LaTeX or HTML."""
    from pathlib import Path

    from ..studies.report import report as render

    check_out(out, folder=False)
    text = render(list(runs), fmt=fmt, **options)
    click.echo(text)
    if out is not None:
        Path(out).write_text(text + "\n", encoding="utf-8")
