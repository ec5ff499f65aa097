"""The one exception type that user-facing mistakes raise."""

from __future__ import annotations

__all__ = ["CnnCodesError"]


class CnnCodesError(ValueError):
    """A problem with what the user asked for: bad option, missing file, mismatched data.

    The message always names what was wrong, the value given, and how to fix it. The CLI
    prints it as one line and exits with status 2; no traceback.
    """
