"""The HDF5 code store: one file per source x backbone x layers x pooling x preprocessing.

Layout (readable with plain h5py)::

    /codes/<node name>   float32 [N, D], chunked by rows
    /labels              int64 [N] (-1 = unlabeled)
    /classes             utf-8 [C]
    /paths               utf-8 [N], relative to the source root; bytes of a file name that
                         are not UTF-8 appear escaped as \\xNN
    /paths_raw           bytes [N]: the exact file-name bytes (os.fsencode) of each row
    /split               utf-8 [N] (only when the source has train/val/test)
    /source_index        int64 [N] (only with augmented views): each row's image, as its
                         position in the source listing; rows of one image share it
    /view                int64 [N] (only with augmented views): 0 = the image itself,
                         1.. = an augmented view of it (attribute ``views`` says how made)
    /skipped/path, /skipped/reason   utf-8 [K]: every image that was not encoded, and why
    /skipped/path_raw    bytes [K]: the exact file-name bytes of each skipped image
    attributes           format_version (2; 3 with views), attributes_sha256, cnncodes_version, backbone,
                         weights, weights_sha256, layer_specs, layers, pooling,
                         preprocessing, source, source_kind, source_fingerprint, store_key,
                         n_images, n_skipped, complete

Strings are fixed-length so that their bytes lie inside checksummed chunks; h5py reads
them as bytes (``dataset.asstr()[:]`` gives str).

Integrity: every dataset is chunked with a fletcher32 checksum, so a flipped byte
anywhere in the data fails when that chunk is read. ``attributes_sha256`` is the sha256
of every other attribute and of the dataset layout (names, shapes, dtypes); it is
checked on open, without reading the data. A store without ``format_version`` (written
before it existed) or with another version is refused with the way to re-extract it.
Codes that are not finite (NaN, inf) are refused when they are loaded.

Writing is crash-safe: extraction writes numbered part files (each renamed into place
only once complete), and :func:`assemble_store` joins them into ``NAME.h5.tmp`` that is
renamed over ``NAME.h5`` at the very end. A killed run leaves finished parts behind and
resumes from them; a finished store is never left half-overwritten.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CnnCodesError

__all__ = ["CodeStore", "PartWriter", "assemble_store", "seal_store", "FORMAT_VERSION",
           "VIEWS_FORMAT_VERSION",
           "STRING"]

STRING = h5py.string_dtype(encoding="utf-8")
ROWS_PER_CHUNK = 256
STRINGS_PER_CHUNK = 4096
FORMAT_VERSION = 2
# A store with augmented views (/view, /source_index) is version 3: a cnncodes that reads
# only version 2 refuses it instead of taking its view rows for images.
VIEWS_FORMAT_VERSION = 3
VERSION_ATTR = "format_version"
DIGEST_ATTR = "attributes_sha256"
SPLIT_VALUES = ("train", "val", "test", "")
# Filters HDF5 applies without loading a plugin: deflate, shuffle, fletcher32, h5py's lzf.
BUILTIN_FILTERS = {1, 2, 3, 32000}
PART_NAME = re.compile(r"part-(\d{9})-(\d{9})")


# --- strings: escaped UTF-8 for display, exact bytes for the file system ---------------


def _file_bytes(text: str) -> bytes:
    """The exact bytes of a file name held in os.fsdecode form (lone surrogates)."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:  # a surrogate that os.fsdecode never makes
        return text.encode("utf-8", "backslashreplace")


def _display(raw: bytes) -> str:
    """Valid UTF-8 text for any bytes: what is not UTF-8 shows as \\xNN."""
    return raw.decode("utf-8", "backslashreplace")


def display_text(text: str) -> str:
    """``text`` as valid UTF-8: file-name bytes that are not UTF-8 escaped as \\xNN."""
    return _display(_file_bytes(text))


def _fixed(values: Iterable[bytes], encoding: str | None) -> np.ndarray:
    """Fixed-length HDF5 strings (``encoding`` None: raw bytes, tagged ASCII)."""
    data = list(values)
    length = max([1, *map(len, data)])
    dtype = h5py.string_dtype(encoding, length) if encoding else np.dtype(f"S{length}")
    return np.array(data, dtype=dtype)


