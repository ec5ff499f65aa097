"""Where cnncodes writes by default and what its run folders' files are called.

Kept free of torch and scikit-learn imports: extraction, fitting, fine-tuning and the
explainers all name their outputs through it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CnnCodesError

__all__ = ["CACHE_KINDS", "FINETUNE_FILE", "PREDICTIONS_FILE", "cache_root", "check_output_path", "default_cache_dir",
           "default_dir", "default_runs_dir", "exclusive", "safe_name"]

# Pseudo file systems: writing a store or a run there is never what a user meant.
SPECIAL_ROOTS = ("/proc", "/sys", "/dev")

FINETUNE_FILE = "finetune.json"
"""The metadata file that marks a fine-tuning run folder (``cnncodes finetune``)."""

PREDICTIONS_FILE = "predictions.csv"
"""A run's held-out predictions (``path``, ``split``, ``label``, ``predicted``): what
``cnncodes report --per-class --confusion`` reads, for fitted and fine-tuned runs alike."""


CACHE_KINDS = ("stores", "runs", "compare", "sweeps", "explain")
"""The folders under the cache root, one per kind of output."""


def cache_root() -> Path:
    """``$CNNCODES_CACHE`` or ``./cache``: the one root of every default output."""
    return Path(os.environ.get("CNNCODES_CACHE", "cache"))


def default_dir(kind: str) -> Path:
    """Where outputs of ``kind`` (one of :data:`CACHE_KINDS`) go when no ``out`` is given."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {CACHE_KINDS}")
    return cache_root() / kind


def default_cache_dir() -> Path:
    """Where code stores go when no ``out`` is given: ``<cache root>/stores``."""
    return default_dir("stores")


def default_runs_dir() -> Path:
    """Where run folders go when no ``out`` is given: ``<cache root>/runs``."""
    return default_dir("runs")


def safe_name(name: str) -> str:
    """``name`` with every character other than letters, digits, ``-_.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def check_output_path(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written; create its missing parents.

    ``folder`` says whether ``path`` names a folder (a run) or a file (a store, a CSV).

    Raises:
        CnnCodesError: a special path (/proc, /sys, /dev), a parent that is a file, an
            unwritable folder, or a file where a folder is wanted (and the reverse).
    """
    target = Path(path).expanduser()
    resolved = Path(os.path.abspath(target))
    if any(resolved == Path(r) or Path(r) in resolved.parents for r in SPECIAL_ROOTS):
        raise CnnCodesError(
            f"Output {str(path)!r} is on a special file system ({resolved.parts[1]}); "
            "choose a path in a normal folder."
        )
    if target.exists() and target.is_dir() != folder:
        kind = "a folder" if target.is_dir() else "a file"
        raise CnnCodesError(
            f"Output {str(path)!r} is {kind}, but a {'folder' if folder else 'file'} is "
            "needed there; choose another path."
        )
    existing = resolved.parent if not folder else resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CnnCodesError(
            f"Output {str(path)!r} cannot be created: {str(existing)!r} is a file, not a "
            "folder; choose another path."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CnnCodesError(
            f"Output {str(path)!r} cannot be written: no write permission in "
            f"{str(existing)!r}; choose a folder you can write to."
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)  # the output itself comes at the end
    except OSError as error:
        raise CnnCodesError(
            f"Output {str(path)!r} cannot be created ({error.strerror}); choose another path."
        ) from None
    return target


@contextlib.contextmanager
def exclusive(target: str | os.PathLike[str], *, on_wait: Callable[[], None] | None = None
              ) -> Iterator[None]:
    """Hold ``TARGET.lock`` (beside ``target``) while writing ``target``.

    A second process asking for the same target waits (``on_wait`` is called once, when it
    has to) and then continues: it then finds the finished result as a cache hit.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
