"""Saliency, Grad-CAM, activations and filters: maths on tiny models, real images end to end."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms._presets import ImageClassification

from cnncodes import CnnCodesError
from cnncodes.cli import main
from cnncodes.explainers.explain import (
    activation_maps,
    explain,
    first_conv_filters,
    gradcam,
    load_image,
    resolve_target,
    saliency,
)
from cnncodes.nets.backbones import Backbone

# Val images, classified correctly by the ImageNet head ('ant' 310 / 'bee' 309), in which
# the insect fills the middle of the centre crop and the border is background; chosen by
# looking at the images and at their saliency and Grad-CAM PNGs.
CENTRAL_INSECTS = (
    "val/ants/1337725712_2eb53cd742.jpg",
    "val/ants/153783656_85f9c3ac70.jpg",
    "val/ants/854534770_31f6156383.jpg",
    "val/bees/10870992_eebeeb3a12.jpg",
    "val/bees/1297972485_33266a18d9.jpg",
    "val/bees/151594775_ee7dc17b60.jpg",
)


def tiny_backbone(categories: tuple[str, ...] = ("cat", "dog", "tiger cat")) -> Backbone:
    """A small random conv net with three classes, traced by torchvision's FX."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1), relu1=nn.ReLU(),
        conv2=nn.Conv2d(4, 6, 3, padding=1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(6, len(categories)),
    )).eval()
    transform = ImageClassification(crop_size=16, resize_size=16)
    return Backbone("tiny", model, transform, "none", "", "torchvision", list(categories))


