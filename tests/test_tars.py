"""WebDataset tar shards as a source: keys as paths, tar order, labels from .cls and .json,
splits from shard names, damaged and imageless samples reported, codes equal to the same
photos extracted from a folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnncodes import CodeStore, extract
from cnncodes.cli import main
from cnncodes.data.sources import open_source

pytest.importorskip("webdataset", reason="tar shards need the tar extra: pip install -e '.[tar]'")
PER_CLASS = 4


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train-000.tar and train-001.tar (labels in key.cls), val-000.tar (labels in
    key.json); train-001 also holds a truncated JPEG and a sample without an image; and a
    folder of the same photos for reference."""
    root = tmp_path_factory.mktemp("tars")
    photos = {split: [p for label in ("ants", "bees")
                      for p in sorted((hymenoptera / split / label).glob("*.jpg"))[:PER_CLASS]]
              for split in ("train", "val")}
    for split, paths in photos.items():
        for path in paths:
            copy = root / "folder" / split / path.parent.name / path.name
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
    (root / "shards").mkdir()
    halves = {"train-000.tar": photos["train"][::2], "train-001.tar": photos["train"][1::2],
              "val-000.tar": photos["val"]}
    for name, paths in halves.items():
        with tarfile.open(root / "shards" / name, "w") as archive:
            for path in paths:
                key = f"{name[:-8]}/{path.parent.name}/{path.stem}"
                label = int(path.parent.name == "bees")
                _add(archive, key + ".jpg", path.read_bytes())
                if name.startswith("val"):
                    _add(archive, key + ".json", json.dumps({"label": label}).encode())
                else:
                    _add(archive, key + ".cls", str(label).encode())
            if name == "train-001.tar":
                _add(archive, "train/bees/zz_truncated.jpg", paths[0].read_bytes()[:500])
                _add(archive, "train/bees/zz_truncated.cls", b"1")
                _add(archive, "train/ants/zz_label_only.cls", b"0")
    return root


def test_listing_keeps_tar_order_labels_and_splits(shards: Path) -> None:
    pattern = str(shards / "shards" / "train-{000..001}.tar") + "::" + str(shards / "shards" / "val-000.tar")
    source = open_source(pattern)
    assert source.kind == "tar" and source.classes == ["0", "1"]
    keys = [item.path for item in source.items]
    with tarfile.open(shards / "shards" / "train-000.tar") as first:
        assert keys[:2 * PER_CLASS // 2] == [m.name[:-4] for m in first if m.name.endswith(".jpg")]
    assert [item.split for item in source.items].count("val") == 2 * PER_CLASS
    assert all(item.label == int("/bees/" in item.path) for item in source.items)
    skipped = {item.path: item.skip_reason for item in source.items if item.skip_reason}
    assert skipped == {"train/ants/zz_label_only": "no image in the sample (members: train/ants/zz_label_only.cls)"}


def test_extract_from_tars_equals_the_folder(shards: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, runner) -> None:
    monkeypatch.chdir(tmp_path)  # relative shard paths, from another working directory
    (tmp_path / "data").symlink_to(shards / "shards")
    result = runner.invoke(main, ["extract", "data/train-{000..001}.tar::data/val-000.tar",
                                  "--out", "tars.h5", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "tars.h5"
    assert "zz_truncated" in result.stderr and "zz_label_only" in result.stderr
    folder = extract(source=str(shards / "folder"), out=str(tmp_path / "folder.h5"), progress=False)
    with CodeStore(tmp_path / "tars.h5") as tars, CodeStore(folder.path) as reference:
        rows = {path: i for i, path in enumerate(reference.paths)}
        order = [rows[key + ".jpg"] for key in tars.paths]
        np.testing.assert_allclose(tars.codes("-2"), reference.codes("-2")[order], atol=1e-5, rtol=0)
        assert np.array_equal(tars.labels, reference.labels[order])
        assert list(tars.split) == list(reference.split[order])
        assert sorted(path for path, _ in tars.skipped) == ["train/ants/zz_label_only",
                                                            "train/bees/zz_truncated"]


def test_a_missing_shard_is_named(shards: Path, runner) -> None:
    result = runner.invoke(main, ["extract", str(shards / "shards" / "train-{000..002}.tar")])
    assert result.exit_code == 2
    assert "1 of 3 shard(s) do not exist" in result.stderr and "train-002.tar" in result.stderr


def test_a_file_that_is_not_a_tar_is_named(tmp_path: Path, runner) -> None:
    fake = tmp_path / "broken.tar"
    fake.write_bytes(b"this is not a tar archive" * 40)
    result = runner.invoke(main, ["extract", str(fake)])
    assert result.exit_code == 2
    assert "is not a readable tar file" in result.stderr and "broken.tar" in result.stderr


def test_hostile_members_reach_nothing_outside_the_tar(hymenoptera: Path, tmp_path: Path) -> None:
    photo = next((hymenoptera / "train" / "ants").glob("*.jpg")).read_bytes()
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo)  # a readable image outside the tar, which a link points to
    shard = tmp_path / "train-000.tar"
    with tarfile.open(shard, "w") as archive:
        _add(archive, "../../escape.jpg", photo)  # traversal name: read from the tar only
        _add(archive, "../../escape.cls", b"0")
        link = tarfile.TarInfo("linked.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, str(secret)
        archive.addfile(link)
        _add(archive, "linked.cls", b"0")
    source = open_source(str(shard))
    reasons = {item.path: item.skip_reason for item in source.items}
    assert reasons == {"../../escape": "", "linked": "not a regular file in the tar (a link)"}
    image, reason = source.read(source.items[0])
    assert reason == "" and image is not None
    assert not (tmp_path.parent.parent / "escape.jpg").exists()
