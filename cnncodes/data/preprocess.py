"""A backbone's eval preprocessing, split where each half is cheapest.

torchvision's eval preset (:class:`~torchvision.transforms._presets.ImageClassification`:
resize the short side, centre-crop, convert to float, normalise) runs per image. Its
arithmetic half touches every pixel four times in float32 (convert, divide, copy,
subtract and divide), per image, wherever decoding runs. :func:`split_preprocessing`
keeps the geometry per image and moves the arithmetic to the batch:

- per image (:attr:`Preprocessing.image`): the same PIL resize and centre crop, kept as
  8-bit pixels (height x width x RGB): a quarter of the bytes of float32 to send from a
  decoding worker, pin, and copy to a GPU;
- per batch (:attr:`Preprocessing.batch`), on the device that runs the forward pass:
  the stacked pixels viewed as NCHW, which *is* channels-last memory, so no layout copy
  is needed, then the preset's own operations in its order (to float, divide by 255,
  subtract the mean, divide by the standard deviation).

The result equals the preset's output exactly (tests/test_preprocess.py), so codes, store
keys and peers' codes are unchanged. Any other transform is kept whole, per image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms._presets import ImageClassification

__all__ = ["Preprocessing", "split_preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """A transform split in a per-image and a per-batch half.

    Attributes:
        image: PIL image -> tensor (8-bit HWC pixels when ``split``, else the transform's
            own output).
        batch: stacked ``image`` outputs, already on the forward's device -> the network
            input.
        split: whether the arithmetic runs per batch.
    """

    image: Callable[[Image.Image], torch.Tensor]
    batch: Callable[[torch.Tensor], torch.Tensor]
    split: bool


def split_preprocessing(transform: Any) -> Preprocessing:
    """``transform`` split as the module docstring says, or kept whole when it is not
    torchvision's eval preset."""
    if type(transform) is not ImageClassification:
        return Preprocessing(transform, _identity, False)
    return Preprocessing(_Geometry(transform), _Arithmetic(transform), True)


def _identity(batch: torch.Tensor) -> torch.Tensor:
    return batch


class _Geometry:
    """The preset's resize and centre crop, on the PIL image, as 8-bit HWC pixels."""

    def __init__(self, preset: ImageClassification) -> None:
        self.resize_size, self.crop_size = list(preset.resize_size), list(preset.crop_size)
        self.interpolation, self.antialias = preset.interpolation, preset.antialias

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = F.resize(image, self.resize_size, interpolation=self.interpolation,
                         antialias=self.antialias)
        image = F.center_crop(image, self.crop_size)
        if image.mode != "RGB":  # the preset takes any mode; the model wants 3 channels
            image = image.convert("RGB")
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))


class _Arithmetic:
    """The preset's float conversion and normalisation, on a batch of 8-bit HWC pixels."""

    def __init__(self, preset: ImageClassification) -> None:
        self.mean = torch.tensor(preset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(preset.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        device = pixels.device
        images = pixels.permute(0, 3, 1, 2).to(torch.float32)  # keeps channels-last strides
        return images.div_(255).sub_(self.mean.to(device)).div_(self.std.to(device))
