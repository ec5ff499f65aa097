"""The layer sweep: default layer sets, one extraction for all layers, table and curve."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cnncodes import CnnCodesError, CodeStore, load_backbone
from cnncodes.cli import main
from cnncodes.studies.sweep import stage_outputs, sweep, sweep_layers


@pytest.fixture(scope="module")
def resnet18():
    return load_backbone("resnet18", "none")


def test_resnet_stages_and_default_layers(resnet18) -> None:
    assert stage_outputs(resnet18) == [
        "layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "layer4.1.relu_1",
    ]
    # layer4 averaged over space *is* the penultimate code (avgpool -> flatten): shown once.
    assert sweep_layers(resnet18) == [
        "layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "flatten",
    ]
    assert sweep_layers(resnet18, "all")[-2:] == ["flatten", "fc"]
    # With max pooling layer4's code differs from the averaged penultimate one.
    assert "layer4.1.relu_1" in sweep_layers(resnet18, "default", pool="max")
    # Explicit specs keep the order given (the extraction cache key of the same call).
    assert sweep_layers(resnet18, "-2, layer3,-2") == ["flatten", "layer3.1.relu_1"]


def test_lite0_and_flat_networks_get_stage_layers() -> None:
    lite0 = load_backbone("efficientnet_lite0", "none")
    assert sweep_layers(lite0) == [
        "blocks.3.2.add", "blocks.4.2.add", "blocks.5.3.add", "blocks.6.0.bn3",
        "global_pool.flatten",
    ]
    # AlexNet is one flat Sequential: stages end where the spatial resolution drops.
    alexnet = load_backbone("alexnet", "none")
    assert stage_outputs(alexnet)[:3] == ["features.1", "features.4", "features.11"]


def test_bad_layer_lists_are_clear_errors(resnet18) -> None:
    with pytest.raises(CnnCodesError, match=r"Layer 'layer9' is not a node of resnet18"):
        sweep_layers(resnet18, "-2,layer9")
    with pytest.raises(CnnCodesError, match=r"No layer in ' , '; give a comma-separated list"):
        sweep_layers(resnet18, " , ")


def test_sweep_extracts_once_and_fits_every_layer(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    result = sweep(
        source=str(tiny_folder), model="resnet18", weights="none", layers="-2,layer2,-1",
        clf="logreg", cv=2, workers=0, out=str(tmp_path / "sweep"),
        store=str(tmp_path / "codes.h5"), progress=True,
    )
    captured = capsys.readouterr()
    assert captured.out == ""  # progress is for stderr; stdout is the command's data
    assert "[sweep] extracting 3 layers in one pass" in captured.err
    assert "[sweep] layer2.1.relu_1 (128-d): cv " in captured.err
    with CodeStore(result.store) as store:
        assert store.layers == ["flatten", "layer2.1.relu_1", "fc"]  # one store, all layers
    table = pd.read_csv(result.table_path)
    assert table["layer"].tolist() == ["layer2.1.relu_1", "flatten", "fc"]  # by depth
    assert table["code_dim"].tolist() == [128, 512, 1000]
    assert table["node_index"].is_monotonic_increasing
    assert table["cv_accuracy"].between(0, 1).all()
    assert result.plot_path.stat().st_size > 0
    assert set(result.run_dirs) == set(table["layer"])
    with Image.open(result.plot_path) as png:
        assert png.width > 500


@pytest.mark.slow  # the session's real extraction (hymenoptera_store) dominates
def test_sweep_command_on_real_codes(hymenoptera_store: Path, runner, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    result = runner.invoke(main, ["sweep", str(hymenoptera_store), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "sweep.csv")
    assert table["layer"].tolist() == ["conv_head", "global_pool.flatten"]  # specs -5, -2
    # Real Lite0 codes separate ants from bees far above chance on the val split.
    assert (table["val_accuracy"] > 0.8).all()
    assert (out / "sweep.png").is_file()
    assert result.stderr == "" and result.stdout.startswith("| layer ")  # -q: the table only


def test_sweep_command_end_to_end_on_real_images(
    hymenoptera: Path, runner, tmp_path: Path
) -> None:
    # 6 ants + 6 bees per split keep the real Lite0 extraction to a few seconds.
    subset = tmp_path / "hym"
    for split in ("train", "val"):
        for label in ("ants", "bees"):
            (subset / split / label).mkdir(parents=True)
            for photo in sorted((hymenoptera / split / label).glob("*.jpg"))[:6]:
                (subset / split / label / photo.name).symlink_to(photo)
    out = tmp_path / "sweep"
    result = runner.invoke(main, [
        "sweep", str(subset), "--layers", "-2,blocks.5", "--workers", "0",
        "--store", str(tmp_path / "codes.h5"), "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "sweep.csv")
    assert table["layer"].tolist() == ["blocks.5.3.add", "global_pool.flatten"]
    assert table["code_dim"].tolist() == [192, 1280]
    assert table["val_accuracy"].between(0, 1).all()
    # stdout is the table alone; progress and where the files went are on stderr
    assert result.stdout.startswith("| layer ") and "| global_pool.flatten |" in result.stdout
    assert "[sweep]" not in result.stdout and "[sweep] extracting 2 layers" in result.stderr
    for name in ("sweep.csv", "sweep.md", "sweep.png"):
        assert f"wrote {out / name}" in result.stderr and (out / name).is_file()


def test_sweep_command_mistakes_exit_2(runner, tmp_path: Path, tiny_folder: Path) -> None:
    result = runner.invoke(main, ["sweep", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert re.fullmatch(r"Error: Sweep source '.*nowhere' does not exist; .*\n", result.output)
    result = runner.invoke(main, ["sweep", str(tiny_folder), "--model", "resnet18",
                                  "--weights", "none", "--layers", "-2,nope"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "Layer 'nope' is not a node of resnet18" in result.output


def test_sweep_layer_keywords_do_not_mix(runner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["sweep", str(tmp_path), "--layer", "all", "--layer", "-2"])
    assert result.exit_code == 2 and "cannot be combined" in result.output
