"""WebDataset tar shards as a source: samples ``key.jpg`` + ``key.cls`` or ``key.json``.

A source given as ``shards/train-{000..009}.tar`` (a brace pattern, expanded with the
``webdataset`` library), one ``.tar`` file, or several separated by ``::`` holds samples
in WebDataset's layout: the members of one sample sit next to each other in the tar and
share a key, the member name up to the first dot of its base name (``a/b/0001.jpg`` and
``a/b/0001.cls`` are sample ``a/b/0001``; ``webdataset``'s own split). Shards are read in
sorted order and samples in tar order; the key is the path stored for the sample.

- The image is the sample's member with an image extension (``jpg``, ``png``, ...).
- The label is ``key.cls`` (an integer; classes ``0``, ``1``, ...) or the ``label`` (or
  ``cls``) field of ``key.json`` (an integer or a class name).
- The split is the ``split`` field of ``key.json``, else the shard name when it starts
  with ``train``, ``val`` or ``test`` (``train-000.tar``), else none.

Listing reads tar headers and the small label members only, never an image; it records
where each image lies in its shard, so that any image can be read on its own. That
random access is what lets parts, resume and torchrun shards work on tars exactly as on
folders (WebDataset's own streaming reader cannot jump to a sample). A sample without an
image, a link member, or a shard that is not a tar, is reported with its reason, as for
folders. Nothing is ever extracted to disk and links are never followed, so member names
like ``../../x.jpg`` or links to ``/etc/passwd`` reach nothing outside the tar.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnCodesError
from .decode import display_path

__all__ = ["TarListing", "TarSample", "is_tar_source", "list_tar_shards", "read_member"]

SEPARATOR = "::"
_SPLIT_NAME = re.compile(r"(train|val|test)(?![a-z])", re.IGNORECASE)
_LABEL_MEMBER_LIMIT = 1 << 16  # a .cls or .json bigger than this is not a label


@dataclass(frozen=True)
class TarSample:
    """One sample: its key, label text ('' if none), split, and where its image lies
    (shard index, byte offset, size), or the reason it is skipped."""

    key: str
    label: str
    split: str
    image: tuple[int, int, int] | None
    reason: str = ""


@dataclass
class TarListing:
    shards: list[Path]
    samples: list[TarSample]
    fingerprint_parts: list[object]


def is_tar_source(path: str) -> bool:
    """A ``.tar`` path, a brace pattern of them, or several joined by ``::``."""
    return all(part.lower().endswith(".tar") for part in str(path).split(SEPARATOR))


def expand_shards(path: str) -> list[Path]:
    """The shard files ``path`` names, sorted; every one must exist."""
    expand = _webdataset().braceexpand
    names = [name for part in str(path).split(SEPARATOR) for name in expand(part)]
    shards = sorted({Path(name).expanduser() for name in names})
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing:
        raise CnnCodesError(
            f"Tar source {display_path(str(path))!r}: {len(missing)} of {len(shards)} shard(s) "
            f"do not exist (first: {display_path(missing[0])!r}); check the pattern."
        )
    return shards


def list_tar_shards(path: str, image_extensions: tuple[str, ...]) -> TarListing:
    """List every sample of the shards ``path`` names (headers and label members only)."""
    base_plus_ext = _webdataset().base_plus_ext
    shards = expand_shards(path)
    samples: list[TarSample] = []
    fingerprint: list[object] = []
    for index, shard in enumerate(shards):
        stat = shard.stat()
        fingerprint.append([shard.name, stat.st_size, stat.st_mtime_ns])
        shard_split = _split_of(shard.name)
        try:
            with tarfile.open(shard, "r:") as archive:
                grouped = _group_members(archive, base_plus_ext)
                for key, members in grouped:
                    samples.append(_sample(archive, index, key, members, shard_split,
                                           image_extensions))
        except (tarfile.TarError, OSError) as error:
            raise CnnCodesError(
                f"Shard {display_path(str(shard))!r} is not a readable tar file ({error}); "
                "check or re-create it."
            ) from None
    return TarListing(shards, samples, fingerprint)


@dataclass(frozen=True)
class _Webdataset:
    braceexpand: Callable[[str], Iterator[str]]
    base_plus_ext: Callable[[str], tuple[str | None, str | None]]


def _webdataset() -> _Webdataset:
    """The two pieces of the ``webdataset`` library listing uses, or a one-line error."""
    try:
        from braceexpand import braceexpand
        from webdataset.tariterators import base_plus_ext
    except ImportError:
        raise CnnCodesError(
            "Tar shards need the webdataset library: pip install 'cnncodes[tar]'."
        ) from None
    return _Webdataset(braceexpand, base_plus_ext)


def _group_members(archive: tarfile.TarFile, split_name: Callable[[str], tuple[str | None, str | None]]
                   ) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Consecutive regular members with one key, as WebDataset groups them, in tar order."""
    groups: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    for member in archive:
        if member.isdir():
            continue
        key, extension = split_name(member.name)
        if key is None or extension is None:  # a name without a dot belongs to no sample
            continue
        if not groups or groups[-1][0] != key:
            groups.append((key, {}))
        groups[-1][1][extension.lower()] = member
    return groups


def _sample(archive: tarfile.TarFile, index: int, key: str, members: dict[str, tarfile.TarInfo],
            shard_split: str, image_extensions: tuple[str, ...]) -> TarSample:
    meta = _json_member(archive, members.get("json"))
    label = _read_text(archive, members.get("cls")) if "cls" in members else ""
    if not label and isinstance(meta, dict):
        value = meta.get("label", meta.get("cls", ""))
        label = "" if value is None else str(value)
    split = str(meta.get("split", "")) if isinstance(meta, dict) else ""
    split = split if split in ("train", "val", "test") else shard_split
    exact = [e for e in members if "." + e in image_extensions]  # key.jpg before key.seg.png
    loose = [e for e in members if "." + e.rsplit(".", 1)[-1] in image_extensions]
    image = members[(exact or loose)[0]] if exact or loose else None
    if image is None:
        found = ", ".join(f"{key}.{e}" for e in members)
        return TarSample(key, label, split, None, f"no image in the sample (members: {found})")
    if not image.isfile():  # never followed: a link could point anywhere on this machine
        return TarSample(key, label, split, None, "not a regular file in the tar (a link)")
    if image.size == 0:
        return TarSample(key, label, split, None, "empty file (0 bytes)")
    return TarSample(key, label, split, (index, image.offset_data, image.size))


def _read_text(archive: tarfile.TarFile, member: tarfile.TarInfo | None) -> str:
    if member is None or not member.isfile() or member.size > _LABEL_MEMBER_LIMIT:
        return ""
    handle = archive.extractfile(member)
    return handle.read().decode("utf-8", "replace").strip() if handle else ""


def _json_member(archive: tarfile.TarFile, member: tarfile.TarInfo | None) -> object:
    text = _read_text(archive, member)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _split_of(name: str) -> str:
    match = _SPLIT_NAME.match(name)
    return match[1].lower() if match else ""


def read_member(shard: Path, offset: int, size: int) -> bytes:
    """The bytes of one member, read from where listing found it."""
    with open(shard, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) != size:
        raise OSError(f"shard {os.path.basename(shard)} ends before the image does (truncated)")
    return data
