"""Image sources: folders with and without splits, CSV manifests, idx files, bad files."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes import CnnCodesError, open_source
from cnncodes.data.decode import DECODING
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


def _linked_tree(root: Path) -> dict[str, str]:
    """train/val with two classes, a stray text file, file links (to a listed file and,
    twice, to one outside the tree), a broken link, and a file dated past 2262 (its
    mtime in nanoseconds is past 64 bits); returns the reasons listing must give."""
    for folder in ("train/a", "train/b", "val/a"):
        (root / folder).mkdir(parents=True)
    for name in ("train/a/1.jpg", "train/b/2.jpg", "val/a/3.jpg", root.parent / "outside.jpg"):
        (root / name).write_bytes(b"image bytes " + str(name).encode())
    (root / "train/a/notes.txt").write_text("not an image\n")
    (root / "train/a/z_link.jpg").symlink_to(root / "train/a/1.jpg")
    (root / "train/b/l1.jpg").symlink_to(root.parent / "outside.jpg")
    (root / "val/a/l2.jpg").symlink_to(root.parent / "outside.jpg")
    (root / "val/a/broken.jpg").symlink_to(root / "nowhere.jpg")
    far = 10**19  # nanoseconds: the year 2286
    with contextlib.suppress(OSError, OverflowError):  # a file system may refuse the date
        os.utime(root / "val/a/3.jpg", ns=(far, far))
    return {
        "train/a/notes.txt": "not an image type cnncodes reads (.txt)",
        "train/a/z_link.jpg": "same file as 'train/a/1.jpg' (symlink); listed once",
        "val/a/broken.jpg": f"broken symlink (points to {root / 'nowhere.jpg'})",
        "val/a/l2.jpg": "same file as 'train/b/l1.jpg' (symlink); listed once",
    }


def test_folder_fingerprint_is_the_digest_of_the_listing_in_walk_order(tmp_path: Path) -> None:
    """The fingerprint decides whether a store is reused, so it must not drift: the
    sha256 of the JSON list of kind, decoder, classes and, in the order the folders are
    walked (by name), each file's path, label, split, reason and [size, mtime_ns]."""
    root = tmp_path / "data"
    reasons = _linked_tree(root)
    source = open_source(root)
    walked = []
    for split in ("train", "val"):
        for label, name in enumerate(["a", "b"]):
            folder = root / split / name
            for file in sorted(os.listdir(folder)) if folder.exists() else []:
                path = f"{split}/{name}/{file}"
                info = os.lstat(root / path) if file == "broken.jpg" else os.stat(root / path)
                walked.append([path, label, split, reasons.get(path, ""),
                               [info.st_size, info.st_mtime_ns]])
    text = json.dumps(["folder", DECODING, ["a", "b"], *walked])
    assert source.fingerprint == hashlib.sha256(text.encode()).hexdigest()[:16]
    got = [[it.path, it.label, it.split, it.skip_reason] for it in source.items]
    assert got == sorted(([p, lab, s, r] for p, lab, s, r, _ in walked), key=lambda r: (r[2], r[0]))


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


def _two_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "a, b.jpg", folder / "c.jpg"]
    for path in paths:
        Image.new("RGB", (12, 10), (10, 200, 10)).save(path)
    return paths


