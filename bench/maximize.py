"""Activation maximisation and DeepDream on the real Lite0 weights: how far the targets rise.

- maximize: channels 0 and 1 of ``blocks.5.0.bn1`` (1x1 expansion + BN + ReLU6, channel
  means in [0, 6]), 24 Adam steps at 128 px (the test's settings), seeds 0-4: the channel
  mean on the starting noise and on the optimised image.
- maximize --class bee: 16 steps at 128 px, seeds 0-4: the logit before and after, and
  whether the network's top-1 class is then 'bee'.
- dream: 2 octaves x 8 steps at 160 px on six hymenoptera val photos (the ones
  tests/test_explain.py uses), layer ``blocks.3``: RMS activation of the layer before and
  after.

Also writes two example figures into bench/results/ (maximize-example.png: channels 0-3 of
blocks.5.0.bn1, 64 steps at 128 px; dream-example.png: a bee photo, 3 octaves x 10 steps).
Prints markdown tables and writes bench/results/maximize.md.
Run: python bench/maximize.py
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from PIL import Image

from cnncodes.explainers.maximize import (
    deep_dream,
    maximize_activation,
    plot_dream,
    plot_maximized,
)
from cnncodes.nets.backbones import load_backbone

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "blocks.5.0.bn1"
PHOTOS = (
    "val/ants/1337725712_2eb53cd742.jpg",
    "val/ants/153783656_85f9c3ac70.jpg",
    "val/ants/854534770_31f6156383.jpg",
    "val/bees/10870992_eebeeb3a12.jpg",
    "val/bees/1297972485_33266a18d9.jpg",
    "val/bees/151594775_ee7dc17b60.jpg",
)


def channel_rows(backbone) -> list[str]:
    rows = ["| seed | channel | start | final | final / start |", "|---|---|---|---|---|"]
    for seed in range(5):
        result = maximize_activation(backbone, LAYER, [0, 1], steps=24, size=128, seed=seed,
                                     progress=False)
        for unit, start, final in zip(result.units, result.start, result.final):
            ratio = f"{final / start:.0f}x" if start > 0 else "(start 0)"
            rows.append(f"| {seed} | {unit} | {start:.3f} | {final:.2f} | {ratio} |")
    return rows


def class_rows(backbone) -> list[str]:
    bee = backbone.categories.index("bee")
    rows = ["| seed | bee logit start | final | top-1 is bee |", "|---|---|---|---|"]
    for seed in range(5):
        result = maximize_activation(backbone, -1, [bee], steps=16, size=128, seed=seed,
                                     progress=False)
        x = (torch.from_numpy(result.images).permute(0, 3, 1, 2) - 0.5) / 0.5
        with torch.no_grad():
            top = int(backbone.model(x)[0].argmax())
        rows.append(f"| {seed} | {result.start[0]:.2f} | {result.final[0]:.1f} | "
                    f"{'yes' if top == bee else backbone.categories[top]} |")
    return rows


def dream_rows(backbone) -> list[str]:
    rows = ["| photo | RMS before | after | after / before |", "|---|---|---|---|"]
    for name in PHOTOS:
        with Image.open(HYMENOPTERA / name) as photo:
            result = deep_dream(backbone, photo.convert("RGB"), "blocks.3", octaves=2, steps=8,
                                size=160, progress=False)
        rows.append(f"| {name} | {result.start:.2f} | {result.final:.2f} | "
                    f"{result.final / result.start:.2f}x |")
    return rows


def examples(backbone) -> None:
    result = maximize_activation(backbone, LAYER, [0, 1, 2, 3], steps=64, size=128,
                                 progress=False)
    plot_maximized(result, RESULTS / "maximize-example.png",
                   title=f"efficientnet_lite0, {LAYER!r}: 64 steps at 128 px, seed 0\n"
                   "tile title: channel mean on the noise -> on the image")
    with Image.open(HYMENOPTERA / PHOTOS[3]) as photo:
        dreamed = deep_dream(backbone, photo.convert("RGB"), "blocks.3", size=224,
                             progress=False)
    plot_dream(dreamed, RESULTS / "dream-example.png",
               title=f"DeepDream at 'blocks.3.2.add', 3 octaves x 10 steps; activation RMS "
               f"{dreamed.start:.2f} -> {dreamed.final:.2f}")


def shrink(path: Path) -> None:
    """Rewrite a figure PNG with a 256-colour palette: a third of the bytes, same look."""
    with Image.open(path) as figure:
        quantised = figure.convert("RGB").quantize(256)
    quantised.save(path, optimize=True)


def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    started = time.perf_counter()
    sections = [
        f"## maximize: channels 0 and 1 of {LAYER}, 24 steps at 128 px", *channel_rows(backbone),
        "", "## maximize --class bee: 16 steps at 128 px", *class_rows(backbone),
        "", "## dream: blocks.3, 2 octaves x 8 steps at 160 px", *dream_rows(backbone),
    ]
    examples(backbone)
    for name in ("maximize-example.png", "dream-example.png"):
        shrink(RESULTS / name)
    seconds = time.perf_counter() - started
    text = "\n".join([
        "# Activation maximisation and DeepDream (bench/maximize.py)", "",
        f"efficientnet_lite0, real ImageNet weights; {platform.machine()} CPU, "
        f"{torch.get_num_threads()} threads, {seconds:.0f} s in all on a machine shared with "
        "other jobs (times are no speed figures).", "", *sections, "",
        "Example figures: maximize-example.png, dream-example.png.", "",
    ])
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "maximize.md").write_text(text)


if __name__ == "__main__":
    main()
