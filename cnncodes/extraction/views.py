"""Augmented views: extra rows of a code store, each a seeded random view of one image.

``extract --views K`` adds K rows after each *training* image's own row (view 0, the
unaugmented image): view ``v`` is a random resized crop of the decoded image at the
backbone's input size (area ``AUGMENT_SCALE`` of the image, aspect ratio
``AUGMENT_RATIO``, torchvision's sampling rule), flipped left-right with probability 1/2.
Val and test images get no views. Test-time augmentation (``predict --tta K``) gives every
image K views: view 1 is the plain left-right flip of the eval crop, views 2..K are
augmented as above.

Each view's randomness comes from a :class:`torch.Generator` seeded by a hash of (seed,
the image's path in the source, view number): the same view comes out of any run, in any
order, in any process, so a resumed or a sharded extraction (``torchrun``) writes the
views a single run writes. Rows are numbered before any image is read (positions in the
extraction are rows, not images), and the store records each row's image
(``/source_index``: its position in the source listing) and view (``/view``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from ..data.preprocess import Preprocessing
from ..data.sources import ImageSource, Item, ThreadedDecoding
from ..errors import CnnCodesError

__all__ = ["AUGMENT_RATIO", "AUGMENT_SCALE", "VIEW_POLICIES", "ViewDataset", "ViewPlan",
           "view_rows"]

AUGMENT_SCALE = (0.25, 1.0)
"""Share of the image's area a random resized crop keeps (torchvision's default, 0.08,
cuts most of an object away on small data sets; a quarter keeps it recognisable)."""

AUGMENT_RATIO = (3 / 4, 4 / 3)
"""Aspect ratios (width / height) a crop may have before it is resized to a square."""

AUGMENT = (f"random-resized-crop(scale={AUGMENT_SCALE[0]}-{AUGMENT_SCALE[1]},"
           "ratio=3/4-4/3,size=input)+hflip(p=0.5)")

VIEW_POLICIES = ("train", "tta")
"""``train``: views of training images only (``extract --views``); ``tta``: of every
image, view 1 the plain flip (``predict --tta``)."""


@dataclass(frozen=True)
class ViewPlan:
    """How many views of which images, and from which seed.

    Attributes:
        count: extra views per image (0: none, the store of one row per image).
        seed: the seed every view's generator is derived from.
        policy: ``train`` or ``tta`` (see :data:`VIEW_POLICIES`).
    """

    count: int = 0
    seed: int = 0
    policy: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 0:
            raise CnnCodesError(f"views must be 0 or more; got {self.count!r}.")
        if self.policy not in VIEW_POLICIES:
            raise CnnCodesError(
                f"view policy must be one of {', '.join(VIEW_POLICIES)}; got {self.policy!r}.")

    def record(self) -> dict[str, Any]:
        """What the store key and attributes say about the views."""
        augment = AUGMENT if self.policy == "train" else f"view 1: hflip; views 2+: {AUGMENT}"
        return {"count": self.count, "seed": self.seed, "policy": self.policy,
                "augment": augment, "rows": "view 0 = the image itself, then its views"}

    def augments(self, item: Item) -> bool:
        """Whether ``item`` gets views: every image for TTA, else labelled training ones
        (a source without splits counts as training, as ``fit`` counts it)."""
        if self.policy == "tta":
            return True
        return item.label >= 0 and item.split in ("train", "")


def view_rows(items: Sequence[Item], plan: ViewPlan) -> tuple[np.ndarray, np.ndarray]:
    """(source position, view) of every row: each image's own row, then its views."""
    per_item = np.array([1 + (plan.count if plan.augments(item) else 0) for item in items],
                        dtype=np.int64)
    sources = np.repeat(np.arange(len(items), dtype=np.int64), per_item)
    starts = np.cumsum(per_item) - per_item
    views = np.arange(len(sources), dtype=np.int64) - np.repeat(starts, per_item)
    return sources, views


def view_generator(seed: int, path: str, view: int) -> torch.Generator:
    """The generator of one view: the same (seed, path, view) always gives the same one."""
    text = f"{seed}\0{path}\0{view}".encode("utf-8", "surrogateescape")
    number = int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator().manual_seed(number)