def centre_to_ring(heat: np.ndarray) -> float:
    """Mean of the central half (middle half of each side) over the mean of the outer eighth."""
    h, w = heat.shape
    centre = heat[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean()
    ring = np.ones_like(heat, dtype=bool)
    ring[h // 8 : h - h // 8, w // 8 : w - w // 8] = False
    return float(centre / heat[ring].mean())


# --- the maths --------------------------------------------------------------------------------


def test_saliency_equals_the_gradient_computed_by_hand() -> None:
    torch.manual_seed(1)
    first, second = nn.Linear(3 * 5 * 5, 8), nn.Linear(8, 4)
    model = nn.Sequential(nn.Flatten(), first, nn.Tanh(), second).eval()
    x = torch.randn(3, 5, 5)
    for target in range(4):
        # d logit_c / dx = W2[c] * (1 - tanh(W1 x + b1)^2) @ W1
        hidden = torch.tanh(first.weight @ x.reshape(-1) + first.bias)
        by_hand = ((second.weight[target] * (1 - hidden**2)) @ first.weight).reshape(3, 5, 5)
        expected = by_hand.abs().amax(dim=0).detach().numpy()
        result = saliency(model, x, target)
        np.testing.assert_allclose(result.map, expected, rtol=1e-5, atol=1e-7)
        assert result.target == target
        logits = model(x[None])[0].detach()
        assert result.score == pytest.approx(float(logits[target]), rel=1e-5)
    assert saliency(model, x).target == int(model(x[None]).argmax())


def test_gradcam_is_nonnegative_at_input_size_and_matches_hooks() -> None:
    backbone = tiny_backbone()
    x = torch.randn(1, 3, 16, 16)
    result = gradcam(backbone, x, layer="relu2", target=2)
    assert result.map.shape == (16, 16)
    assert result.map.min() >= 0 and result.map.max() == pytest.approx(1.0)
    assert result.layer == "relu2" and result.target == 2

    # The same quantity through forward hooks instead of FX.
    captured = {}
    handle = backbone.model.relu2.register_forward_hook(lambda m, i, o: captured.update(a=o))
    logits = backbone.model(x.requires_grad_(True))
    handle.remove()
    (gradient,) = torch.autograd.grad(logits[0, 2], captured["a"])
    cam = torch.relu((gradient[0].mean((1, 2))[:, None, None] * captured["a"][0]).sum(0))
    cam = F.interpolate(cam[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.map, (cam / cam.max()).detach().numpy(), atol=1e-5)


def test_gradcam_and_activations_refuse_layers_without_a_map() -> None:
    backbone = tiny_backbone()
    x = torch.randn(1, 3, 16, 16)
    for layer in ("flatten", "-1", "pool"):  # the code, the logits, a 1x1 pooled map
        with pytest.raises(CnnCodesError, match=r"not a conv map .*conv layer, e\.g\. 'relu2'"):
            gradcam(backbone, x, layer=layer)
    with pytest.raises(CnnCodesError, match="activation grid needs a conv layer"):
        activation_maps(backbone, x, "flatten")
    with pytest.raises(CnnCodesError, match=r"Layer 'nope' is not a node of tiny"):
        gradcam(backbone, x, layer="nope")


def test_activation_maps_are_sorted_most_active_first() -> None:
    backbone = tiny_backbone()
    name, maps, channels = activation_maps(backbone, torch.randn(1, 3, 16, 16), "relu1")
    assert name == "relu1" and maps.shape == (4, 16, 16)
    means = maps.mean(axis=(1, 2))
    assert np.all(np.diff(means) <= 0)
    assert sorted(channels.tolist()) == [0, 1, 2, 3]


def test_first_conv_filters_and_targets() -> None:
    backbone = tiny_backbone()
    name, kernels = first_conv_filters(backbone)
    assert name == "conv1" and kernels.shape == (4, 3, 3, 3)
    logits = torch.tensor([[0.1, 3.0, 0.2]])
    cats = backbone.categories
    assert resolve_target(None, logits, cats) == 1
    assert resolve_target("Tiger Cat", logits, cats) == 2
    assert resolve_target("0", logits, cats) == 0
    with pytest.raises(CnnCodesError, match=r"Target class 5 is out of range; the model has 3"):
        resolve_target(5, logits, cats)
    several = r"Target 'ca' matches several classes \(did you mean 'cat', 'tiger cat'\?\)"
    with pytest.raises(CnnCodesError, match=several):
        resolve_target("ca", logits, cats)
    with pytest.raises(CnnCodesError, match=r"Target 'zebra' matches no class"):
        resolve_target("zebra", logits, cats)


def test_unreadable_and_missing_images_are_one_line_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(CnnCodesError, match=r"Image '.*broken\.jpg' cannot be read \(") as info:
        load_image(broken)
    assert "\n" not in str(info.value)
    with pytest.raises(CnnCodesError, match=r"Image '.*missing\.png' does not exist"):
        load_image(tmp_path / "missing.png")


def test_explain_writes_one_png_per_image_without_name_clashes(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / folder / "same.png")
    images = (str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png"))
    paths = explain(kind="saliency", images=images, model="resnet18", weights="none",
                    out=str(tmp_path / "out"))
    assert [p.name for p in paths] == ["same-saliency.png", "same-saliency-2.png"]
    assert all(p.stat().st_size > 0 for p in paths)


# --- real images ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    from cnncodes import load_backbone

    return load_backbone()


def test_maps_of_central_insects_weigh_the_centre_over_the_border(
    hymenoptera: Path, lite0: Backbone
) -> None:
    from cnncodes.explainers.explain import preprocess

    for relative in CENTRAL_INSECTS:
        x = preprocess(lite0, load_image(hymenoptera / relative))
        expected = 310 if "/ants/" in relative else 309  # ImageNet 'ant', 'bee'
        sal = saliency(lite0.model, x, None, lite0.categories)
        cam = gradcam(lite0, x)
        assert sal.predicted == expected, relative
        assert centre_to_ring(sal.map) > 1.0, relative
        assert centre_to_ring(cam.map) > 1.0, relative


@pytest.mark.parametrize("kind", ["saliency", "gradcam", "activations", "filters"])
def test_every_explain_command_end_to_end_on_a_real_image(
    kind: str, hymenoptera: Path, runner, tmp_path: Path
) -> None:
    image = str(hymenoptera / CENTRAL_INSECTS[3])  # a bee
    args = ["explain", kind, "--out", str(tmp_path)]
    args += [] if kind == "filters" else [image]
    if kind == "activations":
        args += ["--layer", "-20", "--top", "8"]
    if kind == "saliency":
        args += ["--target", "bee"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    printed = [Path(line) for line in result.output.split() if line.endswith(".png")]
    assert len(printed) == 1 and printed[0].is_file() and printed[0].parent == tmp_path
    with Image.open(printed[0]) as png:
        assert png.width > 300 and png.height > 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gradcam", "{image}", "--model", "resnet18", "--weights", "none", "--layer", "layer9"],
         r"Error: Layer 'layer9' is not a node of resnet18.*run 'cnncodes layers resnet18'"),
        (["gradcam", "{image}", "--model", "resnet18", "--weights", "none", "--layer", "-2"],
         r"Error: Layer 'flatten' of resnet18 gives output shape \(512,\), not a conv map"),
        (["activations", "{image}", "--model", "resnet18", "--weights", "none", "--layer", "fc"],
         r"Error: Layer 'fc' of resnet18 .* activation grid needs a conv layer"),
        (["saliency", "{broken}"], r"Error: Image '.*broken\.jpg' cannot be read"),
        (["saliency", "{image}", "--model", "resnet18", "--weights", "none", "--target", "1000"],
         r"Error: Target class 1000 is out of range; the model has 1000 classes"),
    ],
)
def test_explain_mistakes_are_one_line_errors_with_exit_code_2(
    args: list[str], message: str, runner, tmp_path: Path
) -> None:
    import re

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(image)
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    filled = [a.format(image=image, broken=broken) for a in args]
    result = runner.invoke(main, ["explain", *filled, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.output


def test_run_option_explains_a_fine_tuned_model_and_its_classes(
    tiny_folder: Path, runner, tmp_path: Path
) -> None:
    from cnncodes import finetune
    from cnncodes.explainers.explain import backbone_from_run, preprocess

    run = finetune(source=str(tiny_folder), strategy=3, model="resnet18", weights="none",
                   epochs=1, batch_size=4, out=str(tmp_path / "run"), progress=False).run_dir
    backbone = backbone_from_run(run)
    assert backbone.categories == ["cats", "dogs"]
    image = tiny_folder / "dogs" / "dogs_0.jpg"
    x = preprocess(backbone, load_image(image))
    assert gradcam(backbone, x, "layer4", target="dogs").target == 1
    assert saliency(backbone.model, x).target in (0, 1)  # the run's 2 classes, not ImageNet's
    result = runner.invoke(main, ["explain", "gradcam", str(image), "--run", str(run),
                                  "--layer", "layer4", "--target", "dogs",
                                  "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "dogs_0-gradcam-layer4.1.relu_1.png").is_file()


# --- integrated gradients and fit runs ---------------------------------------------------------


def test_integrated_gradients_of_a_linear_model_are_input_times_weight() -> None:
    from cnncodes.explainers.explain import integrated_gradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 2)).eval()
    x, start = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    result = integrated_gradients(model, x, target=1, baseline=start, steps=3)
    expected = ((x - start)[0] * model[1].weight[1].view(3, 5, 5)).abs().sum(0)
    np.testing.assert_allclose(result.map, expected.detach().numpy(), rtol=1e-5)
    assert result.target == 1 and abs(result.delta) < 1e-4


def test_integrated_gradients_noise_baseline_follows_its_seed() -> None:
    from cnncodes.explainers.explain import ig_baseline, integrated_gradients

    backbone = tiny_backbone()
    x = torch.randn(1, 3, 16, 16)
    maps = [integrated_gradients(backbone.model, x, 0, baseline=ig_baseline(backbone, x, "noise", seed),
                                 steps=4).map for seed in (1, 1, 2)]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.allclose(maps[0], maps[2])
    with pytest.raises(CnnCodesError, match=r"Baseline 'grey' is not one of black, mean, noise"):
        ig_baseline(backbone, x, "grey")


def test_black_baseline_is_black_under_a_normalize_inside_a_compose() -> None:
    """timm-style transforms keep mean and std in a Normalize step of a Compose; the black
    baseline must be black after that normalisation, not the normalised mean colour."""
    from dataclasses import replace

    from torchvision import transforms

    from cnncodes.explainers.explain import ig_baseline

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    backbone = replace(tiny_backbone(), transform=transforms.Compose(
        [transforms.Resize(16), transforms.ToTensor(), transforms.Normalize(mean, std)]))
    x = torch.randn(1, 3, 4, 4)
    expected = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    torch.testing.assert_close(ig_baseline(backbone, x, "black"), expected)


def test_integrated_gradients_on_a_real_photo_add_up_and_weigh_the_insect(
    hymenoptera: Path, lite0: Backbone
) -> None:
    from cnncodes.explainers.explain import ig_baseline, integrated_gradients, preprocess

    x = preprocess(lite0, load_image(hymenoptera / CENTRAL_INSECTS[3]))
    start = ig_baseline(lite0, x, "black")
    coarse, result = (integrated_gradients(lite0.model, x, "bee", lite0.categories, baseline=start,
                                           steps=steps) for steps in (8, 64))
    with torch.no_grad():
        start_score = float(lite0.model(start)[0, 309])
    assert result.target == 309 == result.predicted
    # Completeness: the attributions add up to the score difference, closer with more steps.
    assert abs(result.delta) < min(abs(coarse.delta), 0.05 * abs(result.score - start_score))
    assert centre_to_ring(result.map) > 1.0


def test_explain_takes_a_fit_run_as_its_probe_as_one_network(
    hymenoptera: Path, hymenoptera_fit_run: Path, runner, tmp_path: Path
) -> None:
    from cnncodes import load_model
    from cnncodes.data.store import CodeStore
    from cnncodes.explainers.explain import backbone_from_run, preprocess

    backbone = backbone_from_run(hymenoptera_fit_run)
    assert backbone.categories == ["ants", "bees"]
    with CodeStore(hymenoptera_fit_run.parent / "codes.h5") as store:
        model = load_model(hymenoptera_fit_run)
        paths = [str(p) for p in store.file_paths]
        row = next(i for i, p in enumerate(paths) if p.startswith("val/bees/"))
        expected = model.pipeline.predict_proba(model.codes(store)[row:row + 1])[0, 1]
    image = hymenoptera / paths[row]
    cam = gradcam(backbone, preprocess(backbone, load_image(image)), target="bees")
    assert cam.target == 1 and cam.map.max() == pytest.approx(1.0)
    assert cam.probability == pytest.approx(expected, abs=1e-5)  # the pipeline's own number
    for args in (["gradcam", "--layer", "blocks.5", "--target", "bees"],
                 ["integrated-gradients", "--steps", "4", "--baseline", "noise"],
                 ["saliency"]):
        result = runner.invoke(main, ["explain", args[0], str(image), *args[1:],
                                      "--run", str(hymenoptera_fit_run), "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        printed = Path(result.stdout.strip())
        assert printed.is_file() and printed.name.startswith(f"{image.stem}-{args[0]}")
