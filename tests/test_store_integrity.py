"""Code stores that were damaged, edited, are from another version or hold odd file names.

Real stores are extracted from a tiny synthetic folder and then attacked on a copy: each
attack must give one CnnCodesError line (API) and exit code 2 without a traceback (CLI).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnncodes import CnnCodesError, CodeStore, extract, fit_pipeline, predict
from cnncodes.cli import main
from cnncodes.data.store import FORMAT_VERSION, PartWriter, assemble_store, seal_store
from tests.conftest import write_image_folder

LAYER = "flatten"  # resnet18 -2
RE_EXTRACT = r"re-extract it \(delete .* and run the same cnncodes extract\)"


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store: random-weight resnet18 codes of 12 images in train/val, two classes."""
    root = tmp_path_factory.mktemp("integrity")
    folder = write_image_folder(root / "data", per_class=4, split="train", size=32)
    write_image_folder(root / "data", per_class=2, split="val", size=32)
    return extract(source=str(folder), model="resnet18", weights="none",
                   out=str(root / "clean.h5"), progress=False).path


@pytest.fixture
def store(clean_store: Path, tmp_path: Path) -> Path:
    """A copy of the clean store to attack."""
    return Path(shutil.copy(clean_store, tmp_path / "attacked.h5"))


def _flip_bytes(path: Path, dataset: str) -> None:
    """Flip bits of a few bytes in the middle of the dataset's first chunk, on disk.

    Not all bits: fletcher32 sums 16-bit words modulo 65535, so it cannot tell 0x0000
    from 0xFFFF, and inverting the zero bytes of a small label would go unseen.
    """
    with h5py.File(path, "r") as handle:
        info = handle[dataset].id.get_chunk_info(0)
    offset = info.byte_offset + info.size // 2
    with open(path, "r+b") as raw:
        raw.seek(offset)
        data = raw.read(4)
        raw.seek(offset)
        raw.write(bytes(b ^ 0x5A for b in data))


