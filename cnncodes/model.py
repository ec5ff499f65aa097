"""A fitted pipeline on disk: ``model.skops`` + ``metadata.json`` in one run folder.

The pipeline is saved with skops, whose loader rebuilds only types it trusts instead of
running pickle's arbitrary code. The metadata records where the codes came from (backbone,
weights, layer, pooling, preprocessing, code dimension, store fingerprint); codes from
anywhere else are refused, never silently scored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline

from .errors import CnnCodesError
from .store import CodeStore

__all__ = ["FittedModel", "load_model", "save_model", "MODEL_FILE", "METADATA_FILE",
           "PREDICTIONS_FILE"]

MODEL_FILE = "model.skops"
METADATA_FILE = "metadata.json"
PREDICTIONS_FILE = "predictions.csv"

# The code-store attributes that must match between training and scoring codes.
PROVENANCE = ("backbone", "weights", "pooling", "preprocessing")


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def save_model(run_dir: Path, pipeline: Pipeline, metadata: dict[str, Any]) -> Path:
    """Write the fitted pipeline and its metadata into ``run_dir``; return the model path."""
    import skops.io

    run_dir.mkdir(parents=True, exist_ok=True)
    model_path = run_dir / MODEL_FILE
    _write_atomic(model_path, skops.io.dumps(pipeline))
    _write_atomic(run_dir / METADATA_FILE, json.dumps(metadata, indent=2, default=str).encode())
    return model_path


@dataclass
class FittedModel:
    """A loaded run: the fitted pipeline and the metadata it was saved with."""

    run_dir: Path
    pipeline: Pipeline
    metadata: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def layer(self) -> str:
        return str(self.metadata["layer"])

    def check_store(self, store: CodeStore) -> str:
        """The store layer to score, after checking it holds the same kind of codes.

        Raises:
            CnnCodesError: another backbone, weights, pooling, preprocessing, layer or
                code dimension than the model was fitted on.
        """
        meta, attrs = self.metadata, store.attrs
        fix = (
            f"extract codes with the model's settings: cnncodes extract SOURCE --model "
            f"{meta['backbone']} --weights {_weights_argument(meta['weights'])} "
            f"--layer {meta['layer']} --pool {meta['pooling']} (or give images to "
            "'cnncodes predict' and it does so)"
        )
        for key in PROVENANCE:
            if str(attrs.get(key)) != str(meta.get(key)):
                raise CnnCodesError(
                    f"Model {str(self.run_dir)!r} was fitted on {key} {meta.get(key)!r} but "
                    f"store {store.path.name!r} has {key} {attrs.get(key)!r}; {fix}."
                )
        theirs, ours = attrs.get("weights_sha256") or "", meta.get("weights_sha256") or ""
        if theirs and ours and theirs != ours:
            raise CnnCodesError(
                f"Model {str(self.run_dir)!r} was fitted on codes from weights with sha256 "
                f"{ours[:12]}... but store {store.path.name!r} used {theirs[:12]}...; {fix}."
            )
        if self.layer not in store.layers:
            raise CnnCodesError(
                f"Model {str(self.run_dir)!r} was fitted on layer {self.layer!r} but store "
                f"{store.path.name!r} holds {', '.join(store.layers)}; {fix}."
            )
        dim = store.dim(self.layer)
        if dim != int(meta["code_dim"]):
            raise CnnCodesError(
                f"Model {str(self.run_dir)!r} expects {meta['code_dim']}-d codes of layer "
                f"{self.layer!r} but store {store.path.name!r} has {dim}-d codes; {fix}."
            )
        return self.layer

    def codes(self, store: CodeStore) -> np.ndarray:
        """The store's codes for this model, after :meth:`check_store`."""
        return store.codes(self.check_store(store))


def _weights_argument(weights: str) -> str:
    return weights.removeprefix("file:") if weights.startswith("file:") else weights


def load_model(run_dir: str | os.PathLike[str], *, trusted: Sequence[str] = ()) -> FittedModel:
    """Load a run folder written by :func:`cnncodes.fit_pipeline`.

    Args:
        run_dir: the run folder (or its ``model.skops`` file).
        trusted: extra type names to trust when loading, for a pipeline that uses your
            own classes. scikit-learn's own types are trusted; nothing else is.

    Raises:
        CnnCodesError: not a run folder, unreadable files, or untrusted types inside.
    """
    import skops.io

    path = Path(run_dir)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    model_path, metadata_path = path / MODEL_FILE, path / METADATA_FILE
    if not model_path.is_file() or not metadata_path.is_file():
        raise CnnCodesError(
            f"{str(run_dir)!r} is not a fitted run (expected {MODEL_FILE} and "
            f"{METADATA_FILE} inside); create one with 'cnncodes fit'."
        )
    try:
        metadata = json.loads(metadata_path.read_text())
        untrusted = skops.io.get_untrusted_types(file=model_path)
    except (OSError, ValueError) as error:
        raise CnnCodesError(f"Run {str(run_dir)!r} is unreadable ({error}); fit it again.") from None
    refused = [name for name in untrusted if not name.startswith("sklearn.") and name not in trusted]
    if refused:
        raise CnnCodesError(
            f"Run {str(run_dir)!r} holds types that are not scikit-learn's: "
            f"{', '.join(refused)}; if you wrote them and trust the file, load it with "
            "load_model(run, trusted=[...])."
        )
    pipeline = skops.io.load(model_path, trusted=list(untrusted))
    return FittedModel(path, pipeline, metadata)
