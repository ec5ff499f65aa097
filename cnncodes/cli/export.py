"""``cnncodes export``: a run as one TorchScript or ONNX file."""

from __future__ import annotations

import click

from .options import check_out


@click.command()
@click.argument("run", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["torchscript", "onnx"]), default="torchscript",
              show_default=True,
              help="torchscript (torch.jit.load) or onnx (onnxruntime; needs pip install "
              "'cnncodes[export]').")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="File to write (e.g. model.pt or model.onnx); FILE.json beside it names "
              "the classes, the outputs and the preprocessing.")
@click.option("--trust", "trusted", multiple=True,
              help="A type name in the model file to load although it is not one of the "
              "shipped pipelines' (only for files you made yourself). Repeatable.")
def export(run: str, fmt: str, out: str, trusted: tuple[str, ...]) -> None:
    """Export RUN ('cnncodes fit' with a linear or MLP probe, or 'cnncodes finetune') as one
    network: preprocessed images in, predict's probability (or score) columns out.

    \b
    Input: float32 [N, 3, H, W], the backbone's eval preprocessing (RGB, resize, centre
    crop, /255, minus mean, over std; the numbers are in FILE.json). Output: [N, columns],
    the proba_<class> (or score_<class>) columns of 'cnncodes predict', in FILE.json's
    order. stdout carries the written path.
    """
    from ..probe.export import export_run

    check_out(out, folder=False)
    click.echo(str(export_run(run, out, format=fmt, trusted=trusted)))
