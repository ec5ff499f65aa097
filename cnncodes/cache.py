"""What the cache root holds, and pruning what is stale or incomplete (``cnncodes cache``).

The cache root (``$CNNCODES_CACHE`` or ``./cache``) has one folder per kind of output
(:data:`cnncodes.paths.CACHE_KINDS`). An entry is ``ok``, ``incomplete`` (the part files
or temporary file of an extraction that did not finish), ``stale`` (a store or run that
this cnncodes refuses: an older format, a failed checksum), or ``in use`` (its lock is
held by a running command: never pruned).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CnnCodesError
from .paths import CACHE_KINDS, cache_root

__all__ = ["CacheEntry", "list_cache", "prune_cache"]

RUN_FILES = ("metadata.json", "finetune.json")


@dataclass
class CacheEntry:
    """One file or folder under the cache root."""

    kind: str
    name: str
    status: str
    size_mib: float
    modified: str
    path: str
    why: str = ""

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _locked(target: Path) -> bool:
    """True when a running command holds ``target``'s lock."""
    lock_path = Path(str(target) + ".lock")
    if not lock_path.exists():
        return False
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _store_status(path: Path) -> tuple[str, str]:
    from .data.store import CodeStore

    try:
        with CodeStore(path):
            return "ok", ""
    except CnnCodesError as error:
        return "stale", str(error)


def _run_status(path: Path) -> tuple[str, str]:
    for name in RUN_FILES:
        if (path / name).is_file():
            try:
                meta = json.loads((path / name).read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                return "stale", f"{name} is unreadable ({error})"
            if name == "metadata.json" and "format_version" not in meta:
                return "stale", "written by an older cnncodes; fit it again"
            return "ok", ""
    return "incomplete", f"no {' or '.join(RUN_FILES)} inside"


def _status(kind: str, path: Path) -> tuple[str, str]:
    name = path.name
    if name.endswith(".lock"):
        target = Path(str(path)[: -len(".lock")])
        return ("in use", "a command holds it") if _locked(target) else ("ok", "lock file")
    if name.endswith((".parts", ".tmp")):
        target = Path(str(path).rsplit(".", 1)[0])
        if _locked(target):
            return "in use", "a running extraction writes it"
        return "incomplete", "an extraction that did not finish; the same command resumes it"
    if kind == "stores" and path.suffix == ".h5":
        return _store_status(path)
    if kind == "runs" and path.is_dir():
        return _run_status(path)
    return "ok", ""


def list_cache(root: str | os.PathLike[str] | None = None) -> list[CacheEntry]:
    """Every entry under the cache root's kind folders, with size and status."""
    base = Path(root) if root is not None else cache_root()
    entries = []
    for kind in CACHE_KINDS:
        folder = base / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            status, why = _status(kind, path)
            stat = path.stat()
            entries.append(CacheEntry(
                kind, path.name, status, round(_size(path) / 2**20, 2),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(stat.st_mtime)), str(path), why,
            ))
    return entries


def prune_cache(
    root: str | os.PathLike[str] | None = None,
    *,
    everything: bool = False,
    older_than_days: float | None = None,
    dry_run: bool = False,
) -> list[CacheEntry]:
    """Remove ``incomplete`` and ``stale`` entries (with ``everything``: all entries not in
    use; with ``older_than_days``: only those not modified for that long). Entries in use
    are never removed. Returns what was (or, with ``dry_run``, would be) removed."""
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    removed = []
    for entry in list_cache(root):
        path = Path(entry.path)
        if entry.status == "in use":
            continue
        if not everything and entry.status not in ("incomplete", "stale"):
            continue
        if cutoff is not None and path.stat().st_mtime > cutoff:
            continue
        if not dry_run:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        removed.append(entry)
    return removed
