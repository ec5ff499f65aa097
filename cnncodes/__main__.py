"""``python -m cnncodes``: the same command line as the ``cnncodes`` script (torchrun needs it)."""

from cnncodes.cli import main

if __name__ == "__main__":
    main()
