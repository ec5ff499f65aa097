"""Image sources: folders with and without splits, CSV manifests, idx files, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from cnncodes import CnnCodesError, open_source
from tests.conftest import write_image_folder


def test_hymenoptera_listing_accounts_for_every_file(hymenoptera: Path) -> None:
    source = open_source(hymenoptera)
    files = [p for p in hymenoptera.rglob("*") if p.is_file()]
    assert len(source.items) == len(files) == 398
    assert source.classes == ["ants", "bees"] and source.has_split
    skipped = [it for it in source.items if it.skip_reason]
    assert [it.path for it in skipped] == ["train/ants/imageNotFound.gif"]
    assert "(.gif)" in skipped[0].skip_reason


def test_folder_without_split_and_unlabeled_folder(tmp_path: Path) -> None:
    source = open_source(write_image_folder(tmp_path / "a", classes=("x", "y", "z"), per_class=2))
    assert source.classes == ["x", "y", "z"] and not source.has_split
    assert sorted(it.label for it in source.items) == [0, 0, 1, 1, 2, 2]
    flat = tmp_path / "flat"
    flat.mkdir()
    for image in (tmp_path / "a" / "x").iterdir():
        (flat / image.name).write_bytes(image.read_bytes())
    unlabeled = open_source(flat)
    assert unlabeled.classes == [] and {it.label for it in unlabeled.items} == {-1}


def test_fingerprint_changes_when_a_file_changes(tiny_folder: Path) -> None:
    before = open_source(tiny_folder).fingerprint
    assert open_source(tiny_folder).fingerprint == before
    target = next((tiny_folder / "cats").iterdir())
    target.write_bytes(target.read_bytes() + b"\0")
    assert open_source(tiny_folder).fingerprint != before


def test_csv_manifest(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "img", per_class=2)
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        "path,label,split\n"
        "img/cats/cats_0.jpg,cat,train\nimg/dogs/dogs_0.jpg,dog,train\n"
        "img/cats/cats_1.jpg,cat,val\nimg/missing.jpg,dog,val\n"
    )
    source = open_source(manifest)
    assert source.kind == "csv" and source.classes == ["cat", "dog"] and source.has_split
    assert [it.split for it in source.items] == ["train", "train", "val", "val"]
    assert source.items[3].skip_reason == "file not found"
    manifest.write_text("path,label,split\nimg/cats/cats_0.jpg,cat,holdout\n")
    with pytest.raises(CnnCodesError, match=r"line 2: split 'holdout' is not one of train, val, test"):
        open_source(manifest)
    manifest.write_text("file,label\nimg/cats/cats_0.jpg,cat\n")
    with pytest.raises(CnnCodesError, match="needs a header with 'path'"):
        open_source(manifest)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3)
    source = open_source(tmp_path, limit=5)
    assert source.kind == "idx" and source.classes == ["0", "1", "2"]
    assert [it.split for it in source.items].count("train") == 5
    image = source.open_image(source.items[0])
    assert image.mode == "RGB" and image.size == (28, 28)


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(CnnCodesError, match=r"Source '.*nowhere' does not exist"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CnnCodesError, match="holds no readable images"):
        open_source(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CnnCodesError, match="is a file but not a .csv manifest"):
        open_source(tmp_path / "notes.txt")
