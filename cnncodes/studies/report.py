"""Comparison tables of fitted runs: one row per run, per-class scores, confusion matrices.

A run folder is read through its ``metadata.json`` (``cnncodes fit``) or ``finetune.json``
(fine-tuning): either holds a ``row`` dict with the :data:`RUN_COLUMNS` it knows. Per-class
tables and confusion matrices come from the run's ``predictions.csv`` (columns ``path``,
``split``, ``label``, ``predicted``: held-out predictions only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ..errors import CnnCodesError
from ..paths import FINETUNE_FILE
from ..probe.model import METADATA_FILE, PREDICTIONS_FILE

__all__ = ["RUN_COLUMNS", "FORMATS", "run_table", "per_class_table", "confusion_table",
           "format_table", "report", "read_run"]

RUN_COLUMNS = (
    "run", "backbone", "weights", "layer", "pipeline", "params", "selected_on", "n_train",
    "code_dim", "train_accuracy", "val_accuracy", "test_accuracy", "cv_accuracy",
    "mean_per_class_accuracy", "macro_f1", "fit_seconds",
)
FORMATS = ("md", "csv", "json", "latex", "html")
RUN_FILES = (METADATA_FILE, FINETUNE_FILE)


def read_run(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a run folder (``metadata.json`` or ``finetune.json``).

    Raises:
        CnnCodesError: the folder holds neither file.
    """
    folder = Path(run)
    for name in RUN_FILES:
        if (folder / name).is_file():
            metadata = json.loads((folder / name).read_text())
            metadata.setdefault("row", {})
            return metadata
    raise CnnCodesError(
        f"{str(run)!r} is not a run folder (no {' or '.join(RUN_FILES)}); give folders "
        "written by 'cnncodes fit' or 'cnncodes finetune'."
    )


def run_table(runs: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """One row per run, the columns of :data:`RUN_COLUMNS` (missing values left empty)."""
    rows = []
    for run in runs:
        row = dict(read_run(run)["row"])
        row["run"] = row.get("run") or Path(run).name
        rows.append(row)
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in RUN_COLUMNS]
    return frame.reindex(columns=[*RUN_COLUMNS, *extra])


def _predictions(run: str | os.PathLike[str], split: str | None) -> tuple[pd.DataFrame, str]:
    path = Path(run) / PREDICTIONS_FILE
    if not path.is_file():
        raise CnnCodesError(
            f"Run {str(run)!r} has no {PREDICTIONS_FILE}; per-class tables need the "
            "held-out predictions that 'cnncodes fit' writes."
        )
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    available = list(dict.fromkeys(frame["split"]))
    if split is None:
        preferred = read_run(run).get("metrics", {}).get("eval_split")
        split = preferred if preferred in available else next(
            (s for s in ("test", "val", "cv") if s in available), None)
    if split not in available:
        raise CnnCodesError(
            f"Run {str(run)!r} has no held-out predictions for split {split!r}; it has "
            f"{', '.join(available) or 'none'}."
        )
    return frame[frame["split"] == split], str(split)


def _classes(run: str | os.PathLike[str], frame: pd.DataFrame) -> list[str]:
    known = read_run(run).get("classes") or []
    seen = set(frame["label"]) | set(frame["predicted"])
    return [c for c in known if c in seen] + sorted(seen - set(known))


