"""Score new images or a code store with a saved run: a table of predictions per image."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from ..data.store import CodeStore, display_text
from ..errors import CnnCodesError
from ..paths import FINETUNE_FILE
from .model import FittedModel, load_model

__all__ = ["predict"]


def _is_code_store(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".h5", ".hdf5") and h5py.is_hdf5(path)


def predict(
    model_run: str | os.PathLike[str],
    source_or_store: str | os.PathLike[str],
    out_csv: str | os.PathLike[str] | None = None,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool = True,
    trusted: Sequence[str] = (),
    keep_codes: str | os.PathLike[str] | None = None,
    tta: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Predict the class of every image of a source or every row of a code store.

    Given images, the codes are extracted with exactly the backbone, weights, layer and
    pooling recorded in the run, into a temporary store that is removed afterwards unless
    ``keep_codes`` names where to keep it (a store already there with the same settings is
    reused: the images are not run again). A fine-tuned run (one holding
    ``finetune.json``) is handed to :func:`cnncodes.finetune.predict_run`.

    Args:
        model_run: a run folder written by ``fit_pipeline`` (or by fine-tuning).
        source_or_store: an image folder, CSV manifest or idx folder, or a code store.
        out_csv: also write the table here.
        batch_size: images per forward pass when extracting (default: per device).
        device: ``auto``, ``cpu``, ``cuda``, ... for extraction.
        progress: show the extraction progress bar.
        trusted: further type names the run's ``model.skops`` may hold, for a run made
            with your own pipeline file (see :func:`cnncodes.load_model`).
        keep_codes: keep the extracted codes in this store (``.h5``).
        tta: test-time augmentation: average the probabilities (or decision scores) of
            each image, its left-right flip and ``tta - 1`` further seeded views (random
            resized crop + flip, see :mod:`cnncodes.extraction.views`); 0: the image alone.
            Needs images, not a store, and a ``fit`` run.
        seed: the seed of the TTA views.

    Returns:
        One row per image: ``path`` (as valid UTF-8: file-name bytes that are not UTF-8
        are escaped as ``\\xNN``), ``label`` (true class, "" when unknown), ``split``
        (when the source has one), ``predicted``, then ``proba_<class>`` per class, or
        ``score_<class>`` decision scores for pipelines without probabilities. Skipped
        images are listed in ``frame.attrs["skipped"]``.

    Raises:
        CnnCodesError: not a run, a source that cannot be read, or a store with other codes.
    """
    run = Path(model_run)
    target = Path(source_or_store)
    _check_tta(tta, run, target)
    if (run / FINETUNE_FILE).is_file():
        from ..finetuning.finetune import (
            predict_run,  # fine-tuned PyTorch runs need torch training code
        )

        frame = _displayable(predict_run(run, source_or_store))
    else:
        model = load_model(run, trusted=trusted)
        if _is_code_store(target):
            with CodeStore(target) as store:
                frame = _predict_store(model, store)
        else:
            with tempfile.TemporaryDirectory(prefix="cnncodes-predict-") as scratch:
                out = Path(keep_codes) if keep_codes else Path(scratch) / "codes.h5"
                _extract_like(model, target, out, batch_size, device, progress, tta, seed)
                with CodeStore(out) as store:
                    frame = _predict_store(model, store, average_views=tta > 0)
    if out_csv is not None:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_csv, index=False)
    return frame


def _check_tta(tta: int, run: Path, target: Path) -> None:
    if tta < 0:
        raise CnnCodesError(f"tta must be 0 (off) or a number of views; got {tta!r}.")
    if tta and (run / FINETUNE_FILE).is_file():
        raise CnnCodesError(
            f"--tta averages views through a fit run's probe; {str(run)!r} is a fine-tuned "
            "run: leave out --tta."
        )
    if tta and _is_code_store(target):
        raise CnnCodesError(
            f"--tta extracts views of the images, but {str(target)!r} is a code store; give "
            "the images (the folder, CSV or idx folder) instead, or leave out --tta."
        )


def _displayable(frame: pd.DataFrame) -> pd.DataFrame:
    """File and class names as valid UTF-8, so that ``to_csv`` never fails on them."""
    def clean(value: Any) -> Any:
        return display_text(value) if isinstance(value, str) else value

    out = frame.rename(columns=clean)
    for column in out.columns:
        if not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].map(clean)
    out.attrs["skipped"] = [tuple(map(clean, entry)) for entry in frame.attrs.get("skipped", [])]
    return out


def _extract_like(model: FittedModel, source: Path, out: Path, batch_size: int | None, device: str,
                  progress: bool, tta: int = 0, seed: int = 0) -> Path:
    from ..extraction.extract import extract

    meta = model.metadata
    weights = str(meta["weights"])
    result = extract(
        source=str(source), model=meta["backbone"], weights=weights.removeprefix("file:"),
        layers=(model.layer,), pool=meta["pooling"], batch_size=batch_size, device=device,
        progress=progress, out=str(out), views=tta, seed=seed, view_policy="tta",
    )
    return result.path


def _predict_store(model: FittedModel, store: CodeStore, *,
                   average_views: bool = False) -> pd.DataFrame:
    """One row per image of ``store``: its augmented views are averaged in (TTA) when
    ``average_views``, else left out."""
    X = model.codes(store)
    pipeline = model.pipeline
    model_classes = model.classes
    known = [model_classes[int(i)] for i in pipeline.classes_]
    images = np.flatnonzero(store.views == 0)
    scored = X if average_views else X[images]  # view rows only count when averaged in
    if hasattr(pipeline, "predict_proba"):
        scores, prefix = (pipeline.predict_proba(scored) if len(scored) else np.zeros((0, len(known)))), "proba"
    else:
        scores, prefix = (pipeline.decision_function(scored) if len(scored) else np.zeros((0, len(known)))), "score"
    if average_views:
        scores, chosen = _view_means(scores, store.groups, images)
    else:
        chosen = np.searchsorted(pipeline.classes_, pipeline.predict(scored)) if len(scored) else []
    store_classes = store.classes
    frame: dict[str, Any] = {
        "path": np.asarray(store.paths, dtype=object)[images].tolist(),
        "label": [store_classes[i] if 0 <= i < len(store_classes) else ""
                  for i in store.labels[images]],
    }
    split = store.split
    if split is not None:
        frame["split"] = split[images].tolist()
    frame["predicted"] = [known[i] for i in chosen]
    if scores.ndim == 1:  # binary decision function: the score of the second class
        frame[f"{prefix}_{known[1]}"] = scores
    else:
        for index, name in enumerate(known):
            frame[f"{prefix}_{name}"] = scores[:, index]
    out = pd.DataFrame(frame)
    out.attrs["skipped"] = store.skipped
    return out


def _view_means(scores: np.ndarray, groups: np.ndarray, images: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """The mean scores of each image's rows (``images``: the rows of the images
    themselves) and the class each mean chooses (index into the probe's classes)."""
    _, group_of_row = np.unique(groups, return_inverse=True)
    totals = np.zeros((len(images), *scores.shape[1:]))
    np.add.at(totals, group_of_row, scores)
    means = totals / np.bincount(group_of_row, minlength=len(images)).reshape(
        -1, *([1] * (scores.ndim - 1)))
    # unique() numbers groups in increasing order; rows of one image are consecutive
    # and each image's own row comes first, so group k is the image of images[k].
    chosen = (means > 0).astype(np.int64) if means.ndim == 1 else means.argmax(axis=1)
    return means, chosen
