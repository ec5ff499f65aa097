"""report: run tables, per-class tables, confusion matrices, every format."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from cnncodes import (
    CnnCodesError,
    confusion_table,
    fit_pipeline,
    format_table,
    per_class_table,
    run_table,
)
from cnncodes.cli import main
from cnncodes.studies.report import RUN_COLUMNS


@pytest.fixture(scope="module")
def runs(hymenoptera_store: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("report")
    return [
        fit_pipeline(hymenoptera_store, clf=clf, layer=layer, out=root / f"{clf}{layer}",
                     progress=False).run_dir
        for clf, layer in (("linear_svm", "-2"), ("knn", "-5"))
    ]


def test_run_table_has_one_row_per_run(runs: list[Path]) -> None:
    table = run_table(runs)
    assert list(table.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert table["pipeline"].tolist() == ["linear_svm", "knn"]
    assert table["layer"].tolist() == ["global_pool.flatten", "conv_head"]
    assert table["val_accuracy"].between(0.5, 1).all()
    assert table["test_accuracy"].isna().all()


def test_per_class_and_confusion_agree(runs: list[Path]) -> None:
    per_class = per_class_table(runs[0])
    confusion = confusion_table(runs[0]).set_index("true \\ predicted")
    assert per_class["class"].tolist() == ["ants", "bees"] == confusion.index.tolist()
    assert per_class["support"].tolist() == confusion.sum(axis=1).tolist() == [70, 83]
    recall = [confusion.loc[c, c] / confusion.loc[c].sum() for c in ("ants", "bees")]
    assert per_class["recall"].tolist() == pytest.approx(recall)
    accuracy = sum(confusion.loc[c, c] for c in ("ants", "bees")) / 153
    assert accuracy == pytest.approx(run_table(runs[:1])["val_accuracy"][0], abs=1e-6)


@pytest.mark.parametrize("fmt", ["md", "csv", "latex", "html"])
def test_formats(runs: list[Path], fmt: str) -> None:
    text = format_table(run_table(runs), fmt)
    assert "linear\\_svm" in text if fmt == "latex" else "linear_svm" in text
    if fmt == "csv":
        assert pd.read_csv(io.StringIO(text)).shape == (2, len(RUN_COLUMNS))
    if fmt == "md":
        assert text.splitlines()[0].startswith("| run")
    if fmt == "html":
        assert text.startswith("<table")
    if fmt == "latex":
        assert "\\begin{tabular}" in text


def test_report_cli(runs: list[Path], tmp_path: Path, runner) -> None:
    out = tmp_path / "r.md"
    result = runner.invoke(main, ["report", *map(str, runs), "--per-class", "--confusion",
                                  "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "confusion matrix: linear_svm-2" in result.output and "| bees" in result.output
    assert out.read_text().strip() == result.output.strip()


def test_report_bad_inputs(runs: list[Path], tmp_path: Path, runner) -> None:
    with pytest.raises(CnnCodesError, match=r"Unknown table format 'xlsx'; choose one of md"):
        format_table(run_table(runs), "xlsx")
    with pytest.raises(CnnCodesError, match=r"is not a run folder \(no metadata.json"):
        run_table([tmp_path])
    with pytest.raises(CnnCodesError, match=r"no held-out predictions for split 'test'"):
        per_class_table(runs[0], split="test")
    result = runner.invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output.startswith("Error: ")


def test_counts_stay_integers_and_json_is_plain() -> None:
    import io
    import json

    import numpy as np
    import pandas as pd

    from cnncodes.studies.report import format_table

    frame = pd.DataFrame({"run": ["a/b", "c"], "code_dim": [1280.0, None],
                          "test_accuracy": [1.0, 0.5]})
    csv_text = format_table(frame, "csv")
    assert "1280," in csv_text and "1280.0" not in csv_text
    assert pd.read_csv(io.StringIO(csv_text))["test_accuracy"].tolist() == [1.0, 0.5]
    records = json.loads(format_table(frame, "json"))
    assert records == [{"run": "a/b", "code_dim": 1280, "test_accuracy": 1.0},
                       {"run": "c", "code_dim": None, "test_accuracy": 0.5}]
    assert "a/b" in format_table(frame, "json")  # no "a\/b" escaping
    scores = pd.DataFrame({"proba": np.array([0.0177250001], dtype=np.float32)})
    assert json.loads(format_table(scores, "json", digits=6)) == [{"proba": 0.017725}]
