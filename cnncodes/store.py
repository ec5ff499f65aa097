"""The HDF5 code store: one file per source x backbone x layers x pooling x preprocessing.

Layout (readable with plain h5py)::

    /codes/<node name>   float32 [N, D], chunked by rows
    /labels              int64 [N] (-1 = unlabeled)
    /classes             utf-8 [C]
    /paths               utf-8 [N], relative to the source root
    /split               utf-8 [N] (only when the source has train/val/test)
    /skipped/path, /skipped/reason   utf-8 [K]: every image that was not encoded, and why
    attributes           cnncodes_version, backbone, weights, weights_sha256, layer_specs,
                         layers, pooling, preprocessing, source, source_kind,
                         source_fingerprint, store_key, n_images, n_skipped, complete

Writing is crash-safe: extraction writes numbered part files (each renamed into place
only once complete), and :func:`assemble_store` joins them into ``NAME.h5.tmp`` that is
renamed over ``NAME.h5`` at the very end. A killed run leaves finished parts behind and
resumes from them; a finished store is never left half-overwritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import CnnCodesError

__all__ = ["CodeStore", "PartWriter", "assemble_store", "STRING"]

STRING = h5py.string_dtype(encoding="utf-8")
ROWS_PER_CHUNK = 256


def _strings(values: Iterable[str]) -> np.ndarray:
    return np.array(list(values), dtype=object)


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
            existing = json.loads(manifest_path.read_text())
            if existing != json.loads(json.dumps(manifest)):
                raise CnnCodesError(
                    f"Folder {str(self.folder)!r} holds parts of a different extraction; "
                    "delete it or choose another --out."
                )
        else:
            temporary = manifest_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(manifest, indent=1))
            os.replace(temporary, manifest_path)

    def parts(self) -> list[tuple[int, int, Path]]:
        """Finished parts as (first position, end position, file), in order."""
        found = []
        for path in self.folder.glob("part-*.h5"):
            _, start, end = path.stem.split("-")
            found.append((int(start), int(end), path))
        return sorted(found)

    def done_until(self) -> int:
        """Positions below this are covered by contiguous finished parts."""
        end = 0
        for start, stop, _ in self.parts():
            if start != end:
                break
            end = stop
        return end

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
            handle["positions"] = np.asarray(positions, dtype=np.int64)
            for name, array in codes.items():
                handle.create_dataset(f"codes/{name}", data=array.astype(np.float32))
            handle["skipped_positions"] = np.asarray([p for p, _ in skipped], dtype=np.int64)
            handle.create_dataset("skipped_reasons", data=_strings(r for _, r in skipped), dtype=STRING)
        os.replace(temporary, final)
        return final


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
) -> Path:
    """Join the finished parts into one HDF5 store, streaming part by part."""
    parts = writer.parts()
    total = 0
    for _, _, path in parts:
        with h5py.File(path, "r") as handle:
            total += len(handle["positions"])
    temporary = out.with_name(out.name + ".tmp")
    skipped: list[tuple[int, str]] = []
    with h5py.File(temporary, "w") as store:
        datasets = {
            name: store.create_dataset(
                f"codes/{name}", shape=(total, dims[name]), dtype=np.float32,
                chunks=(max(1, min(ROWS_PER_CHUNK, total)), dims[name]) if total else None,
            )
            for name in layers
        }
        positions = np.empty(total, dtype=np.int64)
        row = 0
        for _, _, path in parts:
            with h5py.File(path, "r") as part:
                count = len(part["positions"])
                positions[row: row + count] = part["positions"][:]
                for name in layers:
                    datasets[name][row: row + count] = part[f"codes/{name}"][:]
                skipped += zip(
                    part["skipped_positions"][:].tolist(),
                    _decode(part["skipped_reasons"][:]),
                )
                row += count
        order: list[int] = positions.tolist()
        store["labels"] = np.array([items[p].label for p in order], dtype=np.int64)
        store.create_dataset("classes", data=_strings(classes), dtype=STRING)
        store.create_dataset("paths", data=_strings(items[p].path for p in order), dtype=STRING)
        if has_split:
            store.create_dataset("split", data=_strings(items[p].split for p in order), dtype=STRING)
        store.create_dataset("skipped/path", data=_strings(items[p].path for p, _ in skipped), dtype=STRING)
        store.create_dataset("skipped/reason", data=_strings(r for _, r in skipped), dtype=STRING)
        for key, value in attrs.items():
            if isinstance(value, (list, dict)):
                value = json.dumps(value)
            elif isinstance(value, str):
                value = str(value)  # h5py cannot store str subclasses such as TorchVersion
            store.attrs[key] = value
        store.attrs["n_images"] = total
        store.attrs["n_skipped"] = len(skipped)
        store.attrs["complete"] = True
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, out)
    shutil.rmtree(writer.folder, ignore_errors=True)
    return out


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class CodeStore:
    """Read a finished code store: codes per layer, labels, paths, split, skipped images.

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
                f"{str(path)!r} is not a readable HDF5 code store ({error}); extract it again."
            ) from None
        if "codes" not in self._file or "cnncodes_version" not in self._file.attrs:
            self._file.close()
            raise CnnCodesError(
                f"{str(path)!r} is an HDF5 file but not a cnncodes code store (no /codes); "
                "create one with 'cnncodes extract'."
            )
        if not bool(self._file.attrs.get("complete", False)):
            self._file.close()
            raise CnnCodesError(
                f"Code store {str(path)!r} is incomplete; run the same 'cnncodes extract' "
                "again to finish it."
            )

    def __enter__(self) -> CodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

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
        return list(self.attrs.get("layers") or list(self._file["codes"]))

    @property
    def classes(self) -> list[str]:
        return _decode(self._file["classes"][:])

    @property
    def labels(self) -> np.ndarray:
        return self._file["labels"][:]

    @property
    def paths(self) -> list[str]:
        return _decode(self._file["paths"][:])

    @property
    def split(self) -> np.ndarray | None:
        if "split" not in self._file:
            return None
        return np.array(_decode(self._file["split"][:]), dtype=object)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(zip(_decode(self._file["skipped/path"][:]), _decode(self._file["skipped/reason"][:])))

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
        raise CnnCodesError(
            f"Layer {text!r} is not in code store {self.path.name!r}; it holds "
            f"{', '.join(layers)} (extracted as {', '.join(specs)})."
        )

    def dim(self, layer: str | int | None = None) -> int:
        return int(self._file[f"codes/{self.resolve(layer)}"].shape[1])

    def codes(self, layer: str | int | None = None) -> np.ndarray:
        """All codes of one layer as float32 [N, D]."""
        return self._file[f"codes/{self.resolve(layer)}"][:]

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
