"""predict: on real images (identical extraction), on a store, refusing other codes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cnncodes import CnnCodesError, CodeStore, extract, fit_pipeline, predict
from cnncodes.cli import main
from tests.conftest import write_image_folder


@pytest.fixture(scope="module")
def run_dir(hymenoptera_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict") / "logreg"
    return fit_pipeline(hymenoptera_store, clf="logreg", layer="-2", out=out, progress=False).run_dir


def test_predict_on_a_store_matches_the_fit_metrics(run_dir: Path, hymenoptera_store: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    frame = predict(run_dir, hymenoptera_store, out)
    assert list(frame.columns) == ["path", "label", "split", "predicted", "proba_ants", "proba_bees"]
    assert len(frame) == 397 and frame.attrs["skipped"]  # the GIF placeholder is listed
    np.testing.assert_allclose(frame[["proba_ants", "proba_bees"]].sum(axis=1), 1.0, rtol=1e-6)
    val = frame[frame["split"] == "val"]
    metrics = pd.read_json(run_dir / "metadata.json", typ="series")["metrics"]
    assert np.mean(val["predicted"] == val["label"]) == pytest.approx(metrics["val_accuracy"])
    assert pd.read_csv(out).shape == frame.shape


def test_predict_on_images_runs_the_same_extraction(run_dir: Path, hymenoptera: Path,
                                                    hymenoptera_store: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    chosen = ["val/ants/10308379_1b6c72e180.jpg", "val/bees/1032546534_06907fe3b3.jpg",
              "val/ants/1053149811_f62a3410d3.jpg", "val/bees/10870992_eebeeb3a12.jpg"]
    chosen = [p for p in chosen if (hymenoptera / p).is_file()] or [
        p.relative_to(hymenoptera).as_posix() for p in sorted((hymenoptera / "val").rglob("*.jpg"))[:4]]
    manifest = tmp_path / "new.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for path in chosen:
            writer.writerow([str(hymenoptera / path), path.split("/")[1]])
    frame = predict(run_dir, manifest, progress=False)
    assert len(frame) == len(chosen)
    assert not (tmp_path / "cache").exists()  # no store left behind per call
    kept = tmp_path / "kept.h5"
    again = predict(run_dir, manifest, progress=False, keep_codes=kept)
    assert kept.is_file() and again["predicted"].tolist() == frame["predicted"].tolist()
    # Same codes as in the training store, so the same probabilities.
    from_store = predict(run_dir, hymenoptera_store).set_index("path")
    for row in frame.itertuples():
        relative = Path(row.path).relative_to(hymenoptera).as_posix()
        assert row.predicted == from_store.loc[relative, "predicted"]
        assert row.proba_bees == pytest.approx(from_store.loc[relative, "proba_bees"], abs=1e-4)


def test_predict_refuses_a_store_of_other_codes(run_dir: Path, tmp_path: Path, runner) -> None:
    folder = write_image_folder(tmp_path / "tiny", per_class=2)
    other = extract(source=str(folder), weights="none", out=str(tmp_path / "o.h5"), progress=False)
    with pytest.raises(CnnCodesError, match=r"has weights 'none'; extract codes with the model's"):
        predict(run_dir, other.path)
    result = runner.invoke(main, ["predict", str(run_dir), str(other.path)])
    assert result.exit_code == 2 and result.output.startswith("Error: ")
    assert result.output.strip().count("\n") == 0


def test_predict_cli_writes_csv_and_rejects_non_runs(run_dir, hymenoptera_store, tmp_path, runner):
    out = tmp_path / "p.csv"
    result = runner.invoke(main, ["predict", str(run_dir), str(hymenoptera_store), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{out}: 397 predictions" in result.output
    assert pd.read_csv(out)["predicted"].isin(["ants", "bees"]).all()
    with pytest.raises(CnnCodesError, match=r"is not a fitted run \(expected model.skops"):
        predict(tmp_path, hymenoptera_store)


def test_decision_scores_for_pipelines_without_probabilities(hymenoptera_store, tmp_path) -> None:
    run = fit_pipeline(hymenoptera_store, clf="linear_svm", out=tmp_path / "svm", progress=False)
    frame = predict(run.run_dir, hymenoptera_store)
    assert "score_bees" in frame.columns and "proba_bees" not in frame.columns
    with CodeStore(hymenoptera_store) as store:
        assert (frame["predicted"] == "bees").tolist() == (frame["score_bees"] > 0).tolist()
        assert len(store) == len(frame)


def test_predict_hands_finetune_runs_to_finetune(tmp_path, monkeypatch) -> None:
    import sys
    import types

    (tmp_path / "finetune.json").write_text("{}")
    fake = types.ModuleType("cnncodes.finetuning.finetune")
    fake.predict_run = lambda run, source: pd.DataFrame({"path": [str(source)], "predicted": ["x"]})
    monkeypatch.setitem(sys.modules, "cnncodes.finetuning.finetune", fake)
    frame = predict(tmp_path, "anything", tmp_path / "out.csv")
    assert frame["predicted"].tolist() == ["x"] and (tmp_path / "out.csv").is_file()
