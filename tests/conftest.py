"""Shared fixtures: real data from ../shared/data, tiny synthetic images, a CliRunner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CNNCODES_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()
HYMENOPTERA = SHARED_DATA / "hymenoptera_data"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    """The real ants-vs-bees ImageFolder (train/val), 397 JPEGs + one GIF placeholder."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"real data not found at {HYMENOPTERA} (set CNNCODES_SHARED_DATA)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST


@pytest.fixture(scope="session")
def hymenoptera_store(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Lite0 codes (layers -2 and -5) of every hymenoptera image, extracted once."""
    from cnncodes import extract

    out = tmp_path_factory.mktemp("stores") / "hymenoptera.h5"
    result = extract(source=str(hymenoptera), layers=("-2", "-5"), out=str(out), progress=False)
    return result.path


def write_image_folder(root: Path, *, classes=("cats", "dogs"), per_class=4, split=None, size=40) -> Path:
    """A tiny ImageFolder of random RGB JPEGs (optionally under a split folder)."""
    rng = np.random.default_rng(0)
    base = root / split if split else root
    for name in classes:
        (base / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(base / name / f"{name}_{i}.jpg")
    return root


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "tiny")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_digits_folder(root: Path, *, per_class: int = 6, splits=("train", "test"),
                        classes=(0, 1, 2, 3)) -> Path:
    """Real handwritten digits (scikit-learn's load_digits) saved as PNG files in an
    ImageFolder tree ``root/<split>/<digit>/<n>.png``; every install has this data."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for digit in classes:
        rows = np.flatnonzero(digits.target == digit)
        for s, split in enumerate(splits):
            folder = root / split / str(digit) if split else root / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for row in rows[s * per_class: (s + 1) * per_class]:
                Image.fromarray(images[row], mode="L").save(folder / f"{digit}_{row}.png")
    return root


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Lite0 codes of the built-in sklearn:digits (first 300 train + 300 test)."""
    from cnncodes import extract

    out = tmp_path_factory.mktemp("digits") / "digits.h5"
    return extract(source="sklearn:digits", limit=300, out=str(out), progress=False).path


@pytest.fixture(scope="session")
def hymenoptera_fit_run(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``cnncodes fit`` run (logreg on Lite0 codes of 16 train + 16 val photos),
    made by the real CLI from another working directory; its store is ``codes.h5`` beside it."""
    from cnncodes.cli import main

    folder = tmp_path_factory.mktemp("fit-run")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("CNNCODES_CACHE", str(folder / "cache"))
        for args in (["extract", str(hymenoptera), "--limit", "16", "--out", "codes.h5"],
                     ["fit", "codes.h5", "--clf", "logreg", "--out", "run", "--quiet"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 0, result.output
    return folder / "run"