def _one_line_cli_error(runner, store: Path, tmp_path: Path, message: str) -> None:
    result = runner.invoke(main, ["fit", str(store), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.output.startswith("Error: ") and result.output.strip().count("\n") == 0
    assert message in result.output


def test_every_dataset_is_checksummed_and_the_store_is_versioned(clean_store: Path) -> None:
    with h5py.File(clean_store, "r") as raw:
        datasets: dict[str, h5py.Dataset] = {}
        raw.visititems(lambda name, item: datasets.update({name: item})
                       if isinstance(item, h5py.Dataset) else None)
        assert set(datasets) >= {f"codes/{LAYER}", "labels", "classes", "paths", "paths_raw",
                                 "split", "skipped/path", "skipped/path_raw", "skipped/reason"}
        for name, dataset in datasets.items():
            assert dataset.fletcher32 and dataset.chunks, name
        assert raw.attrs["format_version"] == FORMAT_VERSION == 2
        assert len(raw.attrs["attributes_sha256"]) == 64
        # Still plain h5py: strings decode without cnncodes.
        assert raw["classes"].asstr()[:].tolist() == ["cats", "dogs"]
        assert raw["paths"].asstr()[0] == "train/cats/cats_0.jpg"


READERS = {
    f"codes/{LAYER}": lambda store: store.load(LAYER, split="train"),
    "labels": lambda store: store.labels,
    "paths": lambda store: store.paths,
    "classes": lambda store: store.classes,
}


@pytest.mark.parametrize("dataset", sorted(READERS))
def test_flipped_bytes_fail_the_checksum(store: Path, dataset: str, runner, tmp_path) -> None:
    _flip_bytes(store, dataset)
    message = f"is corrupted (checksum failed in /{dataset}); re-extract it"
    with CodeStore(store) as opened, pytest.raises(CnnCodesError) as error:
        READERS[dataset](opened)
    assert message in str(error.value) and "\n" not in str(error.value)
    _one_line_cli_error(runner, store, tmp_path, message)


def test_edited_attribute_is_refused_on_open(store: Path, runner, tmp_path) -> None:
    with h5py.File(store, "r+") as handle:
        handle.attrs["weights"] = "IMAGENET1K_V1"  # claims other codes than it holds
    with pytest.raises(CnnCodesError, match=r"is corrupted or was edited \(its attributes or "
                       r"layout no longer match attributes_sha256\); " + RE_EXTRACT):
        CodeStore(store)
    _one_line_cli_error(runner, store, tmp_path, "is corrupted or was edited")


def test_replaced_dataset_is_refused_on_open(store: Path) -> None:
    with h5py.File(store, "r+") as handle:
        labels = handle["labels"][:]
        del handle["labels"]
        handle["labels"] = labels[::-1].copy()[: len(labels) - 1]  # one row short
    with pytest.raises(CnnCodesError, match=r"inconsistent: /paths has shape"):
        CodeStore(store)


@pytest.mark.parametrize("dataset", ["labels", "paths", "classes", "skipped/reason",
                                     f"codes/{LAYER}"])
def test_missing_dataset_is_one_line_not_key_error(store: Path, dataset: str, runner,
                                                   tmp_path) -> None:
    with h5py.File(store, "r+") as handle:
        del handle[dataset]
    with pytest.raises(CnnCodesError, match=rf"is missing /{dataset}; " + RE_EXTRACT):
        CodeStore(store)
    _one_line_cli_error(runner, store, tmp_path, f"is missing /{dataset}")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_codes_are_refused_with_row_and_path(store: Path, bad, runner,
                                                        tmp_path) -> None:
    with h5py.File(store, "r+") as handle:
        handle[f"codes/{LAYER}"][5, 3] = bad  # in place: checksum and digest stay valid
        path = handle["paths"].asstr()[5]
    with CodeStore(store) as opened, pytest.raises(
        CnnCodesError, match=rf"non-finite code \(NaN or inf\) in layer 'flatten' at row 5 "
                             rf"\('{path}'\); re-extract it"):
        opened.codes()
    _one_line_cli_error(runner, store, tmp_path, f"at row 5 ('{path}')")


def test_label_outside_the_classes_is_refused(store: Path) -> None:
    with h5py.File(store, "r+") as handle:
        handle["labels"][2] = 7
    with CodeStore(store) as opened, pytest.raises(
            CnnCodesError, match=r"row 2 \('train/cats/cats_2.jpg'\) has label 7, but there "
                                 r"are 2 classes"):
        opened.labels  # noqa: B018


@pytest.mark.parametrize("version, says", [
    (None, r"was written by an older cnncodes \(it has no format_version; this one reads "
           r"version 2, or 3 with views\)"),
    (1, r"has format_version 1, from an older cnncodes \(this one reads 2, or 3 with views\)"),
    (4, r"has format_version 4, from a newer cnncodes \(this one reads 2, or 3 with views\)"),
    (3, r"is corrupted \(format_version 3 needs /view\)"),
])
def test_other_format_versions_say_re_extract(store: Path, version, says, runner,
                                              tmp_path) -> None:
    with h5py.File(store, "r+") as handle:
        if version is None:
            del handle.attrs["format_version"]
        else:
            handle.attrs["format_version"] = version
    with pytest.raises(CnnCodesError, match=says + r"; re-extract with this cnncodes"):
        CodeStore(store)
    _one_line_cli_error(runner, store, tmp_path, "re-extract with this cnncodes")


def test_dataset_stored_in_another_file_is_refused(store: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(np.zeros(64, np.int64).tobytes())
    with h5py.File(store, "r+") as handle:
        count = handle["labels"].shape[0]
        del handle["labels"]
        handle.create_dataset("labels", shape=(count,), dtype=np.int64,
                              external=[(str(elsewhere), 0, 8 * count)])
        seal_store(handle)  # even re-signed, data outside the store is not read
    with pytest.raises(CnnCodesError, match=r"has /labels stored outside the file"):
        CodeStore(store)


def test_store_written_with_plain_h5py_opens_once_sealed(tmp_path: Path) -> None:
    path = tmp_path / "hand.h5"
    strings = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as handle:
        handle["codes/feat"] = np.ones((3, 4), np.float32)
        handle["labels"] = np.array([0, 1, -1])
        handle.create_dataset("classes", data=np.array(["a", "b"], dtype=object), dtype=strings)
        handle.create_dataset("paths", data=np.array(["x", "y", "z"], dtype=object), dtype=strings)
        handle.create_dataset("skipped/path", shape=(0,), dtype=strings)
        handle.create_dataset("skipped/reason", shape=(0,), dtype=strings)
        handle.attrs.update({"cnncodes_version": "0", "complete": True,
                             "layers": json.dumps(["feat"])})
    with pytest.raises(CnnCodesError, match=r"older cnncodes"):
        CodeStore(path)
    with h5py.File(path, "r+") as handle:
        seal_store(handle)
    with CodeStore(path) as opened:
        assert opened.labels.tolist() == [0, 1, -1] and opened.file_paths == ["x", "y", "z"]


@dataclass
class _Item:
    path: str
    label: int
    split: str = ""


def test_damaged_part_file_is_one_line(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path / "s.h5.parts", {"store_key": "k"})
    writer.write(0, 4, [0, 1, 2, 3], {"feat": np.ones((4, 300), np.float32)}, [])
    part = writer.parts()[0][2]
    _flip_bytes(part, "codes/feat")
    items = [_Item(f"{i}.jpg", i % 2) for i in range(4)]
    with pytest.raises(CnnCodesError, match=r"Part file .* is damaged; delete it and run the "
                                            r"same cnncodes extract again"):
        assemble_store(writer, tmp_path / "s.h5", layers=["feat"], dims={"feat": 300},
                       items=items, classes=["a", "b"], has_split=False, attrs={})


def test_non_utf8_file_names_extract_and_predict(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3, size=32)
    cats = os.fsencode(root / "cats")
    # A Latin-1 name (not UTF-8) for an image, and one for a file that is skipped.
    shutil.copyfile(os.fsencode(root / "cats" / "cats_0.jpg"), cats + b"/caf\xe9.jpg")
    (Path(os.fsdecode(cats + b"/notes\xff.txt"))).write_text("not an image")
    # If sources.py cannot list such names this extract raises; the fix belongs there.
    result = extract(source=str(root), model="resnet18", weights="none",
                     out=str(tmp_path / "s.h5"), progress=False)
    assert result.n_images == 7
    with CodeStore(result.path) as opened:
        display = opened.paths
        exact = opened.file_paths
        assert "cats/caf\\xe9.jpg" in display  # valid UTF-8 text, the byte escaped
        row = display.index("cats/caf\\xe9.jpg")
        assert os.fsencode(exact[row]) == b"cats/caf\xe9.jpg"
        assert (root / exact[row]).is_file()  # maps back to the very file
        assert [p for p, _ in opened.skipped] == ["cats/notes\\xff.txt"]
    with h5py.File(result.path, "r") as raw:  # plain h5py readers get valid UTF-8
        assert "cats/caf\\xe9.jpg" in raw["paths"].asstr()[:].tolist()
        assert b"cats/caf\xe9.jpg" in raw["paths_raw"][:].tolist()
        assert raw["skipped/path_raw"][0] == b"cats/notes\xff.txt"

    run = fit_pipeline(result.path, cv=2, out=tmp_path / "run", progress=False)
    out = tmp_path / "predictions.csv"
    frame = predict(run.run_dir, str(root), out, progress=False)
    assert "cats/caf\\xe9.jpg" in frame["path"].tolist()
    text = out.read_text(encoding="utf-8")
    assert "cats/caf\\xe9.jpg," in text and len(text.splitlines()) == 1 + 7
