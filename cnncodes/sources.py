"""Image sources: ImageFolder trees, CSV manifests and MNIST-style idx files.

A source is a list of :class:`Item` (where the image is, its label, its split) plus the
class names and a fingerprint that changes when any file changes. Decoding happens later,
in :class:`ImageDataset`, where an unreadable file becomes a reported skip, never an abort.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CnnCodesError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageDataset",
    "ImageSource",
    "Item",
    "open_source",
]

# The extensions torchvision's ImageFolder reads. Anything else found among the images
# (the GIF placeholder in hymenoptera, a stray .txt) is listed as skipped, with the reason.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
DRAFT_MIN_SIDE = 512
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


@dataclass(frozen=True)
class Item:
    """One image of a source. ``path`` is relative to the source root; label -1 = unknown."""

    path: str
    label: int
    split: str = ""
    skip_reason: str = ""


@dataclass
class ImageSource:
    """What to extract: items, class names and how to open an item."""

    root: Path
    kind: str
    items: list[Item]
    classes: list[str]
    fingerprint: str
    has_split: bool
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.root.stem if self.kind == "csv" else self.root.name

    def open_image(self, item: Item) -> Image.Image:
        """Decode one item to an RGB PIL image (raises on unreadable files)."""
        if self.kind == "idx":
            split, index = item.path.split("#")
            return Image.fromarray(self.arrays[split][int(index)], mode="L").convert("RGB")
        with Image.open(self.root / item.path) as image:
            scale = min(image.size) // DRAFT_MIN_SIDE
            if image.format == "JPEG" and scale >= 2:
                # Let libjpeg decode big photos at a reduced scale (still at least twice
                # the network input), which is several times faster than a full decode.
                image.draft("RGB", (image.width // scale, image.height // scale))
            return image.convert("RGB")

    def read(self, item: Item) -> tuple[Image.Image | None, str]:
        """Decode one item, or ``(None, reason)`` for a file that cannot be used.

        This is the bad-image policy every reader shares: a listed skip keeps its reason,
        a file that fails to decode is reported as unreadable, nothing raises.
        """
        if item.skip_reason:
            return None, item.skip_reason
        try:
            return self.open_image(item), ""
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            reason = str(error).split("\n")[0] or error.__class__.__name__
            return None, f"unreadable image: {reason}"

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            key = item.split or "all"
            counts[key] = counts.get(key, 0) + 1
        return {"kind": self.kind, "classes": len(self.classes), "items": counts}


def open_source(path: str | os.PathLike[str], *, limit: int | None = None) -> ImageSource:
    """Read the listing of an image source; no image is decoded here.

    Args:
        path: an image folder (class sub-folders, optionally under train/val/test), a
            folder of images without classes (for prediction), a CSV manifest with columns
            ``path,label[,split]``, or a folder with MNIST-style ``*-idx*-ubyte.gz`` files.
        limit: keep only the first ``limit`` images of each split (quick experiments).

    Raises:
        CnnCodesError: the path does not exist, or holds nothing cnncodes can read.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CnnCodesError(
            f"Source {str(path)!r} does not exist; give an image folder, a CSV manifest "
            "(path,label[,split]) or a folder of MNIST-style idx files."
        )
    if limit is not None and limit < 1:
        raise CnnCodesError(f"limit must be a positive number of images; got {limit!r}.")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise CnnCodesError(
                f"Source {str(path)!r} is a file but not a .csv manifest; give a folder of "
                "images or a CSV with columns path,label[,split]."
            )
        source = _open_csv(root)
    elif all((root / name).exists() for name in IDX_FILES["train"]):
        source = _open_idx(root)
    else:
        source = _open_folder(root)
    if limit is not None:
        kept, seen = [], dict.fromkeys([it.split for it in source.items], 0)
        for item in source.items:
            if seen[item.split] < limit:
                kept.append(item)
                seen[item.split] += 1
        source.items = kept
        source.fingerprint = _digest([source.fingerprint, f"limit={limit}"])
    if not any(not item.skip_reason for item in source.items):
        raise CnnCodesError(
            f"Source {str(path)!r} holds no readable images (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)}); check the path."
        )
    return source


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()[:16]


