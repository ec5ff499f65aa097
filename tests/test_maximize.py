"""Activation maximisation and DeepDream on the real Lite0 weights and a real photo.

Activations are read back here through forward hooks on the modules themselves, not through
the FX tap that the optimiser uses, so the rises below are measured independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cnncodes import CnnCodesError
from cnncodes.cli import main
from cnncodes.explainers.maximize import maximize_activation, parse_channels
from cnncodes.nets.backbones import load_backbone

BEE = "val/bees/10870992_eebeeb3a12.jpg"
LAYER = "blocks.5.0.bn1"  # 1x1 expansion + BN + ReLU6: channel means lie in [0, 6]


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0", "DEFAULT")


def hooked_output(backbone, module_name: str, pixels: np.ndarray) -> torch.Tensor:
    """``module_name``'s output for ``[N, H, W, 3]`` pixels in [0, 1], by a forward hook
    (Lite0 normalises with mean 0.5 and std 0.5)."""
    module = dict(backbone.model.named_modules())[module_name]
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            logits = backbone.model((x - 0.5) / 0.5)
    finally:
        handle.remove()
    return seen[0] if seen else logits


def test_channel_lists_parse_and_bad_ones_name_the_layer_width() -> None:
    assert parse_channels("0-3", 8, "L") == [0, 1, 2, 3]
    assert parse_channels(" 5, 1-2 ,5", 8, "L") == [5, 1, 2]
    with pytest.raises(CnnCodesError, match=r"Channel 9 is out of range: layer 'L' of m has "
                       r"8 channels \(0\.\.7\)"):
        parse_channels("6-9", 8, "L", "m")
    with pytest.raises(CnnCodesError, match="runs backwards"):
        parse_channels("4-2", 8, "L")
    with pytest.raises(CnnCodesError, match=r"not a list of indices.*'0-7'"):
        parse_channels("first", 8, "L")


def test_maximising_two_channels_raises_their_mean_activation_far_above_the_noise(lite0) -> None:
    # Observed (seeds 0-2, 24 steps at 128 px): starts 0.004-0.115, finals 3.1-3.7 of at
    # most 6 (ratios 29x and more, rises 3.0 and more).
    result = maximize_activation(lite0, LAYER, [0, 1], steps=24, size=128, seed=0,
                                 progress=False)
    assert result.layer == LAYER and result.labels == ["channel 0", "channel 1"]
    images = result.images
    assert images.shape == (2, 128, 128, 3) and images.min() >= 0 and images.max() <= 1
    maps = hooked_output(lite0, LAYER, images)
    measured = maps.mean(dim=(2, 3))[[0, 1], [0, 1]].numpy()
    np.testing.assert_allclose(measured, result.final, rtol=1e-4, atol=1e-5)
    assert (result.final >= 10 * result.start).all(), (result.start, result.final)
    assert (result.final - result.start >= 1.5).all(), (result.start, result.final)
    # Each image excites its own channel more than the other image does.
    assert measured[0] > float(maps[1, 0].mean()) and measured[1] > float(maps[0, 1].mean())


def test_the_seed_makes_the_images_reproducible(lite0) -> None:
    def run(seed: int) -> np.ndarray:
        return maximize_activation(lite0, LAYER, [3], steps=3, size=64, seed=seed,
                                   progress=False).images

    first = run(7)
    np.testing.assert_array_equal(first, run(7))
    assert np.abs(first - run(8)).mean() > 1e-3


def test_maximising_a_class_logit_makes_the_network_see_that_class(lite0) -> None:
    bee = lite0.categories.index("bee")
    result = maximize_activation(lite0, -1, [bee], steps=16, size=128, progress=False)
    logits = hooked_output(lite0, "classifier", result.images)[0]
    assert float(logits[bee]) == pytest.approx(float(result.final[0]), rel=1e-4, abs=1e-4)
    assert result.final[0] - result.start[0] > 10, (result.start, result.final)
    assert int(logits.argmax()) == bee


def test_maximize_command_writes_a_grid_and_a_table_and_repeats_itself(
    runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["explain", "maximize", "--layer", "-50", "--channels", "2,0", "--steps", "4",
            "--size", "64", "--seed", "3", "-q"]
    first = runner.invoke(main, [*args, "--out", "a"])
    assert first.exit_code == 0, first.output
    png, table = (Path(line) for line in first.stdout.split())
    assert png.name == f"efficientnet_lite0-maximize-{LAYER}.png" and png.is_file()
    rows = pd.read_csv(table)
    assert list(rows["unit"]) == [2, 0] and set(rows["layer"]) == {LAYER}
    # -q: no progress and no summary; only a warning may remain (a channel whose ReLU
    # never opened in 4 steps).
    assert all("stayed at" in line for line in first.stderr.splitlines()), first.stderr
    second = runner.invoke(main, [*args, "--out", "b"])
    assert second.exit_code == 0, second.output
    assert Path("b", table.name).read_bytes() == table.read_bytes()
    assert Path("b", png.name).read_bytes() == png.read_bytes()


def test_dream_amplifies_the_layer_on_a_real_photo(
    hymenoptera: Path, lite0, runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    photo = hymenoptera / BEE
    result = runner.invoke(main, ["explain", "dream", str(photo), "--layer", "blocks.3",
                                  "--octaves", "2", "--steps", "8", "--size", "160",
                                  "--out", "out"])
    assert result.exit_code == 0, result.output
    dreamed, beside = (Path(line) for line in result.stdout.split())
    assert dreamed.name == "10870992_eebeeb3a12-dream-blocks.3.2.add.png"
    assert beside.is_file() and "activation RMS" in result.stderr
    with Image.open(dreamed) as png:
        after = np.asarray(png.convert("RGB"), dtype=np.float32)[None] / 255
    with Image.open(photo) as original:
        before = np.asarray(original.convert("RGB").resize(
            (after.shape[2], after.shape[1]), Image.BILINEAR), dtype=np.float32)[None] / 255
    rms = [float(hooked_output(lite0, "blocks.3.2", p).pow(2).mean().sqrt())
           for p in (before, after)]
    # Observed: 6.55 -> 10.48 (1.60x; 1.48-1.78x on three val photos), mean change 0.08.
    assert rms[1] > 1.25 * rms[0], rms
    assert np.abs(after - before).mean() < 0.2  # still the photo, not a new image


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["maximize", "--layer", "bn2", "--channels", "0-5000"],
         r"^Error: Channel 5000 is out of range: layer 'bn2' of efficientnet_lite0 has 1280 "
         r"channels \(0\.\.1279\)"),
        (["maximize", "--layer", "no_such_node"],
         r"^Error: Layer 'no_such_node' is not a node of efficientnet_lite0"),
        (["maximize", "--class", "bee", "--layer", "bn2"],
         r"^Error: --class maximises class logits, so --layer and --channels do not apply"),
        (["maximize", "--class", "no such animal"],
         r"^Error: Target 'no such animal' matches no class"),
        (["dream", "{missing}", "--layer", "blocks.3"],
         r"^Error: Image '.*missing\.jpg' does not exist"),
    ],
)
def test_mistakes_are_one_line_errors_with_exit_code_2(
    args: list[str], message: str, runner, tmp_path: Path
) -> None:
    import re

    filled = [a.format(missing=tmp_path / "missing.jpg") for a in args]
    result = runner.invoke(main, ["explain", *filled, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.output
    assert result.stdout == ""


def test_maximize_takes_a_run_and_its_class_names(tiny_folder: Path, runner,
                                                   tmp_path: Path) -> None:
    from cnncodes import finetune

    run = finetune(source=str(tiny_folder), strategy=3, model="resnet18", weights="none",
                   epochs=1, batch_size=4, out=str(tmp_path / "run"), progress=False).run_dir
    # Random weights are not shift-invariant at all: jittered steps did not carry over to the
    # unshifted image (the logit fell, -0.36 -> -0.62); without jitter it rose to 1.74.
    result = runner.invoke(main, ["explain", "maximize", "--run", str(run), "--class", "dogs",
                                  "--steps", "8", "--size", "64", "--jitter", "0", "-q",
                                  "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(result.stdout.split()[1])
    assert list(table["label"]) == ["dogs (1)"] and list(table["unit"]) == [1]
    assert float(table["final"].iloc[0]) > float(table["start"].iloc[0]) + 1


def test_channels_of_the_logits_layer_are_labelled_with_class_names(runner,
                                                                     tmp_path: Path) -> None:
    result = runner.invoke(main, ["explain", "maximize", "--layer", "-1", "--channels", "309",
                                  "--steps", "2", "--size", "64", "-q", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(result.stdout.split()[1])
    assert list(table["label"]) == ["bee (309)"] and list(table["layer"]) == ["classifier"]