def test_csv_relative_paths_start_from_the_manifest_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _two_images(tmp_path / "data" / "img")
    manifest = tmp_path / "data" / "set.csv"
    manifest.write_text('path,label\n"img/a, b.jpg",cat\nimg/c.jpg,dog\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    source = open_source(str(manifest))
    assert source.name == "set" and source.root == manifest.resolve()
    assert source.base == (tmp_path / "data").resolve()
    assert [(it.path, it.label) for it in source.items] == [("img/a, b.jpg", 0), ("img/c.jpg", 1)]
    assert all(source.read(item)[0] is not None for item in source.items)
    monkeypatch.chdir(tmp_path / "data")
    assert open_source("set.csv").fingerprint == source.fingerprint


def test_csv_absolute_paths_and_an_explicit_root(tmp_path: Path) -> None:
    first, second = _two_images(tmp_path / "photos")
    (tmp_path / "lists").mkdir()
    absolute = tmp_path / "lists" / "absolute.csv"
    absolute.write_text(f'path,label\n"{first}",cat\n{second},dog\n')
    source = open_source(absolute)
    assert [it.path for it in source.items] == [str(first), str(second)]
    assert all(source.read(item)[0] is not None for item in source.items)
    relative = tmp_path / "lists" / "relative.csv"
    relative.write_text('path,label\n"a, b.jpg",cat\nc.jpg,dog\n')
    with pytest.raises(CnnCodesError, match=r"none of its 2 files exist \(line 2: 'a, b.jpg' was looked for at .*lists/a, b.jpg'\).*pass --root DIR"):
        open_source(relative)
    source = open_source(relative, root=tmp_path / "photos")
    assert [it.path for it in source.items] == ["a, b.jpg", "c.jpg"]
    beside = tmp_path / "lists" / "beside.csv"  # paths that leave the manifest's folder
    beside.write_text('path,label\n"../photos/a, b.jpg",cat\n../photos/./c.jpg,dog\n')
    source = open_source(beside)
    assert [it.path for it in source.items] == ["../photos/a, b.jpg", "../photos/c.jpg"]
    assert all(source.read(item)[0] is not None for item in source.items)
    assert all(source.read(item)[0] is not None for item in source.items)
    with pytest.raises(CnnCodesError, match=r"root '.*nowhere' is not a folder"):
        open_source(relative, root=tmp_path / "nowhere")
    with pytest.raises(CnnCodesError, match="only applies to a CSV manifest"):
        open_source(tmp_path / "photos", root=tmp_path)


def test_csv_bom_crlf_quotes_and_header_case(tmp_path: Path) -> None:
    _two_images(tmp_path / "img")
    manifest = tmp_path / "set.csv"
    with open(manifest, "w", encoding="utf-8-sig", newline="\r\n") as handle:
        handle.write(' Path ,LABEL, Split \n"img/a, b.jpg",cat,TRAIN\nimg/c.jpg,dog, Val\n,,\n')
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf Path")
    source = open_source(manifest, require_labels=True)
    assert [(it.path, it.label, it.split) for it in source.items] == [
        ("img/a, b.jpg", 0, "train"), ("img/c.jpg", 1, "val"),
    ]
    assert source.classes == ["cat", "dog"] and source.has_split
    assert not any(it.skip_reason for it in source.items)


def test_csv_labels_required_for_training_only(tmp_path: Path) -> None:
    _two_images(tmp_path / "img")
    manifest = tmp_path / "set.csv"
    manifest.write_text('path,label\nimg/c.jpg,dog\n\n"img/a, b.jpg",\n')
    with pytest.raises(CnnCodesError, match=r"set.csv' line 4: empty label for 'img/a, b.jpg'"):
        open_source(manifest, require_labels=True)
    assert [it.label for it in open_source(manifest).items] == [0, -1]
    manifest.write_text("path\nimg/c.jpg\n")
    assert [it.label for it in open_source(manifest).items] == [-1]
    with pytest.raises(CnnCodesError, match=r"line 1 has columns \['path'\] but no 'label'"):
        open_source(manifest, require_labels=True)


def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    _two_images(tmp_path / "img")
    manifest = tmp_path / "set.csv"
    manifest.write_text('path,label,split\nimg/c.jpg,dog,train\n"img/a,\n b.jpg",cat,val\n,cat,test\n')
    with pytest.raises(CnnCodesError, match=r"line 5: empty path; fill it in or delete the row"):
        open_source(manifest)
    manifest.write_text("path,label,split\nimg/c.jpg,dog,Holdout\n")
    with pytest.raises(CnnCodesError, match=r"line 2: split 'Holdout' is not one of train, val, test"):
        open_source(manifest)
    manifest.write_bytes(b"path,label\nimg/caf\xe9.jpg,cat\n")
    with pytest.raises(CnnCodesError, match=r"is not UTF-8 text \(byte 18 is 0xe9\); save it as UTF-8"):
        open_source(manifest)
    manifest.write_text("")
    with pytest.raises(CnnCodesError, match=r"line 1 has columns \[\]; it needs a header with 'path'"):
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
    with pytest.raises(CnnCodesError, match="is a file but neither a .csv manifest nor an image"):
        open_source(tmp_path / "notes.txt")


def test_one_image_file_is_an_unlabeled_source(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "data", per_class=1)
    image = tmp_path / "data" / "cats" / "cats_0.jpg"
    source = open_source(image)
    assert [(it.path, it.label, it.skip_reason) for it in source.items] == [("cats_0.jpg", -1, "")]
    assert source.read(source.items[0])[0].mode == "RGB" and source.name == "cats_0"
    with pytest.raises(CnnCodesError, match="is one image; training needs labelled images"):
        open_source(image, require_labels=True)  # training needs labels: not one image