def _stat_key(path: Path) -> list[Any]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def _files(folder: Path) -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [Path(directory) / n for n in sorted(names) if not n.startswith(".")]
    return files


def _item(root: Path, path: Path, label: int, split: str) -> Item:
    relative = path.relative_to(root).as_posix()
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        reason = f"not an image type cnncodes reads ({path.suffix or 'no extension'})"
        return Item(relative, label, split, reason)
    return Item(relative, label, split)


def _open_folder(root: Path) -> ImageSource:
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = [d for d in subdirs if d.lower() in SPLITS]
    has_split = bool(split_dirs)
    if has_split:
        parents = [(root / d, d.lower()) for d in split_dirs]
        classes = sorted({
            c.name for parent, _ in parents for c in parent.iterdir()
            if c.is_dir() and not c.name.startswith(".")
        })
    else:
        parents = [(root, "")]
        classes = subdirs
    items: list[Item] = []
    if not classes:  # a flat folder of images: unlabeled, for prediction
        items = [_item(root, f, -1, "") for f in _files(root)]
    for parent, split in parents:
        for label, name in enumerate(classes):
            if (parent / name).is_dir():
                items += [_item(root, f, label, split) for f in _files(parent / name)]
    order = {s: i for i, s in enumerate(SPLITS)}
    items.sort(key=lambda it: (order.get(it.split, -1), it.path))
    fingerprint = _digest(
        ["folder", classes] + [[it.path, it.label, it.split, _stat_key(root / it.path)] for it in items]
    )
    return ImageSource(root.resolve(), "folder", items, classes, fingerprint, has_split)


def _open_csv(manifest: Path) -> ImageSource:
    base = manifest.parent
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in columns:
            raise CnnCodesError(
                f"Manifest {str(manifest)!r} has columns {columns}; it needs a header with "
                "'path' and, for training, 'label' (optionally 'split')."
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    names = sorted({row.get("label", "") for row in rows} - {""})
    index = {name: i for i, name in enumerate(names)}
    items = []
    for number, row in enumerate(rows, start=2):
        split = row.get("split", "").lower()
        if split and split not in SPLITS:
            raise CnnCodesError(
                f"Manifest {str(manifest)!r} line {number}: split {row['split']!r} is not one "
                f"of {', '.join(SPLITS)}."
            )
        target = (base / row["path"]).resolve()
        try:
            relative = target.relative_to(base.resolve()).as_posix()
        except ValueError:
            relative = str(target)
        item = Item(relative, index.get(row.get("label", ""), -1), split)
        if not target.is_file():
            item = Item(relative, item.label, split, "file not found")
        elif target.suffix.lower() not in IMAGE_EXTENSIONS:
            item = Item(relative, item.label, split, f"not an image type cnncodes reads ({target.suffix})")
        items.append(item)
    stats = [_stat_key(base / it.path) if not it.skip_reason else None for it in items]
    fingerprint = _digest(["csv", manifest.read_text(encoding="utf-8"), stats])
    has_split = any(it.split for it in items)
    return ImageSource(manifest.resolve(), "csv", items, names, fingerprint, has_split)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


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


class ImageDataset(torch.utils.data.Dataset):
    """Decodes and transforms items; a failure returns its reason instead of raising.

    Each element is ``(position, tensor or None, reason)`` where ``position`` indexes the
    ``positions`` sequence given at construction (the items' indices in the source).
    """

    def __init__(self, source: ImageSource, positions: Sequence[int], transform: Callable) -> None:
        self.source = source
        self.positions = list(positions)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        position = self.positions[i]
        image, reason = self.source.read(self.source.items[position])
        if image is None:
            return position, None, reason
        return position, self.transform(image), ""


def collate_items(batch: list[tuple[int, torch.Tensor | None, str]]) -> dict[str, Any]:
    """Stack the decoded images; keep the failures aside with their reasons."""
    good = [(p, t) for p, t, _ in batch if t is not None]
    return {
        "positions": [p for p, _ in good],
        "images": torch.stack([t for _, t in good]) if good else None,
        "skipped": [(p, reason) for p, t, reason in batch if t is None],
    }