def crop_box(width: int, height: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop: torchvision's rule (ten tries
    of an area and a log-uniform ratio, then the centre at the nearest allowed ratio),
    drawn from ``generator`` rather than torch's global one."""
    area = width * height
    log_ratio = (math.log(AUGMENT_RATIO[0]), math.log(AUGMENT_RATIO[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(*AUGMENT_SCALE, generator=generator).item()
        ratio = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    ratio = width / height
    if ratio < AUGMENT_RATIO[0]:
        w, h = width, int(round(width / AUGMENT_RATIO[0]))
    elif ratio > AUGMENT_RATIO[1]:
        h, w = height, int(round(height * AUGMENT_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _Views:
    """One image's row for a view: the eval preprocessing of the image, its flip, or a
    seeded random resized crop (flipped or not) at the input size."""

    def __init__(self, preprocessing: Preprocessing, size: int, plan: ViewPlan,
                 interpolation: InterpolationMode) -> None:
        self.preprocessing, self.size, self.plan = preprocessing, size, plan
        self.interpolation = interpolation

    def __call__(self, image: Image.Image, path: str, view: int) -> torch.Tensor:
        if view == 0:
            return self.preprocessing.image(image)
        if view == 1 and self.plan.policy == "tta":
            return self.preprocessing.image(F.hflip(image))
        generator = view_generator(self.plan.seed, path, view)
        top, left, h, w = crop_box(image.width, image.height, generator)
        crop = F.resized_crop(image, top, left, h, w, [self.size, self.size],
                              interpolation=self.interpolation, antialias=True)
        if torch.rand(1, generator=generator).item() < 0.5:
            crop = F.hflip(crop)
        if not self.preprocessing.split:  # a whole transform: it resizes and crops again
            return self.preprocessing.image(crop)
        return torch.from_numpy(np.array(crop.convert("RGB"), dtype=np.uint8, copy=True))


class ViewDataset(ThreadedDecoding, torch.utils.data.Dataset):
    """:class:`~cnncodes.data.sources.ImageDataset` over rows (image x view): element
    ``(row, tensor or None, reason)``; a batch decodes each image once for all its views."""

    def __init__(self, source: ImageSource, rows: Sequence[int], sources: np.ndarray,
                 views: np.ndarray, transform: _Views, threads: int = 1) -> None:
        self.source, self.rows, self.transform, self.threads = source, list(rows), transform, threads
        self.sources, self.views = sources, views
        self._pool = None

    def __len__(self) -> int:
        return len(self.rows)

    def _item_rows(self, position: int, rows: list[int]) -> list[tuple[int, Any, str]]:
        item = self.source.items[position]
        image, reason = self.source.read(item)
        if image is None:
            return [(row, None, reason) for row in rows]
        return [(row, self.transform(image, item.path, int(self.views[row])), "")
                for row in rows]

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        row = self.rows[i]
        return self._item_rows(int(self.sources[row]), [row])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor | None, str]]:
        """A batch in ``indices`` order, each image decoded once (by ``threads`` threads)."""
        by_image: dict[int, list[int]] = {}
        for i in indices:
            by_image.setdefault(int(self.sources[self.rows[i]]), []).append(self.rows[i])
        done = self._map(lambda job: self._item_rows(*job), list(by_image.items()))
        made = {entry[0]: entry for entries in done for entry in entries}
        return [made[self.rows[i]] for i in indices]


def view_dataset(source: ImageSource, rows: Sequence[int], sources: np.ndarray,
                 views: np.ndarray, preprocessing: Preprocessing, size: int, plan: ViewPlan,
                 threads: int) -> ViewDataset:
    """The dataset of ``rows``, each preprocessed as its view asks."""
    transform = preprocessing.image
    interpolation = getattr(transform, "interpolation", InterpolationMode.BILINEAR)
    return ViewDataset(source, rows, sources, views,
                       _Views(preprocessing, size, plan, interpolation), threads)
