"""The one exception type that user-facing mistakes raise."""

from __future__ import annotations

__all__ = ["CnnCodesError", "RankFailure"]


class CnnCodesError(ValueError):
    """A problem with what the user asked for: bad option, missing file, mismatched data.

    The message always names what was wrong, the value given, and how to fix it. The CLI
    prints it as one line and exits with status 2; no traceback.
    """


class RankFailure(CnnCodesError):
    """A rank of a torchrun job failed; every rank raises it, with the same message.

    Attributes:
        reporter: whether this rank prints it (rank 0), so the job says it once.
    """

    def __init__(self, message: str, *, reporter: bool) -> None:
        super().__init__(message)
        self.reporter = reporter
