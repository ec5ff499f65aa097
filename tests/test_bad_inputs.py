"""Whatever files a user brings: each is either decoded to a bounded RGB image or listed as
skipped with its reason; listing and decoding never raise."""

from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnncodes.data.decode as decode
import cnncodes.data.sources as sources
from cnncodes import CnnCodesError, open_source
from cnncodes.data.sources import MAX_ASPECT, ImageSource, Item, display_path


def _jpeg_bytes(size=(40, 48), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def _png_header_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> None:
    """A 100-byte PNG whose header claims ``width`` x ``height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )


def _write_corpus(base: Path) -> Path:
    """A class tree holding one file of every kind that broke, or could break, a run."""
    tree, cats, dogs, birds = base / "tree", base / "tree" / "cats", base / "tree" / "dogs", base / "tree" / "birds"
    for folder in (cats, dogs, birds):
        folder.mkdir(parents=True)
    (cats / "good.jpg").write_bytes(_jpeg_bytes())
    (dogs / "good.jpg").write_bytes(_jpeg_bytes(colour=(30, 30, 200)))
    (cats / "png_is_jpeg.png").write_bytes(_jpeg_bytes())
    (cats / "truncated.jpg").write_bytes(_jpeg_bytes((200, 200))[:600])
    (cats / "empty.jpg").write_bytes(b"")
    (cats / "text.jpg").write_text("this is not an image\n")
    (cats / "notes.txt").write_text("a stray file\n")
    (cats / ".hidden.jpg").write_bytes(_jpeg_bytes())
    _png_header_bomb(cats / "bomb.png")
    Image.new("1", (16, 16), 1).save(cats / "one_bit.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(cats / "cmyk.jpg")
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    Image.fromarray(gradient).save(cats / "grey16.png")
    Image.fromarray(np.full((12, 20), 0.5, dtype=np.float32)).save(cats / "float.tif")
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    palette.putpixel((0, 0), 0)
    palette.save(cats / "palette.png", transparency=0)
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[:, 5:] = (255, 0, 0, 255)  # left half fully transparent black, right half red
    Image.fromarray(rgba).save(cats / "rgba.png")
    Image.new("LA", (10, 10), (0, 0)).save(cats / "la.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 60), (0, 200, 0)).save(cats / "exif.jpg", exif=exif)
    Image.new("RGB", (20_000, 1), (90, 90, 90)).save(cats / "wide.png")
    Image.new("RGB", (1, 20_000), (90, 90, 90)).save(cats / "tall.png")
    Image.new("L", (2_100, 1_100), 128).save(cats / "big.png")
    os.mkfifo(cats / "fifo.jpg")
    (cats / "dangling.jpg").symlink_to(cats / "nowhere.jpg")
    (cats / "loop.jpg").symlink_to(cats / "loop.jpg")
    (cats / "devnull.jpg").symlink_to("/dev/null")
    (cats / "link_to_good.jpg").symlink_to(cats / "good.jpg")
    (cats / "x.jpg").mkdir()
    (cats / "x.jpg" / "inner.jpg").write_bytes(_jpeg_bytes())
    with open(os.path.join(os.fsencode(cats), b"caf\xe9.jpg"), "wb") as handle:
        handle.write(_jpeg_bytes())
    (dogs / "loop").symlink_to(tree)  # a folder link back into the tree
    (tree / "cats_link").symlink_to(cats)  # a folder link inside the tree: no extra class
    outside = base / "elsewhere"
    outside.mkdir()
    (outside / "far.jpg").write_bytes(_jpeg_bytes())
    (outside / "again").symlink_to(outside)  # a loop outside the tree
    (tree / "outside").symlink_to(outside)  # a folder link out of the tree: followed
    (base / "lone.jpg").write_bytes(_jpeg_bytes())
    (cats / "lone_link.jpg").symlink_to(base / "lone.jpg")  # a file link out of the tree
    if len(os.fsencode(cats / "socket.jpg")) < 100:  # the limit on a socket's address
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(cats / "socket.jpg"))
    (birds / "empty.jpg").write_bytes(b"")
    (birds / "notes.md").write_text("no image here\n")
    return tree


EXPECTED_SKIPS = {
    "cats/truncated.jpg": "unreadable image: ",
    "cats/empty.jpg": "empty file (0 bytes)",
    "cats/text.jpg": "unreadable image: cannot identify image file",
    "cats/notes.txt": "not an image type cnncodes reads (.txt)",
    "cats/bomb.png": "image is 30000x30000 = 900,000,000 pixels, over the budget of 178,956,970",
    "cats/fifo.jpg": "not a regular file (a FIFO)",
    "cats/socket.jpg": "not a regular file (a socket)",
    "cats/dangling.jpg": "broken symlink (points to ",
    "cats/loop.jpg": "symlink loop",
    "cats/devnull.jpg": "not a regular file (a character device)",
    "cats/link_to_good.jpg": "same file as 'cats/good.jpg' (symlink); listed once",
    "birds/empty.jpg": "empty file (0 bytes)",
    "birds/notes.md": "not an image type cnncodes reads (.md)",
}
GOOD = [
    "cats/good.jpg", "dogs/good.jpg", "cats/png_is_jpeg.png", "cats/one_bit.png", "cats/cmyk.jpg",
    "cats/grey16.png", "cats/float.tif", "cats/palette.png", "cats/rgba.png", "cats/la.png",
    "cats/exif.jpg", "cats/wide.png", "cats/tall.png", "cats/big.png", "cats/x.jpg/inner.jpg",
    "cats/caf\udce9.jpg", "outside/far.jpg", "cats/lone_link.jpg",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_corpus(tmp_path_factory.mktemp("bad-inputs"))


@pytest.fixture(scope="module")
def decoded(corpus: Path) -> tuple[ImageSource, dict[str, tuple[Image.Image | None, str]]]:
    source = open_source(corpus)
    return source, {item.path: source.read(item) for item in source.items}


def test_every_file_is_listed_once_with_its_fate(corpus: Path, decoded) -> None:
    source, results = decoded
    expected_skips = {k: v for k, v in EXPECTED_SKIPS.items() if os.path.lexists(corpus / k)}
    assert len(expected_skips) >= len(EXPECTED_SKIPS) - 1
    assert source.classes == ["birds", "cats", "dogs", "outside"]  # cats_link is no class
    assert sorted(results) == sorted([*expected_skips, *GOOD])  # hidden file, links: not listed
    assert len(source.items) == len(results)  # and nothing listed twice
    for path, expected in expected_skips.items():
        image, reason = results[path]
        assert image is None and reason.startswith(expected), (path, reason)
        assert reason.isprintable() and "\n" not in reason
    assert "runcated" in results["cats/truncated.jpg"][1]
    listed = {item.path: item.skip_reason for item in source.items}
    assert listed["cats/fifo.jpg"] and listed["cats/dangling.jpg"] and listed["cats/empty.jpg"]
    assert listed["cats/bomb.png"] == ""  # found at decode time, from the header alone


def test_every_good_file_decodes_to_bounded_rgb(decoded) -> None:
    _, results = decoded
    for path in GOOD:
        image, reason = results[path]
        assert image is not None and reason == "", (path, reason)
        assert image.mode == "RGB"
        width, height = image.size
        assert max(width, height) <= MAX_ASPECT * min(width, height)
        assert min(width, height) < 2 * decode.DRAFT_MIN_SIDE
    assert results["cats/wide.png"][0].size == (4, 1)
    assert results["cats/tall.png"][0].size == (1, 4)
    assert results["cats/big.png"][0].size == (1_050, 550)  # reduced 2x after decoding


def test_modes_become_the_rgb_a_viewer_shows(decoded) -> None:
    _, results = decoded

    def pixels(path: str) -> np.ndarray:
        return np.asarray(results[path][0])

    assert results["cats/exif.jpg"][0].size == (60, 40)  # EXIF orientation applied
    grey16 = pixels("cats/grey16.png")[0, :, 0]
    assert grey16[0] == 0 and grey16[-1] == 255 and 120 <= grey16[32] <= 135  # scaled, not clipped
    assert (pixels("cats/float.tif") == 128).all()  # 0.5 in a float image is mid grey
    assert set(np.unique(pixels("cats/one_bit.png"))) == {255}
    palette = pixels("cats/palette.png")
    assert tuple(palette[0, 0]) == (255, 255, 255) and tuple(palette[5, 5]) == (255, 0, 0)
    rgba = pixels("cats/rgba.png")
    assert tuple(rgba[0, 0]) == (255, 255, 255) and tuple(rgba[0, 9]) == (255, 0, 0)
    assert (pixels("cats/la.png") == 255).all()  # transparent black shows as white
    red, green, blue = pixels("cats/cmyk.jpg").reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60


def test_non_utf8_names_list_and_display(decoded) -> None:
    source, _ = decoded
    (name,) = [item.path for item in source.items if "caf" in item.path]
    assert os.fsencode(name).endswith(b"caf\xe9.jpg")
    assert display_path(name) == "cats/caf\\xe9.jpg"
    display_path(name).encode("utf-8")  # what a store or a terminal can write


def test_links_and_empty_classes_are_reported(decoded) -> None:
    source, _ = decoded
    text = "\n".join(source.warnings)
    assert "Folder link 'cats_link' points inside the source; not followed" in text
    assert "Folder link 'dogs/loop' points inside the source" in text
    assert "Folder 'outside/again' leads to a folder already listed" in text
    assert "Every file in class folder 'birds' is skipped (2; first: empty file (0 bytes))" in text
    assert all("\n" not in warning for warning in source.warnings)


def test_pixel_budget_is_configurable(corpus: Path) -> None:
    small = open_source(corpus, max_pixels=1_000)
    item = next(it for it in small.items if it.path == "cats/good.jpg")
    image, reason = small.read(item)
    assert image is None
    assert reason.startswith("image is 40x48 = 1,920 pixels, over the budget of 1,000")
    assert "--max-pixels" in reason
    assert small.fingerprint != open_source(corpus).fingerprint
    # Above PIL's own limit the budget still decides: the header bomb gets to its decoder,
    # which finds the data missing, instead of being refused for its size.
    large = open_source(corpus, max_pixels=10**9)
    bomb = next(it for it in large.items if it.path == "cats/bomb.png")
    _, reason = large.read(bomb)
    assert reason.startswith("unreadable image") and "budget" not in reason
    with pytest.raises(CnnCodesError, match=r"max_pixels must be a positive number of pixels; got 0"):
        open_source(corpus, max_pixels=0)


def test_pil_decompression_bomb_error_is_a_skip(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = open_source(corpus)
    item = next(it for it in source.items if it.path == "cats/good.jpg")

    def bomb(*args, **kwargs):
        raise Image.DecompressionBombError("Image size (900000000 pixels) exceeds limit")

    monkeypatch.setattr(sources, "decode_image", bomb)
    image, reason = source.read(item)
    assert image is None and reason.startswith("decompression bomb: Image size (900000000 pixels)")
    assert "--max-pixels" in reason


def test_unreadable_files_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "perm" / "cats"
    folder.mkdir(parents=True)
    (folder / "ok.jpg").write_bytes(_jpeg_bytes())
    (folder / "secret.jpg").write_bytes(_jpeg_bytes())
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and not str(path).endswith("secret.jpg"))
    source = open_source(tmp_path / "perm")
    assert {it.path: it.skip_reason for it in source.items} == {
        "cats/ok.jpg": "", "cats/secret.jpg": "permission denied",
    }
    monkeypatch.setattr(os, "access", real_access)

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    source = open_source(tmp_path / "perm")  # readable at listing, not any more at decoding
    monkeypatch.setattr(Image, "open", denied)
    assert source.read(source.items[0]) == (None, "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its permissions")
def test_unreadable_permissions_for_real(tmp_path: Path) -> None:
    folder = tmp_path / "perm" / "cats"
    folder.mkdir(parents=True)
    (folder / "ok.jpg").write_bytes(_jpeg_bytes())
    (folder / "secret.jpg").write_bytes(_jpeg_bytes())
    (folder / "secret.jpg").chmod(0)
    try:
        source = open_source(tmp_path / "perm")
        reasons = {it.path: it.skip_reason for it in source.items}
        assert reasons["cats/secret.jpg"] == "permission denied"
    finally:
        (folder / "secret.jpg").chmod(0o644)


def test_file_replaced_by_a_fifo_after_listing_is_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "later" / "cats"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(_jpeg_bytes())
    (folder / "b.jpg").write_bytes(_jpeg_bytes())
    source = open_source(tmp_path / "later")
    (folder / "b.jpg").unlink()
    os.mkfifo(folder / "b.jpg")  # opening it for reading would block forever
    (folder / "a.jpg").unlink()
    assert source.read(source.items[0]) == (None, "file not found")
    assert source.read(source.items[1]) == (None, "not a regular file (a FIFO)")


def test_folder_whose_every_file_is_bad_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "bad" / "cats"
    folder.mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"")
    os.mkfifo(folder / "b.jpg")
    with pytest.raises(CnnCodesError, match=r"holds no readable images .*skipped: empty file \(0 bytes\), not a regular file"):
        open_source(tmp_path / "bad")


def test_split_whose_every_file_is_skipped_warns(tmp_path: Path) -> None:
    for split, data in (("train", _jpeg_bytes()), ("val", b"")):
        (tmp_path / "s" / split / "cats").mkdir(parents=True)
        (tmp_path / "s" / split / "cats" / "a.jpg").write_bytes(data)
    (tmp_path / "s" / "extra").mkdir()
    (tmp_path / "s" / "stray.jpg").write_bytes(_jpeg_bytes())
    source = open_source(tmp_path / "s")
    assert [it.path for it in source.items] == ["train/cats/a.jpg", "val/cats/a.jpg"]
    text = "\n".join(source.warnings)
    assert "Every file of split 'val' is skipped (1; first: empty file (0 bytes))" in text
    assert "Folder 'extra' is not a split" in text
    assert "1 image(s) lie outside any class folder and are not used (first: 'stray.jpg')" in text


def test_backbone_transform_of_extreme_aspect_images_stays_small(decoded) -> None:
    from cnncodes.nets.backbones import load_backbone

    _, results = decoded
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    for path in ("cats/wide.png", "cats/tall.png", "cats/big.png", "cats/exif.jpg"):
        assert tuple(backbone.transform(results[path][0]).shape) == (3, 224, 224)


def test_ordinary_images_are_not_cropped(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 255, (300, 1200, 3), dtype=np.uint8)  # 4:1
    Image.fromarray(pixels).save(path)
    source = ImageSource(tmp_path, "folder", [Item("photo.png", -1)], [], "", False)
    image, _ = source.read(source.items[0])
    assert image is not None and (np.asarray(image) == pixels).all()