def per_class_table(run: str | os.PathLike[str], split: str | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support per class on one held-out split (default: the
    run's evaluation split: test, else val, else the CV folds)."""
    frame, split = _predictions(run, split)
    classes = _classes(run, frame)
    precision, recall, f1, support = precision_recall_fscore_support(
        frame["label"], frame["predicted"], labels=classes, zero_division=0
    )
    return pd.DataFrame({
        "run": Path(run).name, "split": split, "class": classes, "precision": precision,
        "recall": recall, "f1": f1, "support": support,
    })


def confusion_table(run: str | os.PathLike[str], split: str | None = None) -> pd.DataFrame:
    """Confusion matrix on one held-out split: rows true class, columns predicted class."""
    frame, _ = _predictions(run, split)
    classes = _classes(run, frame)
    matrix = confusion_matrix(frame["label"], frame["predicted"], labels=classes)
    table = pd.DataFrame(matrix, index=classes, columns=classes)
    table.index.name = "true \\ predicted"
    return table.reset_index()


def format_table(frame: pd.DataFrame, fmt: str = "md", *, digits: int = 4) -> str:
    """Render a table as Markdown, CSV, JSON (a list of records), LaTeX or HTML (floats
    rounded to ``digits``; missing values empty, or null in JSON).

    Raises:
        CnnCodesError: an unknown format.
    """
    if fmt not in FORMATS:
        raise CnnCodesError(f"Unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    # float32 scores (model probabilities) rounded in float64, so JSON prints 0.017725,
    # not float32's nearest neighbour 0.01772500015795231.
    frame = frame.astype({c: "float64" for c in frame.select_dtypes("float32").columns})
    frame = _whole_numbers(frame.round(digits))
    if fmt in ("md", "latex", "html"):  # a missing value shows empty, not <NA> or nan
        frame = _blank_missing(frame, floats=fmt == "md")
    if fmt == "md":
        return frame.to_markdown(index=False, floatfmt=f".{digits}f", missingval="")
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return json.dumps(_records(frame), ensure_ascii=False, default=str)
    if fmt == "latex":
        return frame.to_latex(index=False, float_format=f"%.{digits}f", na_rep="", escape=True)
    return frame.to_html(index=False, float_format=f"%.{digits}f".__mod__, na_rep="")


def _whole_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Float columns that hold only whole numbers (counts with a gap, which pandas made
    float) as nullable integers, so that CSV says 1280, not 1280.0."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if pd.api.types.is_float_dtype(values) and values.notna().any():
            present = values.dropna()
            # Above 1 only: a score column of 0.0 and 1.0 stays a score.
            if (present == present.round()).all() and 1 < present.abs().max() < 2**53:
                out[column] = values.astype("Int64")
    return out


def _blank_missing(frame: pd.DataFrame, *, floats: bool) -> pd.DataFrame:
    """Gaps of nullable integer (and with ``floats`` of float) columns as empty cells:
    renderers print pandas' missing integer as ``<NA>``, and Markdown a float NaN as
    ``nan``, whatever their missing-value option (Markdown's only knows None)."""
    out = frame.copy()
    for column in out.columns:
        values = out[column]
        if isinstance(values.dtype, pd.Int64Dtype) and values.isna().any():
            out[column] = [("" if pd.isna(v) else str(v)) for v in values]
        elif floats and pd.api.types.is_float_dtype(values) and values.isna().any():
            out[column] = values.astype(object).where(values.notna(), None)  # not "nan"
    return out


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain Python values, missing values as None (JSON null)."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def report(
    runs: Sequence[str | os.PathLike[str]],
    *,
    fmt: str = "md",
    per_class: bool = False,
    confusion: bool = False,
    split: str | None = None,
) -> str:
    """The comparison table of ``runs``, optionally followed by per-class tables and
    confusion matrices, rendered in ``fmt``."""
    if not runs:
        raise CnnCodesError("No runs given; pass one or more run folders written by 'cnncodes fit'.")
    if fmt in ("csv", "json") and (per_class or confusion):
        return _machine_report(runs, fmt, per_class=per_class, confusion=confusion, split=split)
    parts = [format_table(run_table(runs), fmt)]
    if per_class:
        parts.append(format_table(pd.concat([per_class_table(r, split) for r in runs]), fmt))
    if confusion:
        for run in runs:
            title = f"confusion matrix: {Path(run).name}"
            parts.append((f"**{title}**\n\n" if fmt == "md" else f"{title}\n")
                         + format_table(confusion_table(run, split), fmt))
    return "\n\n".join(parts)


def _machine_report(runs: Sequence[str | os.PathLike[str]], fmt: str, *, per_class: bool,
                    confusion: bool, split: str | None) -> str:
    """Several tables in one parseable document: JSON keyed by table, or one long CSV.

    The CSV form stacks the tables with a ``table`` column (``runs``, ``per_class``,
    ``confusion``) so that ``pandas.read_csv`` reads it whole.
    """
    tables = {"runs": run_table(runs)}
    if per_class:
        tables["per_class"] = pd.concat([per_class_table(r, split) for r in runs])
    if confusion:
        tables["confusion"] = pd.concat([
            confusion_table(r, split).assign(run=Path(r).name) for r in runs
        ])
    if fmt == "json":
        return json.dumps({name: _records(_whole_numbers(table)) for name, table in tables.items()},
                          ensure_ascii=False, default=str)
    stacked = _whole_numbers(
        pd.concat([t.assign(table=name) for name, t in tables.items()], ignore_index=True))
    return stacked[["table", *[c for c in stacked.columns if c != "table"]]].to_csv(index=False)
