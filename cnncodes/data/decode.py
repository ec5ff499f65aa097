"""Decoding: from a file to the 8-bit RGB image a backbone's transform expects.

What every image becomes before the backbone's own transform (:func:`decode_image`):

- an image over ``max_pixels`` is refused from its header, before any pixel is decoded;
- the EXIF orientation is applied, so a phone photo stands as its owner saw it;
- every mode becomes 8-bit RGB: 16-bit images are scaled by 1/257 and float or 32-bit
  ones from their value range (PIL's ``convert`` would clip them at 255, to white), and
  transparent pixels are composited on white, as a viewer shows them (``convert("RGB")``
  alone shows whatever colour hides under them, often black);
- the long side is centre-cropped to ``MAX_ASPECT`` times the short side: eval transforms
  (resize the short side, centre-crop a square) only use the centre, and without the crop
  a 1x20000 strip would be resized to 256x5,120,000;
- big images are decoded at reduced scale (JPEG draft) or reduced after decoding, keeping
  the short side at least ``DRAFT_MIN_SIDE``, twice the usual network input.

Baseline JPEGs in RGB or grey (most photos) are decoded by simplejpeg when it is installed
(``pip install 'cnncodes[fast]'``): the same libjpeg-turbo as PIL's, called without
PIL's per-file overhead. Its pixels equal PIL's on every photo tested (0 of 255 levels
apart on the 397 hymenoptera JPEGs, tests/test_decode.py); a build of another libjpeg
version may round differently by a level. CMYK, 12-bit and damaged JPEGs, and every
other format, take PIL's path. ``CNNCODES_DECODER=pil`` turns the fast path off.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "as_decoded",
    "DECODING", "decoder_name", "MAX_ASPECT", "MAX_PIXELS", "UnusableFile", "decode_image", "display_path",
    "first_line",
]

# PIL's own refusal threshold (twice Image.MAX_IMAGE_PIXELS): about 13,400 x 13,400.
MAX_PIXELS = 2 * 89_478_485
MAX_ASPECT = 4
DRAFT_MIN_SIDE = 512
# Part of every file source's fingerprint: stores made by an older decoding are not reused.
DECODING = "rgb8-exif-white-aspect4-v2"
_PIL_LIMIT = threading.Lock()
_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the transpose that stands the image up (as ImageOps)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def _simplejpeg() -> Any:
    if os.environ.get("CNNCODES_DECODER", "").lower() == "pil":
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def decoder_name() -> str:
    """``simplejpeg X.Y`` when JPEGs take the fast path here, else ``pil``."""
    fast = _simplejpeg()
    return f"simplejpeg {fast.__version__}" if fast is not None else "pil"


def display_path(path: str) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` escapes.

    Listing keeps names in :func:`os.fsdecode` form, where such bytes are lone surrogates
    that no UTF-8 writer (terminal, HDF5, JSON) accepts.
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class UnusableFile(OSError):
    """A file that decoding refuses on purpose; the message is the reported reason."""


def decode_image(path: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS
                 ) -> Image.Image:
    """Decode an image file, or an image file's bytes (a tar member), to 8-bit RGB with
    bounded memory (see the module docstring).

    Raises:
        OSError: the file is over ``max_pixels``, missing, unreadable, or not an image;
            PIL may raise other errors on malformed files (:meth:`ImageSource.read`
            turns them all into reasons).
    """
    with _open_within_budget(path, max_pixels) as image:
        scale = min(image.size) // DRAFT_MIN_SIDE
        decoded = _fast_jpeg(path, image, scale)
        if decoded is None:
            if image.format == "JPEG" and scale >= 2:
                # Let libjpeg decode big photos at a reduced scale (still at least twice
                # the network input), which is several times faster than a full decode.
                image.draft("RGB", (image.width // scale, image.height // scale))
            image.load()
            with contextlib.suppress(Exception):  # a damaged EXIF block costs the orientation
                ImageOps.exif_transpose(image, in_place=True)
            decoded = image
        rgb = as_decoded(decoded)
    factor = min(rgb.size) // DRAFT_MIN_SIDE
    return rgb.reduce(factor) if factor >= 2 else rgb


def _fast_jpeg(path: str | os.PathLike[str] | bytes, image: Image.Image, scale: int
               ) -> Image.Image | None:
    """Decode a plain RGB or grey JPEG with simplejpeg, or None to take PIL's path.

    Same reduced-scale decoding as PIL's draft, same EXIF orientation; anything simplejpeg
    refuses falls back to PIL, which then reports the file's problem in its own words.
    """
    fast = _simplejpeg()
    if fast is None or image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    try:
        if isinstance(path, bytes):
            data = path
        else:
            with open(path, "rb") as file:
                data = file.read()
        if scale >= 2:  # PIL's draft: the largest power-of-two reduction within scale
            reduction = 8 if scale >= 8 else 4 if scale >= 4 else 2
            width, height = -(-image.width // reduction), -(-image.height // reduction)
            pixels = fast.decode_jpeg(data, colorspace="RGB", min_width=width, min_height=height)
        else:
            pixels = fast.decode_jpeg(data, colorspace="RGB")
    except (ValueError, OSError):  # damaged or unusual: PIL decides and names the reason
        return None
    decoded = Image.fromarray(pixels, "RGB")
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block costs the orientation only
        orientation = 1
    method = _TRANSPOSE.get(orientation)
    return decoded.transpose(method) if method is not None else decoded


@contextlib.contextmanager
def _pil_limit_lifted() -> Iterator[None]:
    # PIL refuses big images at open (and crop) time with its own global limit, before
    # the size can be named; the source's own budget, checked right after, replaces it.
    with _PIL_LIMIT:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _open_within_budget(path: str | os.PathLike[str] | bytes, max_pixels: int) -> Image.Image:
    with _pil_limit_lifted():
        image = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise UnusableFile(
            f"image is {width}x{height} = {width * height:,} pixels, over the budget of "
            f"{max_pixels:,} (a decompression bomb?); if you trust the file, raise the "
            "budget with --max-pixels"
        )
    return image


def _crop_aspect(image: Image.Image) -> Image.Image:
    width, height = image.size
    longest = MAX_ASPECT * min(width, height)
    if width > longest:
        left = (width - longest) // 2
        box = (left, 0, left + longest, height)
    elif height > longest:
        top = (height - longest) // 2
        box = (0, top, width, top + longest)
    else:
        return image
    with _pil_limit_lifted():
        return image.crop(box)


def as_decoded(image: Image.Image) -> Image.Image:
    """What :func:`decode_image` makes of an image once read: a side longer than
    ``MAX_ASPECT`` times the other centre-cropped, 16-bit and float pixels scaled to 8
    bits, transparent pixels (alpha, palette or colour key) composited on white, RGB."""
    return _to_rgb(_crop_aspect(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    transparent = "transparency" in image.info  # a palette entry or colour key
    if image.mode == "RGB" and not transparent:
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _to_8bit(image).convert("RGB")
    if image.mode == "PA" or (transparent and image.mode in ("P", "L", "1", "RGB")):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa", "LA", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float single-channel image as 8-bit grey, scaled, not clipped."""
    values = np.asarray(image).astype(np.float32)
    if image.mode.startswith("I;16"):
        values /= 257.0
    else:
        finite = np.isfinite(values)
        low = float(values[finite].min()) if finite.any() else 0.0
        high = float(values[finite].max()) if finite.any() else 0.0
        if image.mode == "F" and low >= 0 and high <= 1:
            values *= 255.0
        elif low >= 0 and high <= 255:
            pass
        elif image.mode == "I" and low >= 0 and high <= 65535:  # 16-bit data held as 32-bit
            values /= 257.0
        else:
            values = (values - low) * (255.0 / ((high - low) or 1.0))
        values[~finite] = 0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def first_line(error: BaseException) -> str:
    return str(error).split("\n")[0] or type(error).__name__
