"""Where cnncodes writes by default and what its run folders' files are called.

Kept free of torch and scikit-learn imports: extraction, fitting, fine-tuning and the
explainers all name their outputs through it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FINETUNE_FILE", "default_cache_dir", "default_runs_dir", "safe_name"]

FINETUNE_FILE = "finetune.json"
"""The metadata file that marks a fine-tuning run folder (``cnncodes finetune``)."""


def default_cache_dir() -> Path:
    """``$CNNCODES_CACHE`` or ``./cache``: where stores go when no ``out`` is given."""
    return Path(os.environ.get("CNNCODES_CACHE", "cache"))


def default_runs_dir() -> Path:
    """``$CNNCODES_RUNS`` or ``./runs``: where run folders go when no ``out`` is given."""
    return Path(os.environ.get("CNNCODES_RUNS", "runs"))


def safe_name(name: str) -> str:
    """``name`` with every character other than letters, digits, ``-_.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
