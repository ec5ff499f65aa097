"""``python -m cnncodes.cli``: the same as the ``cnncodes`` command."""

from . import main

main(prog_name="cnncodes")
