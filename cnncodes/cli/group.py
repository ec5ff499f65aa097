"""The click group that turns user mistakes into one line and an exit status."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from ..errors import CnnCodesError


class CnnCodesGroup(click.Group):
    """Turns user-input errors into one line and exit code 2, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CnnCodesError as error:
            if getattr(error, "reporter", True):  # a torchrun job's failure: said by rank 0
                click.echo(f"Error: {error}", err=True)
            sys.exit(2)
        except BrokenPipeError:
            # The reader of stdout left (``cnncodes predict ... | head``): stop quietly, as
            # Unix tools do; Python would otherwise complain again when it flushes stdout.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
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
