"""Image sources: ImageFolder trees, CSV manifests and MNIST-style idx files.

A source is a list of :class:`Item` (where the image is, its label, its split) plus the
class names and a fingerprint that changes when any file changes. Listing opens no file:
broken links, FIFOs, empty and unreadable files are found with ``stat`` and listed with
the reason they are skipped. Decoding happens later, in :meth:`ImageSource.read`, where a
file that cannot be used becomes a reported skip, never an abort.
"""

from __future__ import annotations

import bisect
import csv
import errno
import gzip
import hashlib
import io
import json
import operator
import os
import stat
from array import array
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import CnnCodesError
from .builtin import is_builtin, load_builtin
from .decode import (
    DECODING,
    MAX_ASPECT,
    MAX_PIXELS,
    UnusableFile,
    decode_image,
    display_path,
    first_line,
)
from .tars import is_tar_source, list_tar_shards, read_member

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "SPLITS",
    "ImageDataset",
    "ImageSource",
    "Item",
    "decode_image",
    "display_path",
    "open_source",
]

# The extensions torchvision's ImageFolder reads. Anything else found among the images
# (the GIF placeholder in hymenoptera, a stray .txt) is listed as skipped, with the reason.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True, slots=True)  # slots: a million items listed in memory
class Item:
    """One image of a source; label -1 = unknown.

    ``path`` is relative to the source's image folder (:attr:`ImageSource.base`), or
    absolute for a manifest row outside it; names that are not UTF-8 keep the
    :func:`os.fsdecode` form (see :func:`display_path`).
    """

    path: str
    label: int
    split: str = ""
    skip_reason: str = ""


@dataclass
class ImageSource:
    """What to extract: items, class names and how to open an item.

    ``root`` names the source (the folder, or the manifest file); ``base`` is the folder
    the items' paths are relative to (``None``: ``root`` itself). ``warnings`` are
    one-line notes for the user about what listing left out (a class folder whose files
    are all skipped, a folder link not followed).
    """

    root: Path
    kind: str
    items: list[Item]
    classes: list[str]
    fingerprint: str
    has_split: bool
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    base: Path | None = None
    max_pixels: int = MAX_PIXELS
    warnings: list[str] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list, repr=False)
    members: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.root.stem if self.kind in ("csv", "file", "tar") else self.root.name

    def open_image(self, item: Item) -> Image.Image:
        """Decode one item to an RGB PIL image (raises on unreadable files)."""
        if self.arrays:  # idx files and built-in sources: "split#row" into in-memory arrays
            split, index = item.path.split("#")
            return Image.fromarray(self.arrays[split][int(index)], mode="L").convert("RGB")
        if self.members:  # tar shards: the image's bytes, from where listing found them
            shard, offset, size = self.members[item.path]
            return decode_image(read_member(self.shards[shard], offset, size),
                                max_pixels=self.max_pixels)
        path = os.path.join(self.base if self.base is not None else self.root, item.path)
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):  # replaced since listing; opening a FIFO would hang
            raise UnusableFile(f"not a regular file ({_file_kind(mode)})")
        return decode_image(path, max_pixels=self.max_pixels)

    def read(self, item: Item) -> tuple[Image.Image | None, str]:
        """Decode one item, or ``(None, reason)`` for a file that cannot be used.

        This is the bad-image policy every reader shares: a listed skip keeps its reason,
        a file that fails to decode is reported with why, nothing raises.
        """
        if item.skip_reason:
            return None, item.skip_reason
        try:
            return self.open_image(item), ""
        except UnusableFile as error:
            return None, display_path(str(error))
        except PermissionError:
            return None, "permission denied"
        except FileNotFoundError:
            return None, "file not found"
        except Image.DecompressionBombError as error:
            return None, display_path(
                f"decompression bomb: {first_line(error)}; if you trust the file, raise "
                "the budget with --max-pixels"
            )
        except (OSError, ValueError, SyntaxError) as error:
            return None, display_path(f"unreadable image: {first_line(error)}")
        except Exception as error:  # a malformed file can make PIL raise anything
            return None, display_path(f"unreadable image: {type(error).__name__}: {first_line(error)}")

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            key = item.split or "all"
            counts[key] = counts.get(key, 0) + 1
        return {"kind": self.kind, "classes": len(self.classes), "items": counts}


