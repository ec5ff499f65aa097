"""The ``cnncodes`` command line: a thin skin over the Python API.

Each command parses options into the library's config object and calls one library
function; no torch or scikit-learn logic lives here, and none is imported until a command
runs. A :class:`CnnCodesError` becomes one line on stderr and exit status 2.

Modules: ``group`` (error handling), ``options`` (shared options, output checks), then one
per command group: ``data`` (models, layers, extract, info, cache), ``probe`` (fit,
predict, report), ``finetuning`` (finetune), ``studies`` (compare, sweep, advise), ``explain``,
``export``.
"""

from __future__ import annotations

import click

from .._version import __version__
from .group import CnnCodesGroup


@click.group(cls=CnnCodesGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cnncodes")
def main() -> None:
    """Transfer learning with CNN codes.

    \b
    Typical use:
      cnncodes extract DATA --layer -2        # codes into an HDF5 store under cache/
      cnncodes fit cache/STORE.h5 --clf logreg
    """



def _register() -> None:
    """Add every command module's commands to ``main`` (their imports stay light)."""
    from . import data, explain, export, finetuning, probe, studies

    for command in (data.models, data.layers, data.extract, data.info, data.cache,
                    probe.fit, probe.predict, probe.report, finetuning.finetune,
                    studies.compare, explain.explain, studies.sweep, studies.advise):
        main.add_command(command)
    main.add_command(export.export)


_register()

if __name__ == "__main__":
    main()
