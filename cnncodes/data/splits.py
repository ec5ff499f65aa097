"""Which images a run chooses on: the source's own splits, and a seeded, stratified
validation carve-out that every strategy shares, keyed by path so that a code store's rows
and a source's items give the same set. Test images are never among them."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from typing import Any

from ..errors import CnnCodesError
from .sources import ImageSource

__all__ = ["carve_validation", "split_positions", "validation_record"]


def split_positions(source: ImageSource) -> dict[str, list[int]]:
    """Positions of the labelled items per split, as the source gives them.

    Items without a split (a folder without train/val/test) count as training items;
    ``val`` is empty when the source has none (see :func:`carve_validation`).

    Raises:
        CnnCodesError: no labelled training image.
    """
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for position, item in enumerate(source.items):
        if item.label >= 0:
            splits.setdefault(item.split or "train", []).append(position)
    if not splits["train"]:
        raise CnnCodesError(
            f"Source {str(source.root)!r} has no labelled training images; fine-tuning needs "
            "class sub-folders (optionally under train/, with val/ and test/ beside it)."
        )
    return splits


def _rank(seed: int, path: str) -> bytes:
    # surrogateescape: names that are not UTF-8 keep their os.fsdecode form in listings
    return hashlib.sha256(f"{seed}\0{path}".encode("utf-8", "surrogateescape")).digest()


def carve_validation(
    paths: Sequence[str], labels: Sequence[int], fraction: float, seed: int
) -> list[str]:
    """The validation share of a training set, stratified by class and keyed by path.

    Within each class the paths are ordered by a seeded hash of the path and the first
    ``round(fraction * n)`` (at least one, none of a class of one) are held out. The
    result depends only on the (path, label) pairs, ``fraction`` and ``seed``, not on their
    order or repetition (a store's augmented views repeat their image's path: the share is
    of images, and a held-out path takes every view of its image with it): a code store's training rows and a source's readable training items give the
    same set, which is how ``compare`` validates all four strategies on the same images.

    Args:
        paths: paths of the training items (relative to the source, as stores keep them).
        labels: their class indices.
        fraction: share held out, in (0, 1).
        seed: another seed gives another set.

    Returns:
        The held-out paths, sorted.
    """
    if not 0 < fraction < 1:
        raise CnnCodesError(f"val_fraction must be in (0, 1); got {fraction!r}.")
    by_class: dict[int, list[str]] = {}
    for path, label in dict.fromkeys(zip(paths, labels, strict=True)):
        by_class.setdefault(int(label), []).append(path)
    held_out: list[str] = []
    for members in by_class.values():
        members.sort(key=lambda path: _rank(seed, path))
        cut = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held_out += members[:cut]
    return sorted(held_out)


def validation_record(
    paths: Collection[str], *, origin: str, fraction: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """What a run writes about the images it chose on (``validation`` in its JSON).

    Args:
        paths: the validation images' paths.
        origin: ``val split`` (the source's own), ``carved from train``, ``carved from
            all`` (a source without splits) or ``given``.
        fraction, seed: the carve-out's settings, when carved.

    Returns:
        origin, fraction, seed, count, the sha256 of the sorted paths (one per line) and,
        unless the source's own val split, the paths themselves.
    """
    ordered = sorted(paths)
    record: dict[str, Any] = {
        "origin": origin, "fraction": fraction, "seed": seed, "count": len(ordered),
        "sha256": hashlib.sha256("\n".join(ordered).encode("utf-8", "surrogateescape")).hexdigest(),
    }
    if origin != "val split":
        record["paths"] = ordered
    return record
