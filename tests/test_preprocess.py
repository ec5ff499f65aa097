"""The split preprocessing (geometry per image, arithmetic per batch) equals the weights'
own transform exactly, on real photos of every shape, and keeps other transforms whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.models import ResNet18_Weights
from torchvision.transforms import Compose, ToTensor

from cnncodes.data.decode import decode_image
from cnncodes.data.preprocess import split_preprocessing
from cnncodes.nets.backbones import lite_transform
from cnncodes.nets.defaults import LITE_VARIANTS


def _photos(hymenoptera: Path) -> list[Image.Image]:
    """Real photos: wide, tall, smaller than the crop (upscaled) and larger, plus a grey one."""
    paths = sorted((hymenoptera / "train").glob("*/*.jpg"))[::3]
    images = [decode_image(path) for path in paths]
    sides = [min(image.size) for image in images]
    assert min(sides) < 224 < max(sides), "want photos both below and above the crop size"
    assert any(i.width > i.height for i in images) and any(i.height > i.width for i in images)
    return [*images, images[0].convert("L")]


@pytest.mark.parametrize("preset", ["lite0", "lite2", "resnet18"])
def test_split_equals_the_preset_exactly(hymenoptera: Path, preset: str) -> None:
    transform = {
        "lite0": lambda: lite_transform(LITE_VARIANTS["efficientnet_lite0"]),
        "lite2": lambda: lite_transform(LITE_VARIANTS["efficientnet_lite2"]),
        "resnet18": lambda: ResNet18_Weights.DEFAULT.transforms(),  # bilinear, ImageNet stats
    }[preset]()
    split = split_preprocessing(transform)
    assert split.split
    photos = _photos(hymenoptera)
    pixels = [split.image(photo) for photo in photos]
    assert all(p.dtype == torch.uint8 and p.shape[-1] == 3 for p in pixels)
    batch = split.batch(torch.stack(pixels))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    expected = torch.stack([transform(photo.convert("RGB")) for photo in photos])
    assert batch.dtype == expected.dtype and batch.shape == expected.shape
    assert torch.equal(batch, expected), f"max difference {(batch - expected).abs().max():.3g}"


def test_other_transforms_stay_whole(hymenoptera: Path) -> None:
    transform = Compose([ToTensor()])
    split = split_preprocessing(transform)
    photo = _photos(hymenoptera)[0]
    assert not split.split and split.image is transform
    stacked = torch.stack([split.image(photo)])
    assert split.batch(stacked) is stacked