def open_source(
    path: str | os.PathLike[str],
    *,
    limit: int | None = None,
    root: str | os.PathLike[str] | None = None,
    require_labels: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> ImageSource:
    """Read the listing of an image source; no image is decoded here.

    Args:
        path: an image folder (class sub-folders, optionally under train/val/test), a
            folder of images without classes (for prediction), a CSV manifest with columns
            ``path,label[,split]``, a folder with MNIST-style ``*-idx*-ubyte.gz`` files,
            or WebDataset tar shards (:mod:`cnncodes.data.tars`).
        limit: keep only the first ``limit`` images of each split (quick experiments).
        root: for a manifest, the folder its relative paths start from (default: the
            manifest's own folder). Absolute paths are used as they are.
        require_labels: every image needs a class (training): a manifest without a
            ``label`` column or with an empty label, or a folder without class folders,
            is an error. Without it an empty label means unlabeled (label -1).
        max_pixels: images with more pixels are skipped before decoding (decompression
            bombs); ``MAX_PIXELS`` is about 13,400 x 13,400.

    Raises:
        CnnCodesError: the path does not exist, holds nothing cnncodes can read, or a
            manifest line is wrong (the message names the line).
    """
    location = Path(path).expanduser()
    shown = display_path(str(path))
    tar = is_tar_source(str(path)) and not location.is_dir()
    if not location.exists() and not is_builtin(path) and not tar:
        raise CnnCodesError(
            f"Source {shown!r} does not exist; give an image folder, a CSV manifest "
            "(path,label[,split]) or a folder of MNIST-style idx files."
        )
    if limit is not None and limit < 1:
        raise CnnCodesError(f"limit must be a positive number of images; got {limit!r}.")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise CnnCodesError(
            f"max_pixels must be a positive number of pixels; got {max_pixels!r} "
            f"(default {MAX_PIXELS:,})."
        )
    is_manifest = location.is_file() and not is_builtin(path) and not tar
    if root is not None and not is_manifest:
        raise CnnCodesError(
            f"root={display_path(str(root))!r} only applies to a CSV manifest (the folder its "
            f"paths start from); source {shown!r} is not one, so leave root out."
        )
    if is_builtin(path):  # sklearn:digits, shipped inside scikit-learn
        source = _open_builtin(str(path))
    elif tar:  # WebDataset shards: one .tar, a brace pattern, or several joined by ::
        source = _open_tars(str(path), require_labels)
    elif is_manifest and location.suffix.lower() in IMAGE_EXTENSIONS and not require_labels:
        source = _open_single(location)  # one image: predict on it
    elif is_manifest:
        _check_manifest_name(location, shown)
        source = _open_csv(location, _manifest_base(location, root), require_labels)
    elif all((location / name).exists() for name in IDX_FILES["train"]):
        source = _open_idx(location)
    else:
        source = _open_folder(location, require_labels)
    source.max_pixels = max_pixels
    if max_pixels != MAX_PIXELS:
        source.fingerprint = _digest([source.fingerprint, f"max_pixels={max_pixels}"])
    if limit is not None:
        source.items = _first_per_split(source.items, limit)
        source.fingerprint = _digest([source.fingerprint, f"limit={limit}", "by-class"])
    if not any(not item.skip_reason for item in source.items):
        reasons = sorted({item.skip_reason for item in source.items})
        found = f"; the {len(source.items)} files found are skipped: {', '.join(reasons[:3])}" if reasons else ""
        raise CnnCodesError(
            f"Source {shown!r} holds no readable images (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}){found}; check the path."
        )
    return source


def _first_per_split(items: list[Item], limit: int) -> list[Item]:
    """The first ``limit`` items of each split, taken in turn from each class (the first
    item of every class, then the second, ...) so that a small subset still holds every
    class; the kept items stay in their original order."""
    chosen: set[int] = set()
    for split in dict.fromkeys(item.split for item in items):
        by_class: dict[int, list[int]] = {}
        for index, item in enumerate(items):
            if item.split == split:
                by_class.setdefault(item.label, []).append(index)
        queues = list(by_class.values())
        taken, depth = 0, 0
        while taken < limit and any(depth < len(q) for q in queues):
            for queue in queues:
                if depth < len(queue) and taken < limit:
                    chosen.add(queue[depth])
                    taken += 1
            depth += 1
    return [item for index, item in enumerate(items) if index in chosen]


def _digest(parts: Iterable[Any]) -> str:
    """The fingerprint of ``parts``: see :class:`_ListDigest`."""
    digest = _ListDigest()
    for part in parts:
        digest.add(part)
    return digest.hexdigest()


class _ListDigest:
    """sha256 of the JSON list of the parts added one by one: the same digest as
    ``json.dumps(parts)`` without building that string (a million paths), first 16 hex."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256(b"[")
        self._empty = True

    def add(self, part: Any) -> None:
        if not self._empty:
            self._hash.update(b", ")
        self._empty = False
        self._hash.update(json.dumps(part, default=str).encode())

    def hexdigest(self) -> str:
        final = self._hash.copy()
        final.update(b"]")
        return final.hexdigest()[:16]


def _stat_key(path: Path) -> list[Any]:
    stat_result = path.stat()
    return [stat_result.st_size, stat_result.st_mtime_ns]


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _is_within(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


@dataclass(slots=True)
class _Found:
    """A file met while listing: where, why it is skipped ('' if not), its stat key, and
    the (device, inode) it resolves to, which tells two links to one file apart."""

    path: str
    reason: str
    key: list[Any] | None
    identity: tuple[int, int] | None
    link: bool


def _examine(path: str, link: bool) -> _Found:
    """What the file at ``path`` is, found with ``stat`` alone: no file is opened."""
    try:
        info = os.stat(path)
    except OSError as error:
        lstat = os.lstat(path) if link else None
        key = [lstat.st_size, lstat.st_mtime_ns] if lstat else None
        if error.errno == errno.ELOOP:
            reason = "symlink loop"
        elif link and error.errno in (errno.ENOENT, errno.ENOTDIR):
            reason = f"broken symlink (points to {display_path(os.readlink(path))})"
        elif error.errno in (errno.ENOENT, errno.ENOTDIR):
            reason = "file not found"
        elif isinstance(error, PermissionError):
            reason = "permission denied"
        else:
            reason = f"cannot be read ({error.strerror or error})"
        return _Found(path, reason, key, None, link)
    key, identity = [info.st_size, info.st_mtime_ns], (info.st_dev, info.st_ino)
    suffix = os.path.splitext(path)[1]
    if not stat.S_ISREG(info.st_mode):
        reason = f"not a regular file ({_file_kind(info.st_mode)})"
    elif suffix.lower() not in IMAGE_EXTENSIONS:
        reason = f"not an image type cnncodes reads ({display_path(suffix) or 'no extension'})"
    elif info.st_size == 0:
        reason = "empty file (0 bytes)"
    elif not os.access(path, os.R_OK):
        reason = "permission denied"
    else:
        reason = ""
    return _Found(path, reason, key, identity, link)


class _Walker:
    """Lists a folder tree with ``os.scandir``, hidden names left out.

    A folder link is followed when it leads out of the tree, once per real folder (so a
    loop ends); one that leads back into the tree is not, its files being listed where
    they are. What is left out is said in ``warnings``.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.abspath(root)
        self.prefix = os.path.join(self.root, "")
        self.real_root = os.path.realpath(self.root)
        self.walked = {self.real_root}
        self.warnings: list[str] = []

    def shown(self, path: str) -> str:
        return display_path(os.path.relpath(path, self.root))

    def relative(self, path: str) -> str:
        """``os.path.relpath(path, root)`` of a path the walk found (the root joined with
        names), without relpath's cost for each of a million files."""
        return path[len(self.prefix):] if path.startswith(self.prefix) else os.path.relpath(path, self.root)

    def entries(self, folder: str) -> tuple[list[str], list[tuple[str, bool]]]:
        """The sub-folders to walk and the files (path, is a link) of ``folder``."""
        try:
            with os.scandir(folder) as scan:
                found = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as error:
            self.warnings.append(
                f"Folder {self.shown(folder)!r} could not be read ({error.strerror or error}); "
                "its images are not listed."
            )
            return [], []
        folders, files = [], []
        for entry in found:
            link = entry.is_symlink()
            try:
                is_folder = entry.is_dir()  # follows links; a broken one is a file to report
            except OSError:
                is_folder = False
            if not is_folder:
                files.append((entry.path, link))
            elif self._enter(entry.path, link):
                folders.append(entry.path)
        return folders, files

    def files(self, folder: str) -> list[tuple[str, bool]]:
        """Every file under ``folder``, sub-folders included."""
        found, stack = [], [folder]
        while stack:
            folders, files = self.entries(stack.pop())
            found += files
            stack += reversed(folders)
        return found

    def _enter(self, path: str, link: bool) -> bool:
        real = os.path.realpath(path)
        shown = self.shown(path)
        if link and _is_within(real, self.real_root):
            self.warnings.append(
                f"Folder link {shown!r} points inside the source; not followed, so its "
                "images are listed once, where they are."
            )
            return False
        if real in self.walked:
            self.warnings.append(
                f"Folder {shown!r} leads to a folder already listed (a symlink loop or a "
                "second link); not listed twice."
            )
            return False
        self.walked.add(real)
        return True


def _open_folder(root: Path, require_labels: bool) -> ImageSource:
    walker = _Walker(root)
    top_folders, top_files = walker.entries(walker.root)
    by_name = {os.path.basename(p): p for p in top_folders}
    split_names = [name for name in by_name if name.lower() in SPLITS]
    has_split = bool(split_names)
    # split -> (class folders by name, files beside them)
    layout: dict[str, tuple[dict[str, str], list[tuple[str, bool]]]] = {}
    if has_split:
        for name, folder in by_name.items():
            if name.lower() in SPLITS:
                class_folders, beside = walker.entries(folder)
                layout[name.lower()] = ({os.path.basename(p): p for p in class_folders}, beside)
            else:
                walker.warnings.append(
                    f"Folder {walker.shown(folder)!r} is not a split ({', '.join(SPLITS)}) "
                    "beside the split folders; its images are not used."
                )
    else:
        layout[""] = (by_name, top_files)
    classes = sorted({name for folders, _ in layout.values() for name in folders})
    if require_labels and not classes:
        raise CnnCodesError(
            f"Source {display_path(str(root))!r} has no class folders; training needs one "
            "sub-folder per class (optionally under train/, val/, test/)."
        )
    listing = _Listing(walker, classes)
    groups: list[tuple[str, range]] = []  # (what, positions in the listing) for the warnings
    loose = top_files if has_split else []  # files beside the split folders
    for split, (folders, files) in layout.items():
        if not classes:  # a folder of images without classes: unlabeled, for prediction
            for path, link in files:
                listing.add(path, link, -1, split)
            continue
        loose = loose + files
        for label, name in enumerate(classes):
            if name in folders:
                start = len(listing.items)
                for path, link in walker.files(folders[name]):
                    listing.add(path, link, label, split)
                groups.append((f"Class folder {walker.shown(folders[name])!r}", range(start, len(listing.items))))
    images_beside = [p for p, _ in loose if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS]
    if classes and images_beside:
        walker.warnings.append(
            f"{len(images_beside)} image(s) lie outside any class folder and are not used "
            f"(first: {walker.shown(images_beside[0])!r}); move them into a class folder."
        )
    listing.drop_linked_duplicates()
    items = listing.items
    warnings = walker.warnings + _empty_group_warnings(items, groups, has_split)
    fingerprint = listing.fingerprint()
    del listing  # a million stat keys: free them before the sort
    _sort_by_split_and_path(items)
    return ImageSource(root.resolve(), "folder", items, classes, fingerprint, has_split, warnings=warnings)


_INT64 = range(-(2**63), 2**63)


class _Listing:
    """The files of a folder source in the order found, kept small for a million of them.

    ``items`` are the items themselves (paths relative to the root). Each file goes into
    the fingerprint as it is found, unless a file link was found before it: a link's
    reason is only known once every file is (:meth:`drop_linked_duplicates`), and the
    fingerprint keeps the order found, so from the first link on the stat keys wait in
    typed arrays. The (device, inode) identities for the link check are kept likewise:
    inodes in an array, devices as runs of files on one device.
    """

    def __init__(self, walker: _Walker, classes: list[str]) -> None:
        self.walker = walker
        self.items: list[Item] = []
        self.digest = _ListDigest()
        for part in ("folder", DECODING, classes):
            self.digest.add(part)
        self.settled = 0  # items before this position are in the digest already
        self.sizes, self.mtimes = array("q"), array("q")  # stat keys, from ``settled`` on
        self.keys_apart: dict[int, list[Any] | None] = {}  # no stat key, or one past 64 bits
        self.inodes = array("Q")
        self.devices: list[tuple[int, int]] = []  # (first position, device) of each run
        self.links: list[int] = []

    def add(self, path: str, link: bool, label: int, split: str) -> None:
        found = _examine(path, link)
        position = len(self.items)
        item = Item(self.walker.relative(path).replace(os.sep, "/"), label, split, found.reason)
        self.items.append(item)
        device, inode = found.identity or (self.devices[-1][1] if self.devices else 0, 0)
        self.inodes.append(inode)  # 0 for a file skipped already: never compared
        if not self.devices or self.devices[-1][1] != device:
            self.devices.append((position, device))
        pending = link and not found.reason
        if pending:
            self.links.append(position)
        if self.settled == position and not pending:
            self.digest.add([item.path, item.label, item.split, item.skip_reason, found.key])
            self.settled += 1
        elif found.key is not None and found.key[0] in _INT64 and found.key[1] in _INT64:
            self.sizes.append(found.key[0])
            self.mtimes.append(found.key[1])
        else:
            self.sizes.append(0)
            self.mtimes.append(0)
            self.keys_apart[position] = found.key

    def identity(self, position: int) -> tuple[int, int]:
        run = bisect.bisect_right(self.devices, position, key=lambda run: run[0]) - 1
        return self.devices[run][1], self.inodes[position]

    def drop_linked_duplicates(self) -> None:
        """A file link to a file listed anyway is skipped, so each image is stored once:
        real files claim their image first, then links in the order found."""
        identity = self.identity
        wanted = {identity(i) for i in self.links}
        if not wanted:
            return
        first: dict[tuple[int, int], int] = {}
        links = set(self.links)
        for position, item in enumerate(self.items):
            if not item.skip_reason and position not in links and identity(position) in wanted:
                first.setdefault(identity(position), position)
        for position in self.links:
            claimed = first.setdefault(identity(position), position)
            if claimed != position:
                shown = display_path(self.items[claimed].path.replace("/", os.sep))
                self.items[position] = replace(
                    self.items[position], skip_reason=f"same file as {shown!r} (symlink); listed once"
                )

    def fingerprint(self) -> str:
        """The digest, once :meth:`drop_linked_duplicates` has settled every reason."""
        for position in range(self.settled, len(self.items)):
            item = self.items[position]
            if position in self.keys_apart:
                key = self.keys_apart[position]
            else:
                key = [self.sizes[position - self.settled], self.mtimes[position - self.settled]]
            self.digest.add([item.path, item.label, item.split, item.skip_reason, key])
        return self.digest.hexdigest()


def _sort_by_split_and_path(items: list[Item]) -> None:
    """Sort by split (train, val, test; none first), then path: by path, then stably by
    split, which is the same order as one sort on (split, path) without a key tuple per
    item."""
    order = {s: i for i, s in enumerate(SPLITS)}
    items.sort(key=operator.attrgetter("path"))
    items.sort(key=lambda it: order.get(it.split, -1))


def _empty_group_warnings(items: list[Item], groups: list[tuple[str, range]], has_split: bool) -> list[str]:
    warnings = []
    for what, positions in groups:
        reasons = [items[p].skip_reason for p in positions]
        if not reasons:
            warnings.append(f"{what} is empty; its class has no images there.")
        elif all(reasons):
            warnings.append(f"Every file in {what.lower()} is skipped ({len(reasons)}; first: {reasons[0]}).")
    warnings += _split_warnings(items) if has_split else []
    return warnings


def _split_warnings(items: list[Item]) -> list[str]:
    reasons: dict[str, list[str]] = {}
    for item in items:
        reasons.setdefault(item.split, []).append(item.skip_reason)
    return [
        f"Every file of split {split!r} is skipped ({len(found)}; first: {found[0]})."
        for split, found in reasons.items() if split and all(found)
    ]


def _manifest_base(manifest: Path, root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        return Path(os.path.realpath(manifest.parent))
    base = Path(root).expanduser()
    if not base.is_dir():
        raise CnnCodesError(
            f"root {display_path(str(root))!r} is not a folder; give the folder the "
            f"relative paths of manifest {display_path(str(manifest))!r} start from."
        )
    return Path(os.path.realpath(base))


def _csv_records(rows: list[tuple[int, list[str]]], columns: list[str], shown: str,
                 require_labels: bool) -> list[tuple[int, str, str, str]]:
    """(line, path, label, split) of every non-blank manifest row, checked."""
    index: dict[str, int] = {
        name: columns.index(name) for name in ("path", "label", "split") if name in columns
    }

    def cell(row: list[str], name: str) -> str:
        column = index.get(name)
        return row[column].strip() if column is not None and column < len(row) else ""

    records = []
    for line, row in rows[1:]:
        if not any(value.strip() for value in row):
            continue  # blank lines and the ",,," rows spreadsheets leave behind
        path, label, split = cell(row, "path"), cell(row, "label"), cell(row, "split").lower()
        if not path:
            raise CnnCodesError(f"Manifest {shown!r} line {line}: empty path; fill it in or delete the row.")
        if split and split not in SPLITS:
            raise CnnCodesError(
                f"Manifest {shown!r} line {line}: split {cell(row, 'split')!r} is not one "
                f"of {', '.join(SPLITS)}; use one of them or leave it empty."
            )
        if require_labels and not label:
            raise CnnCodesError(
                f"Manifest {shown!r} line {line}: empty label for {path!r}; training needs "
                "a label on every row (or delete the row)."
            )
        records.append((line, path, label, split))
    return records


def _open_csv(manifest: Path, base: Path, require_labels: bool) -> ImageSource:
    shown = display_path(str(manifest))
    data = manifest.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CnnCodesError(
            f"Manifest {shown!r} is not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); "
            "save it as UTF-8 (with or without BOM)."
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise CnnCodesError(f"Manifest {shown!r} line {reader.line_num + 1}: {error}; fix the CSV.") from None
    columns = [c.strip().lower() for c in rows[0][1]] if rows else []
    if "path" not in columns:
        raise CnnCodesError(
            f"Manifest {shown!r} line 1 has columns {columns}; it needs a header with "
            "'path' and, for training, 'label' (optionally 'split')."
        )
    if require_labels and "label" not in columns:
        raise CnnCodesError(
            f"Manifest {shown!r} line 1 has columns {columns} but no 'label'; training "
            "needs a label on every row: add a 'label' column."
        )
    records = _csv_records(rows, columns, shown, require_labels)
    names = sorted({label for _, _, label, _ in records} - {""})
    number = {name: i for i, name in enumerate(names)}
    items, keys = [], []
    for _, path, label, split in records:
        target = os.path.normpath(os.path.join(base, os.path.expanduser(path)))
        found = _examine(target, os.path.islink(target))
        # Stored as the manifest wrote it (normalised), so rows join back to the manifest.
        written = os.path.expanduser(path)
        relative = target if os.path.isabs(written) else os.path.normpath(written)
        items.append(Item(relative.replace(os.sep, "/"), number.get(label, -1), split, found.reason))
        keys.append(found.key)
    if items and all(item.skip_reason == "file not found" for item in items):
        line, path = records[0][0], records[0][1]
        start = "the root given" if base != Path(os.path.realpath(manifest.parent)) else "the manifest's folder"
        raise CnnCodesError(
            f"Manifest {shown!r}: none of its {len(items)} files exist (line {line}: {path!r} "
            f"was looked for at {display_path(os.path.join(base, path))!r}). Relative paths "
            f"start from {start}, {display_path(str(base))!r}; pass --root DIR (root= in Python) if they "
            "start from another folder."
        )
    warnings = _split_warnings(items) if any(it.split for it in items) else []
    for label_number, name in enumerate(names):
        labelled = [it.skip_reason for it in items if it.label == label_number]
        if all(labelled):
            warnings.append(f"Every file of class {name!r} is skipped ({len(labelled)}; first: {labelled[0]}).")
    fingerprint = _digest([
        "csv", DECODING, hashlib.sha256(data).hexdigest(), str(base),
        [[it.path, it.label, it.split, it.skip_reason, key] for it, key in zip(items, keys)],
    ])
    has_split = any(it.split for it in items)
    return ImageSource(
        manifest.resolve(), "csv", items, names, fingerprint, has_split, base=base, warnings=warnings
    )


def _check_manifest_name(location: Path, shown: str) -> None:
    """A file given as a training source must be a .csv manifest."""
    if location.suffix.lower() in IMAGE_EXTENSIONS:
        raise CnnCodesError(
            f"Source {shown!r} is one image; training needs labelled images: give a "
            "folder of class folders or a CSV manifest with a label column."
        )
    if location.suffix.lower() != ".csv":
        raise CnnCodesError(
            f"Source {shown!r} is a file but neither a .csv manifest nor an image "
            f"({', '.join(IMAGE_EXTENSIONS)}); give an image, a folder of images or a "
            "CSV with columns path,label[,split]."
        )


def _open_single(image: Path) -> ImageSource:
    """One image file as an unlabeled source (``cnncodes predict RUN photo.jpg``)."""
    found = _examine(str(image), image.is_symlink())
    item = Item(image.name, -1, "", found.reason)
    fingerprint = _digest(["file", DECODING, image.name, found.key])
    return ImageSource(image.resolve(), "file", [item], [], fingerprint, False,
                       base=image.parent.resolve())


def _open_builtin(spec: str) -> ImageSource:
    """A built-in data set (``sklearn:digits``) as an in-memory source of ``split#row`` items."""
    data = load_builtin(spec)
    items = [
        Item(f"{split}#{row}", int(label), split)
        for split, labels in data.labels.items() for row, label in enumerate(labels)
    ]
    return ImageSource(Path(spec), "sklearn", items, data.classes, _digest(data.identity), True,
                       dict(data.images))


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx array (unsigned bytes), or one error line for a damaged file."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
        if len(data) < 4 or data[:3] != b"\0\0\x08":
            raise ValueError("no idx header of unsigned bytes")
        ndim = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, EOFError, ValueError) as error:
        raise CnnCodesError(
            f"idx file {display_path(str(path))!r} is damaged ({first_line(error)}); download "
            "it again."
        ) from None


def _open_idx(root: Path) -> ImageSource:
    arrays: dict[str, np.ndarray] = {}
    items: list[Item] = []
    stats = []
    for split, (images_file, labels_file) in IDX_FILES.items():
        if not (root / images_file).exists():
            continue
        images, labels = _read_idx(root / images_file), _read_idx(root / labels_file)
        if len(images) != len(labels):
            raise CnnCodesError(
                f"{images_file} has {len(images)} images but {labels_file} {len(labels)} labels."
            )
        arrays[split] = images
        items += [Item(f"{split}#{i}", int(label), split) for i, label in enumerate(labels)]
        stats += [images_file, _stat_key(root / images_file), _stat_key(root / labels_file)]
    n_classes = int(max(item.label for item in items)) + 1
    fashion = "fashion" in str(root.resolve()).lower() and n_classes == 10
    classes = FASHION_CLASSES if fashion else [str(i) for i in range(n_classes)]
    fingerprint = _digest(["idx", stats])
    return ImageSource(root.resolve(), "idx", items, classes, fingerprint, True, arrays)


def _open_tars(path: str, require_labels: bool) -> ImageSource:
    listing = list_tar_shards(path, IMAGE_EXTENSIONS)
    texts = [sample.label for sample in listing.samples]
    numeric = all(text.isdigit() for text in texts if text)
    named = sorted({text for text in texts if text}, key=lambda t: (int(t), t) if numeric else (0, t))
    classes = [str(i) for i in range(int(named[-1]) + 1)] if numeric and named else named
    index = {name: i for i, name in enumerate(classes)}
    unlabeled = [sample.key for sample in listing.samples if not sample.label]
    if require_labels and unlabeled:
        raise CnnCodesError(
            f"Tar source {display_path(path)!r}: sample {display_path(unlabeled[0])!r} (and "
            f"{len(unlabeled) - 1} more) has no label; give each sample a key.cls or a "
            "key.json with a 'label' field."
        )
    items, members, seen = [], {}, set()
    for sample in listing.samples:
        reason = sample.reason or ("duplicate key: an earlier sample has it" if sample.key in seen else "")
        seen.add(sample.key)
        label = index[sample.label] if sample.label else -1
        items.append(Item(sample.key, label, sample.split, reason))
        if not reason and sample.image is not None:
            members[sample.key] = sample.image
    has_split = any(item.split for item in items)
    fingerprint = _digest(["tar", listing.fingerprint_parts])
    source = ImageSource(Path(path), "tar", items, classes, fingerprint, has_split)
    source.shards, source.members = listing.shards, members
    return source


class ThreadedDecoding:
    """Decoding a batch's jobs on ``threads`` threads, a pool started on first use and
    never sent to a DataLoader worker process."""

    threads: int = 1
    _pool: ThreadPoolExecutor | None = None

    def _map(self, function: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        if self.threads <= 1 or len(jobs) <= 1:
            return [function(job) for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cnncodes-decode")
        return list(self._pool.map(function, jobs))

    def close(self) -> None:
        """Stop the decoding threads, if any were started."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __getstate__(self) -> dict[str, Any]:  # sent to DataLoader workers: no thread pool
        return {**self.__dict__, "_pool": None}


class ImageDataset(ThreadedDecoding, torch.utils.data.Dataset):
    """Decodes and transforms items; a failure returns its reason instead of raising.

    Each element is ``(position, tensor or None, reason)`` where ``position`` indexes the
    ``positions`` sequence given at construction (the items' indices in the source).
    """

    def __init__(self, source: ImageSource, positions: Sequence[int], transform: Callable,
                 threads: int = 1) -> None:
        self.source = source
        self.positions = list(positions)
        self.transform = transform
        self.threads = threads
        self._pool = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        position = self.positions[i]
        image, reason = self.source.read(self.source.items[position])
        if image is None:
            return position, None, reason
        return position, self.transform(image), ""

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor | None, str]]:
        """A batch, decoded by ``threads`` threads (the DataLoader's batched fetch).

        JPEG decoding and PIL's resize release the GIL, so a batch decoded in the main
        process between two forward passes uses every core, as the forward pass does,
        instead of one. The items come back in ``indices`` order.
        """
        return self._map(self.__getitem__, indices)


def collate_items(batch: list[tuple[int, torch.Tensor | None, str]]) -> dict[str, Any]:
    """Stack the decoded images; keep the failures aside with their reasons."""
    good = [(p, t) for p, t, _ in batch if t is not None]
    return {
        "positions": [p for p, _ in good],
        "images": torch.stack([t for _, t in good]) if good else None,
        "skipped": [(p, reason) for p, t, reason in batch if t is None],
    }
