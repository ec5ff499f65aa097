"""The fast JPEG path (simplejpeg) gives PIL's pixels, and leaves what it cannot do to PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes.data import decode
from cnncodes.data.decode import decode_image, decoder_name

simplejpeg = pytest.importorskip("simplejpeg", reason="the [fast] extra is not installed")


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts simplejpeg decodes, so that a test knows the fast path really ran."""
    calls: list[int] = []
    real = simplejpeg.decode_jpeg

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(simplejpeg, "decode_jpeg", counting)
    return calls


def _both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    monkeypatch.setenv("CNNCODES_DECODER", "pil")
    slow = np.asarray(decode_image(path), dtype=np.int16)
    monkeypatch.delenv("CNNCODES_DECODER")
    fast = np.asarray(decode_image(path), dtype=np.int16)
    return slow, fast


def test_decoder_name_follows_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert decoder_name() == f"simplejpeg {simplejpeg.__version__}"
    monkeypatch.setenv("CNNCODES_DECODER", "pil")
    assert decoder_name() == "pil"


def test_every_real_photo_decodes_to_pils_pixels(hymenoptera: Path, counted: list[int],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    photos = sorted(p for p in hymenoptera.glob("*/*/*") if p.suffix in (".jpg", ".jpeg"))
    assert len(photos) == 397
    worst = 0
    for photo in photos:
        slow, fast = _both(photo, monkeypatch)
        assert slow.shape == fast.shape, photo
        worst = max(worst, int(np.abs(slow - fast).max()))
    assert len(counted) == len(photos)
    assert worst <= 1  # the documented tolerance; 0 with the libjpeg-turbo of these wheels


@pytest.fixture(scope="module")
def crafted(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Variants of one real photo: rotated by EXIF, big, grey, progressive, CMYK, cut short."""
    folder = tmp_path_factory.mktemp("jpegs")
    photo = Image.open(sorted(hymenoptera.glob("val/bees/*.jpg"))[0])
    exif = photo.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to stand up
    photo.save(folder / "rotated.jpg", exif=exif)
    photo.resize((photo.width * 4, photo.height * 4)).save(folder / "big.jpg", quality=90)
    photo.convert("L").save(folder / "grey.jpg")
    photo.save(folder / "progressive.jpg", progressive=True)
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    data = (folder / "grey.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return folder


@pytest.mark.parametrize(("name", "fast_path"), [
    ("rotated", True), ("big", True), ("grey", True), ("progressive", True), ("cmyk", False),
])
def test_crafted_jpegs_match_pil(crafted: Path, name: str, fast_path: bool, counted: list[int],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    slow, fast = _both(crafted / f"{name}.jpg", monkeypatch)
    assert slow.shape == fast.shape
    assert int(np.abs(slow - fast).max()) <= 1
    assert bool(counted) == fast_path  # CMYK is left to PIL
    if name == "rotated":
        assert fast.shape[0] < fast.shape[1]  # the portrait photo now lies landscape
    if name == "big":
        assert min(fast.shape[:2]) < min(Image.open(crafted / "big.jpg").size)  # reduced decode


def test_a_truncated_jpeg_is_still_refused(crafted: Path) -> None:
    with pytest.raises(OSError, match="truncated"):
        decode_image(crafted / "truncated.jpg")


def test_fast_path_is_off_without_simplejpeg(monkeypatch: pytest.MonkeyPatch,
                                             crafted: Path) -> None:
    monkeypatch.setattr(decode, "_simplejpeg", lambda: None)
    assert decode.decoder_name() == "pil"
    assert decode_image(crafted / "grey.jpg").mode == "RGB"
