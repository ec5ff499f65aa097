"""Backbones, weights loading and layer resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from cnncodes import CnnCodesError, load_backbone
from cnncodes.nets.backbones import torchvision_cache_path
from cnncodes.nets.layers import (
    CodeExtractor,
    list_layers,
    pool_codes,
    resolve_layer,
    resolve_layers,
)


@pytest.mark.parametrize(
    ("model", "dim"),
    [("resnet18", 512), ("alexnet", 4096), ("vgg16", 4096), ("efficientnet_lite0", 1280),
     ("efficientnet_lite1", 1280), ("efficientnet_lite2", 1280)],
)
def test_penultimate_code_sizes(model: str, dim: int) -> None:
    backbone = load_backbone(model, "none")
    (name,) = resolve_layers(backbone, [-2])
    extractor = CodeExtractor(backbone, [name])
    with torch.inference_mode():
        codes = extractor(torch.zeros(2, 3, 224, 224))
    assert codes[name].shape == (2, dim)


def test_lite0_real_weights_recognise_ants_and_bees(hymenoptera: Path) -> None:
    backbone = load_backbone()
    assert backbone.weights_sha256.startswith("579344248a93e230")
    images = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:4] + sorted(
        (hymenoptera / "val" / "ants").glob("*.jpg")
    )[:4]
    batch = torch.stack([backbone.transform(Image.open(p).convert("RGB")) for p in images])
    with torch.inference_mode():
        top5 = backbone.model(batch).topk(5).indices
    hits = sum(
        {"ant", "bee"} & {backbone.categories[i] for i in row.tolist()} != set() for row in top5
    )
    assert hits >= 6, "ImageNet top-5 should name 'ant' or 'bee' for most hymenoptera photos"


def test_torchvision_weights_load_from_cache_without_network(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    spec = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet18()
    path = torchvision_cache_path(spec.url)
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    backbone = load_backbone("resnet18", "IMAGENET1K_V1")
    assert backbone.weights == "IMAGENET1K_V1"
    assert torch.equal(backbone.model.fc.weight, reference.fc.weight)
    assert backbone.transform.resize_size == spec.transforms().resize_size


def test_missing_torchvision_weights_name_the_cache_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(
        torchvision.models._api.WeightsEnum, "get_state_dict",
        lambda self, *a, **k: (_ for _ in ()).throw(__import__("urllib").error.URLError("offline")),
    )
    with pytest.raises(CnnCodesError, match=r"resnet18 IMAGENET1K_V1 are not cached.*hub/checkpoints/resnet18-"):
        load_backbone("resnet18", "IMAGENET1K_V1")


def test_user_checkpoint_and_mismatch(tmp_path) -> None:
    model = torchvision.models.resnet18(num_classes=3)
    good = tmp_path / "mine.pth"
    torch.save({"state_dict": model.state_dict()}, good)
    backbone = load_backbone("resnet18", str(good))
    assert backbone.model.fc.out_features == 3
    assert torch.equal(backbone.model.conv1.weight, model.conv1.weight)
    assert backbone.weights.startswith("file:") and len(backbone.weights_sha256) == 64
    with pytest.raises(CnnCodesError, match="does not fit alexnet: keys"):
        load_backbone("alexnet", str(good))
    with pytest.raises(CnnCodesError, match="does not exist"):
        load_backbone("resnet18", str(tmp_path / "missing.pth"))


def test_unknown_model_and_weights() -> None:
    with pytest.raises(CnnCodesError, match=r"Unknown model 'resnet19'.*cnncodes models"):
        load_backbone("resnet19")
    with pytest.raises(CnnCodesError, match=r"Unknown weights 'IMAGENET9K' for resnet18; choose one of DEFAULT, IMAGENET1K_V1"):
        load_backbone("resnet18", "IMAGENET9K")


def test_layer_resolution_rules() -> None:
    backbone = load_backbone("resnet18", "none")
    assert resolve_layer(backbone, -1) == "fc"
    assert resolve_layer(backbone, "-2") == "flatten"
    assert resolve_layer(backbone, "layer4") == "layer4.1.relu_1"
    assert resolve_layer(backbone, "avgpool") == "avgpool"
    with pytest.raises(CnnCodesError, match=r"Layer -99 is out of range for resnet18 \(valid -70..69\); run 'cnncodes layers resnet18'"):
        resolve_layer(backbone, -99)
    with pytest.raises(CnnCodesError, match=r"Layer 'layer9' is not a node of resnet18"):
        resolve_layer(backbone, "layer9")
    infos = list_layers(backbone)
    assert infos[-2].name == "flatten" and infos[-2].shape == (512,)
    assert infos[-4].shape == (512, 7, 7)


def test_pooling() -> None:
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool_codes(maps, "avg"), maps.mean(dim=(2, 3)))
    assert torch.equal(pool_codes(maps, "max"), maps.amax(dim=(2, 3)))
    assert pool_codes(maps, "avgmax").shape == (2, 6)
    assert pool_codes(maps, "none").shape == (2, 12)
    with pytest.raises(CnnCodesError, match="Pooling 'sum' is not one of avg, max, avgmax, none"):
        pool_codes(maps, "sum")


def test_timm_models_use_the_same_interface() -> None:
    backbone = load_backbone("timm:resnet18", "none")
    assert backbone.family == "timm" and backbone.weights == "none"
    (name,) = resolve_layers(backbone, [-2])
    with torch.inference_mode():
        codes = CodeExtractor(backbone, [name])(torch.zeros(1, 3, 224, 224))
    assert codes[name].shape == (1, 512)
    assert backbone.transform.mean == [0.485, 0.456, 0.406]
    with pytest.raises(CnnCodesError, match="Unknown timm model 'resnet1800'"):
        load_backbone("timm:resnet1800", "none")