def _text(values: Iterable[str]) -> np.ndarray:
    return _fixed((display_text(v).encode("utf-8") for v in values), "utf-8")


def _raw(values: Iterable[str]) -> np.ndarray:
    return _fixed((_file_bytes(v) for v in values), None)


def _decode(values: np.ndarray) -> list[str]:
    return [_display(bytes(v)) if isinstance(v, bytes) else str(v) for v in values]


def _create(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    """A chunked dataset with a fletcher32 checksum, even when small or empty."""
    data = np.asarray(data)
    rows = ROWS_PER_CHUNK if data.ndim > 1 else STRINGS_PER_CHUNK
    chunks = (max(1, min(rows, data.shape[0])), *(max(1, s) for s in data.shape[1:]))
    # Chunks may not exceed a fixed shape; an empty dataset is made resizable instead.
    maxshape = (None,) * data.ndim if 0 in data.shape else None
    # Fixed-length strings are mostly padding: deflate (built into every HDF5) removes it.
    packed = {"compression": "gzip", "compression_opts": 4} if data.dtype.kind == "S" else {}
    return group.create_dataset(name, data=data, chunks=chunks, maxshape=maxshape,
                                fletcher32=True, **packed)


# --- the attribute digest -------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return _display(value)
    return value


def _digest(handle: h5py.File) -> str:
    """sha256 of every attribute but the digest itself, and of the dataset layout."""
    attrs = {key: _plain(value) for key, value in handle.attrs.items() if key != DIGEST_ATTR}
    layout: list[list[Any]] = []

    def visit(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            layout.append([name, list(item.shape), item.dtype.str])

    handle.visititems(visit)
    text = json.dumps({"attrs": attrs, "datasets": sorted(layout)}, sort_keys=True,
                      default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal_store(handle: h5py.File) -> None:
    """Mark a store written or edited with plain h5py as this format and re-sign it.

    For tools and tests that write a code store themselves; call it last, with the file
    open for writing. Without it, an edited store is refused as corrupted.
    """
    handle.attrs[VERSION_ATTR] = VIEWS_FORMAT_VERSION if "view" in handle else FORMAT_VERSION
    handle.attrs[DIGEST_ATTR] = _digest(handle)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [error.__class__.__name__])[0]


def _re_extract(path: Path) -> str:
    return f"re-extract it (delete {str(path)!r} and run the same cnncodes extract)"


# --- writing ----------------------------------------------------------------------------


class PartWriter:
    """Numbered, atomically written shards of an unfinished extraction.

    ``manifest`` (the store key and settings) is written once; a parts folder whose
    manifest differs is from another extraction and is refused rather than mixed in.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest_path = self.folder / "manifest.json"
        if manifest_path.exists():
            try:
                existing = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                existing = None
            if existing != json.loads(json.dumps(manifest)):
                raise CnnCodesError(
                    f"Folder {str(self.folder)!r} holds parts of a different extraction; "
                    "delete it or choose another --out."
                )
        else:
            temporary = manifest_path.with_suffix(f".{os.getpid()}.tmp")  # ranks race here
            temporary.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            os.replace(temporary, manifest_path)

    def parts(self) -> list[tuple[int, int, Path]]:
        """Finished parts as (first position, end position, file), in order."""
        found = []
        for path in self.folder.glob("part-*.h5"):
            match = PART_NAME.fullmatch(path.stem)
            if match:  # anything else in the folder is not ours
                found.append((int(match[1]), int(match[2]), path))
        return sorted(found)

    def write(
        self,
        start: int,
        end: int,
        positions: Sequence[int],
        codes: dict[str, np.ndarray],
        skipped: Sequence[tuple[int, str]],
    ) -> Path:
        final = self.folder / f"part-{start:09d}-{end:09d}.h5"
        temporary = final.with_suffix(".h5.tmp")
        with h5py.File(temporary, "w") as handle:
            _create(handle, "positions", np.asarray(positions, dtype=np.int64))
            for name, array in codes.items():
                _create(handle, f"codes/{name}", np.asarray(array, dtype=np.float32))
            _create(handle, "skipped_positions",
                    np.asarray([p for p, _ in skipped], dtype=np.int64))
            _create(handle, "skipped_reasons", _text(r for _, r in skipped))
        os.replace(temporary, final)
        return final


def _read_part(path: Path, start: int, end: int, layers: Sequence[str]) -> dict[str, Any]:
    """One part's contents, checked: checksums, every layer, positions inside its range."""
    damaged = (f"Part file {str(path)!r} is damaged; delete it and run the same cnncodes "
               "extract again (it redoes only that part)")
    try:
        with h5py.File(path, "r") as part:
            out = {
                "positions": part["positions"][:],
                "codes": {name: part[f"codes/{name}"][:] for name in layers},
                "skipped_positions": part["skipped_positions"][:],
                "skipped_reasons": _decode(part["skipped_reasons"][:]),
            }
    except (OSError, KeyError, ValueError) as error:
        raise CnnCodesError(f"{damaged} ({_first_line(error)}).") from None
    every = np.concatenate([out["positions"], out["skipped_positions"]]).astype(np.int64)
    rows = len(out["positions"])
    if (
        len(every) and (every.min() < start or every.max() >= end)
        or len(np.unique(every)) != len(every)
        or any(array.shape[0] != rows or array.ndim != 2 for array in out["codes"].values())
        or len(out["skipped_reasons"]) != len(out["skipped_positions"])
    ):
        raise CnnCodesError(f"{damaged} (its rows do not match positions {start}-{end}).")
    return out


def _check_coverage(folder: Path, positions: np.ndarray, n_skipped: int, n_items: int) -> None:
    """Parts must cover every listed image exactly once (a torchrun rank may be missing)."""
    if len(np.unique(positions)) != len(positions):
        raise CnnCodesError(
            f"Folder {str(folder)!r} holds parts that overlap; delete it and run the same "
            "cnncodes extract again."
        )
    if len(positions) + n_skipped != n_items:
        raise CnnCodesError(
            f"Folder {str(folder)!r} holds parts for {len(positions) + n_skipped} of {n_items} "
            "images; run the same cnncodes extract again to encode the rest."
        )


def assemble_store(
    writer: PartWriter,
    out: Path,
    *,
    layers: Sequence[str],
    dims: dict[str, int],
    items: Sequence[Any],
    classes: Sequence[str],
    has_split: bool,
    attrs: dict[str, Any],
    views: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Join the finished parts into one HDF5 store, streaming part by part.

    Positions are rows: ``items[p]`` is row ``p``'s image; with ``views`` (the source
    position and view number of every position) ``/source_index`` and ``/view`` are
    written, and an unreadable image is listed once in ``/skipped``, not once per view.
    """
    parts = writer.parts()
    total = 0
    for _, _, path in parts:
        try:
            with h5py.File(path, "r") as handle:
                total += len(handle["positions"])
        except (OSError, KeyError) as error:
            raise CnnCodesError(
                f"Part file {str(path)!r} is damaged ({_first_line(error)}); delete it and run the same "
                "cnncodes extract again (it redoes only that part)."
            ) from None
    temporary = out.with_name(out.name + ".tmp")
    skipped: list[tuple[int, str]] = []
    with h5py.File(temporary, "w") as store:
        datasets = {
            name: store.create_dataset(
                f"codes/{name}", shape=(total, dims[name]), dtype=np.float32,
                chunks=(max(1, min(ROWS_PER_CHUNK, total)), max(1, dims[name])),
                maxshape=None if total and dims[name] else (None, None), fletcher32=True,
            )
            for name in layers
        }
        positions = np.empty(total, dtype=np.int64)
        row = 0
        for start, end, path in parts:
            part = _read_part(path, start, end, layers)
            count = len(part["positions"])
            positions[row: row + count] = part["positions"]
            for name in layers:
                datasets[name][row: row + count] = part["codes"][name]
            skipped += zip(part["skipped_positions"].tolist(), part["skipped_reasons"])
            row += count
        _check_coverage(writer.folder, positions, len(skipped), len(items))
        _create(store, "classes", _text(classes))
        _write_rows(store, items, positions.tolist(), has_split, views)
        if views is not None:  # an unreadable image once, not once per view
            skipped = [(p, r) for p, r in skipped if views[1][p] == 0]
        _create(store, "skipped/path", _text(items[p].path for p, _ in skipped))
        _create(store, "skipped/path_raw", _raw(items[p].path for p, _ in skipped))
        _create(store, "skipped/reason", _text(r for _, r in skipped))
        for key, value in attrs.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value)
            elif isinstance(value, str):
                # str() drops subclasses h5py cannot store (TorchVersion); the escape keeps
                # a source folder whose name is not UTF-8 writable.
                value = display_text(str(value))
            store.attrs[key] = value
        store.attrs["n_images"] = total
        store.attrs["n_skipped"] = len(skipped)
        store.attrs["complete"] = True
        seal_store(store)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, out)
    shutil.rmtree(writer.folder, ignore_errors=True)
    return out


def _write_rows(store: h5py.File, items: Sequence[Any], order: list[int], has_split: bool,
                views: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Labels, paths, split and (with views) source image and view of every row."""
    _create(store, "labels", np.array([items[p].label for p in order], dtype=np.int64))
    _create(store, "paths", _text(items[p].path for p in order))
    _create(store, "paths_raw", _raw(items[p].path for p in order))
    if has_split:
        _create(store, "split", _text(items[p].split for p in order))
    if views is not None:
        _create(store, "source_index", views[0][order].astype(np.int64))
        _create(store, "view", views[1][order].astype(np.int64))


# --- reading ----------------------------------------------------------------------------


class CodeStore:
    """Read a finished code store: codes per layer, labels, paths, split, skipped images.

    Opening checks the format version, the attribute digest and that every dataset is
    present with consistent row counts; reading data checks each chunk's checksum, and
    codes must be finite. Any failure is one :class:`CnnCodesError` that says to
    re-extract.

    Example:
        >>> with CodeStore("cache/hymenoptera.h5") as store:
        ...     X, y = store.load(split="train")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CnnCodesError(
                f"Code store {str(path)!r} does not exist; create one with 'cnncodes extract'."
            )
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise CnnCodesError(
                f"{str(path)!r} is not a readable HDF5 code store ({_first_line(error)}); extract it again."
            ) from None
        try:
            self._check()
        except BaseException:
            self._file.close()
            raise

    def _check(self) -> None:
        name, handle = str(self.path), self._file
        try:
            attrs = dict(handle.attrs)
            is_store = "codes" in handle and "cnncodes_version" in attrs
        except CnnCodesError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as error:
            raise CnnCodesError(
                f"Code store {name!r} is corrupted ({_first_line(error)}); {_re_extract(self.path)}."
            ) from None
        if not is_store:
            raise CnnCodesError(
                f"{name!r} is an HDF5 file but not a cnncodes code store (no /codes); "
                "create one with 'cnncodes extract'."
            )
        if not bool(attrs.get("complete", False)):
            raise CnnCodesError(
                f"Code store {name!r} is incomplete; run the same 'cnncodes extract' "
                "again to finish it."
            )
        self._check_version(attrs.get(VERSION_ATTR), has_views="view" in handle)
        try:
            self._check_layout()
            digest = _digest(handle)
        except CnnCodesError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
            raise CnnCodesError(
                f"Code store {name!r} is corrupted ({_first_line(error)}); {_re_extract(self.path)}."
            ) from None
        if attrs.get(DIGEST_ATTR) != digest:
            raise CnnCodesError(
                f"Code store {name!r} is corrupted or was edited (its attributes or layout "
                f"no longer match {DIGEST_ATTR}); {_re_extract(self.path)}."
            )

    def _check_version(self, version: Any, *, has_views: bool) -> None:
        name = str(self.path)
        redo = "re-extract with this cnncodes (delete it and run the same cnncodes extract)"
        reads = f"{FORMAT_VERSION}, or {VIEWS_FORMAT_VERSION} with views"
        if version is None:
            raise CnnCodesError(
                f"Code store {name!r} was written by an older cnncodes (it has no "
                f"{VERSION_ATTR}; this one reads version {reads}); {redo}."
            )
        if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
            raise CnnCodesError(
                f"Code store {name!r} is corrupted ({VERSION_ATTR} is {version!r}, not a "
                f"number); {redo}."
            )
        if int(version) not in (FORMAT_VERSION, VIEWS_FORMAT_VERSION):
            age = "an older" if int(version) < FORMAT_VERSION else "a newer"
            raise CnnCodesError(
                f"Code store {name!r} has {VERSION_ATTR} {int(version)}, from {age} "
                f"cnncodes (this one reads {reads}); {redo}"
                + (", or upgrade cnncodes." if age == "a newer" else ".")
            )
        if (int(version) == VIEWS_FORMAT_VERSION) != has_views:
            raise CnnCodesError(
                f"Code store {name!r} is corrupted ({VERSION_ATTR} {int(version)} "
                f"{'needs' if not has_views else 'cannot hold'} /view); {redo}."
            )

    def _check_layout(self) -> None:
        """Every dataset present, plain (no links to other files, no plugin filters) and
        with one row per image; reads no data."""
        handle, name = self._file, str(self.path)

        def refuse(problem: str) -> CnnCodesError:
            return CnnCodesError(f"Code store {name!r} {problem}; {_re_extract(self.path)}.")

        layers = self.layers
        required = ["labels", "classes", "paths", "skipped/path", "skipped/reason",
                    *(f"codes/{layer}" for layer in layers)]
        optional = ["paths_raw", "split", "skipped/path_raw", "source_index", "view"]
        for group in ("codes", "skipped"):
            if not isinstance(handle.get(group, getlink=True), (h5py.HardLink, type(None))):
                raise refuse(f"has /{group} that links outside the file")
        for key in required + optional:
            link = handle.get(key, getlink=True)
            if link is None:
                if key in required:
                    raise refuse(f"is missing /{key}")
                continue
            if not isinstance(link, h5py.HardLink) or not isinstance(handle[key], h5py.Dataset):
                raise refuse(f"has /{key} that is not a dataset inside the file")

        def check(key: str, item: Any) -> None:
            if isinstance(item, h5py.Dataset):
                plist = item.id.get_create_plist()
                filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
                if item.is_virtual or item.external or filters - BUILTIN_FILTERS:
                    raise refuse(f"has /{key} stored outside the file or behind a filter "
                                 "plugin")

        handle.visititems(check)
        rows = handle["labels"].shape
        if len(rows) != 1:
            raise refuse(f"has /labels of shape {rows}, not one label per image")
        for key in ("paths", "paths_raw", "split", "source_index", "view",
                    *(f"codes/{layer}" for layer in layers)):
            if key in handle:
                shape = handle[key].shape
                if not shape or shape[0] != rows[0] or (key.startswith("codes/") and len(shape) != 2):
                    raise refuse(f"is inconsistent: /{key} has shape {shape} but /labels "
                                 f"{rows[0]} rows")
        skipped = {key: handle[key].shape for key in ("skipped/path", "skipped/reason",
                                                       "skipped/path_raw") if key in handle}
        if len(set(skipped.values())) != 1:
            raise refuse(f"is inconsistent: /skipped has shapes {skipped}")

    def __enter__(self) -> CodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read(self, key: str, selection: Any = slice(None)) -> np.ndarray:
        """Data of one dataset; a failed checksum or a missing dataset is one clear line."""
        try:
            return self._file[key][selection]
        except KeyError:
            raise CnnCodesError(
                f"Code store {str(self.path)!r} is missing /{key}; {_re_extract(self.path)}."
            ) from None
        except OSError as error:
            what = "checksum failed" if "filter" in str(error) else f"unreadable: {_first_line(error)}"
            raise CnnCodesError(
                f"Code store {str(self.path)!r} is corrupted ({what} in /{key}); "
                f"{_re_extract(self.path)}."
            ) from None

    @property
    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._file.attrs.items():
            if isinstance(value, str) and value[:1] in "[{":
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(value)
            out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    @property
    def layers(self) -> list[str]:
        listed = self.attrs.get("layers")
        if listed is None:
            return list(self._file["codes"])
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise CnnCodesError(
                f"Code store {str(self.path)!r} is corrupted (attribute layers is "
                f"{listed!r}); {_re_extract(self.path)}."
            )
        return listed

    @property
    def classes(self) -> list[str]:
        return _decode(self._read("classes"))

    @property
    def labels(self) -> np.ndarray:
        """Class index per row (-1 = unlabeled), checked against the class list."""
        labels = self._read("labels")
        if not np.issubdtype(labels.dtype, np.integer):
            raise CnnCodesError(
                f"Code store {str(self.path)!r} is corrupted (/labels holds {labels.dtype}, "
                f"not class numbers); {_re_extract(self.path)}."
            )
        n_classes = len(self.classes)
        bad = np.flatnonzero((labels < -1) | (labels >= n_classes))
        if len(bad):
            row = int(bad[0])
            raise CnnCodesError(
                f"Code store {str(self.path)!r} is corrupted: row {row} "
                f"({self._path_of(row)!r}) has label {int(labels[row])}, but there are "
                f"{n_classes} classes; {_re_extract(self.path)}."
            )
        return labels.astype(np.int64, copy=False)

    @property
    def paths(self) -> list[str]:
        """Each row's path relative to the source, as valid UTF-8 (see :attr:`file_paths`)."""
        return _decode(self._read("paths"))

    @property
    def file_paths(self) -> list[str]:
        """Each row's exact path (os.fsdecode form), to open the very file it came from.

        Equal to :attr:`paths` unless a file name is not UTF-8; stores without
        ``/paths_raw`` give :attr:`paths`.
        """
        if "paths_raw" not in self._file:
            return self.paths
        return [os.fsdecode(bytes(v)) for v in self._read("paths_raw")]

    def _path_of(self, row: int) -> str:
        return _decode(self._read("paths", slice(row, row + 1)))[0]

    @property
    def split(self) -> np.ndarray | None:
        if "split" not in self._file:
            return None
        values = np.array(_decode(self._read("split")), dtype=object)
        unknown = sorted(set(values.tolist()) - set(SPLIT_VALUES))
        if unknown:
            raise CnnCodesError(
                f"Code store {str(self.path)!r} is corrupted (/split holds {unknown[0]!r}, "
                f"not one of train, val, test); {_re_extract(self.path)}."
            )
        return values

    @property
    def views(self) -> np.ndarray:
        """Each row's view: 0 the image itself, 1.. an augmented view of it (all 0 in a
        store extracted without ``--views``)."""
        if "view" not in self._file:
            return np.zeros(len(self), dtype=np.int64)
        return self._read("view").astype(np.int64, copy=False)

    @property
    def groups(self) -> np.ndarray:
        """Each row's source image as a number: rows that share it are views of one
        image (every row its own number in a store without views)."""
        if "source_index" not in self._file:
            return np.arange(len(self), dtype=np.int64)
        return self._read("source_index").astype(np.int64, copy=False)

    @property
    def view_settings(self) -> dict[str, Any] | None:
        """How the views were made (count, seed, policy, augmentation), or None."""
        settings = self.attrs.get("views")
        return settings if isinstance(settings, dict) else None

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(zip(_decode(self._read("skipped/path")), _decode(self._read("skipped/reason"))))

    def __len__(self) -> int:
        return int(self._file["labels"].shape[0])

    def resolve(self, layer: str | int | None = None) -> str:
        """The stored layer for ``layer``: a node name, the spec as typed, or None (first)."""
        layers = self.layers
        if layer is None:
            return layers[0]
        text = str(layer)
        if text in layers:
            return text
        specs = [str(s) for s in self.attrs.get("layer_specs", [])]
        if text in specs and len(specs) == len(layers):
            return layers[specs.index(text)]
        names = self.attrs.get("node_names") or []
        if names and text.lstrip("-").isdigit() and -len(names) <= int(text) < len(names):
            name = names[int(text)]  # an index into the backbone's node list, as --layer
            if name in layers:
                return name
            raise CnnCodesError(
                f"Layer {text} of {self.attrs.get('backbone')} is {name}, which code store "
                f"{self.path.name!r} does not hold; it holds {', '.join(layers)}. Extract it "
                f"with 'cnncodes extract SOURCE --layer {text}'."
            )
        raise CnnCodesError(
            f"Layer {text!r} is not in code store {self.path.name!r}; it holds "
            f"{', '.join(layers)} (extracted as {', '.join(specs)})."
        )

    def summary(self) -> dict[str, Any]:
        """What ``cnncodes info`` shows: provenance, layers, class and split counts, skips."""
        attrs, classes = self.attrs, self.classes
        row_views = self.views
        images = row_views == 0  # classes and splits count images, not their views
        labels = collections.Counter(self.labels[images].tolist())
        split = self.split
        split = split[images] if split is not None else None
        summary: dict[str, Any] = {key: attrs.get(key, "") for key in (
            "backbone", "weights", "weights_sha256", "pooling", "preprocessing", "source",
            "source_kind", "source_fingerprint", "precision", "cnncodes_version", "created",
            "execution",
        )}
        summary["layers"] = [
            {"name": name, "spec": self.spec_of(name), "rows": len(self), "dim": self.dim(name)}
            for name in self.layers
        ]
        summary["classes"] = {
            (classes[i] if 0 <= i < len(classes) else "unlabeled"): n
            for i, n in sorted(labels.items())
        }
        summary["split"] = dict(collections.Counter(split.tolist())) if split is not None else None
        views = self.view_settings
        if views is not None:
            counts = np.bincount(np.minimum(row_views, 1), minlength=2)
            views = {**views, "images": int(counts[0]), "augmented_rows": int(counts[1])}
        summary["views"] = views
        summary["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return summary

    def spec_of(self, layer: str | int | None = None) -> str:
        """The ``--layer`` spec a stored layer was extracted as (``-2``), or its node name
        when the store does not say. The other half of :meth:`resolve`."""
        name = self.resolve(layer)
        specs = [str(s) for s in self.attrs.get("layer_specs", [])]
        layers = self.layers
        return specs[layers.index(name)] if len(specs) == len(layers) else name

    def dim(self, layer: str | int | None = None) -> int:
        return int(self._file[f"codes/{self.resolve(layer)}"].shape[1])

    def codes(self, layer: str | int | None = None) -> np.ndarray:
        """All codes of one layer as float32 [N, D]; NaN or inf anywhere is refused."""
        name = self.resolve(layer)
        codes = self._read(f"codes/{name}")
        for start in range(0, len(codes), 65536):  # bounded temporary memory
            self._check_finite(name, codes[start: start + 65536], start)
        return codes

    def code_rows(self, layer: str | int | None, start: int, stop: int) -> np.ndarray:
        """Codes of rows ``start:stop`` of one layer as float32, read from disk alone (what
        a streamed fit reads, one chunk at a time); NaN or inf is refused as by :meth:`codes`."""
        name = self.resolve(layer)
        codes = self._read(f"codes/{name}", slice(start, stop))
        self._check_finite(name, codes, start)
        return codes

    def _check_finite(self, name: str, codes: np.ndarray, start: int) -> None:
        finite = np.isfinite(codes).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            half = str(self.attrs.get("precision", "")) in ("float16", "bfloat16")
            hint = " with --no-amp" if half else ""
            raise CnnCodesError(
                f"Code store {str(self.path)!r} holds a non-finite code (NaN or inf) "
                f"in layer {name!r} at row {row} ({self._path_of(row)!r}); re-extract "
                f"it{hint} (delete {str(self.path)!r} and run cnncodes extract again)."
            )

    def load(
        self, layer: str | int | None = None, split: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Codes and labels, optionally of one split only."""
        X, y = self.codes(layer), self.labels
        if split is None:
            return X, y
        splits = self.split
        if splits is None:
            raise CnnCodesError(
                f"Code store {self.path.name!r} has no split; the source had no "
                "train/val/test folders or split column."
            )
        mask = splits == split
        return X[mask], y[mask]
