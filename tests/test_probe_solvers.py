"""The torch L-BFGS linear probes (torch_logreg, linear_svm): the same optimum as
scikit-learn's solvers, warm starts that change nothing but time, persistence through the
allow-list, the real command line end to end, and the search's thread budget."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from cnncodes import CnnCodesError, CodeStore, fit_pipeline, load_model
from cnncodes.probe import search as search_module
from cnncodes.probe.linear import LinearProbe
from cnncodes.probe.model import untrusted_types
from cnncodes.probe.search import limit_threads, search_pipeline, thread_budget
from tests.test_security import _edit_schema, _find

CLI = Path(sys.executable).with_name("cnncodes")


def _blobs(n: int = 240, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.5, size=(k, d))
    y = np.arange(n) % k
    X = centres[y] + rng.normal(size=(n, d))
    return StandardScaler().fit_transform(X), y


# --- the same optimum as scikit-learn ------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("C", [1e-2, 1.0])
def test_log_loss_finds_sklearns_logistic_regression(k: int, C: float) -> None:
    X, y = _blobs(k=k)
    ours = LinearProbe(loss="log", C=C, tol=1e-7, device="cpu").fit(X, y)
    theirs = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(X, y)
    assert ours.coef_.shape == theirs.coef_.shape and ours.coef_.dtype == np.float64
    scale = np.abs(theirs.coef_).max()
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=2e-3 * scale)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=2e-3 * max(scale, 1))
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), atol=2e-3)
    assert (ours.predict(X) == theirs.predict(X)).mean() > 0.99


@pytest.mark.parametrize("k", [2, 4])
def test_squared_hinge_finds_liblinears_linear_svc(k: int) -> None:
    X, y = _blobs(k=k)
    ours = LinearProbe(loss="squared_hinge", C=0.1, tol=1e-7, device="cpu",
                       penalize_intercept=True).fit(X, y)
    theirs = LinearSVC(C=0.1, tol=1e-10, max_iter=100000).fit(X, y)
    scale = np.abs(theirs.coef_).max()
    np.testing.assert_allclose(ours.coef_, theirs.coef_, atol=2e-3 * scale)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, atol=2e-3 * max(scale, 1))
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X), atol=5e-3)
    assert not hasattr(ours, "predict_proba")


@pytest.mark.parametrize("loss", ["log", "squared_hinge"])
def test_warm_started_path_equals_cold_fits(loss: str) -> None:
    """Along a half-decade C path (the search's grid), warm starts reach the cold fits'
    optimum in fewer iterations."""
    X, y = _blobs(n=300, d=64, k=5, seed=1)
    warm = LinearProbe(loss=loss, tol=1e-6, warm_start=True, device="cpu")
    warm_iterations, cold_iterations = 0, 0
    for C in np.logspace(-3, 1, 9):
        warm.set_params(C=C).fit(X, y)
        cold = LinearProbe(loss=loss, C=C, tol=1e-6, device="cpu").fit(X, y)
        scores = cold.decision_function(X)
        np.testing.assert_allclose(warm.decision_function(X), scores,
                                   atol=5e-3 * np.abs(scores).max())
        assert (warm.predict(X) == cold.predict(X)).mean() >= 0.99
        warm_iterations += warm.n_iter_
        cold_iterations += cold.n_iter_
    assert warm_iterations < 0.9 * cold_iterations  # the point of warm starts


def test_bad_parameters_and_labels_give_one_clear_error() -> None:
    X, y = _blobs()
    with pytest.raises(CnnCodesError, match="loss 'hinge' is unknown; use one of log, squared_hinge"):
        LinearProbe(loss="hinge").fit(X, y)
    with pytest.raises(CnnCodesError, match="C must be a positive number"):
        LinearProbe(C=0).fit(X, y)
    with pytest.raises(CnnCodesError, match="at least two classes"):
        LinearProbe(device="cpu").fit(X, np.zeros(len(X), dtype=int))
    with pytest.warns(ConvergenceWarning, match="did not converge in 2 iterations"):
        LinearProbe(max_iter=2, tol=1e-12, device="cpu").fit(X, y)


# --- real codes: accuracy against scikit-learn, persistence, the command line --------------


@pytest.fixture(scope="module")
def digits_codes(digits_store: Path) -> tuple[np.ndarray, ...]:
    with CodeStore(digits_store) as store:
        return (*store.load("-2", "train"), *store.load("-2", "test"))


def test_new_solvers_match_sklearn_on_digits_codes(digits_store: Path, tmp_path: Path) -> None:
    ours = fit_pipeline(digits_store, clf="torch_logreg", out=tmp_path / "t", progress=False)
    theirs = fit_pipeline(digits_store, clf="logreg", out=tmp_path / "s", progress=False)
    assert ours.metrics["n_test"] >= 100
    assert abs(ours.metrics["test_accuracy"] - theirs.metrics["test_accuracy"]) <= 0.02
    assert ours.metrics["test_accuracy"] >= 0.8


def test_linear_svm_matches_liblinear_on_digits_codes(digits_store: Path, digits_codes,
                                                      tmp_path: Path) -> None:
    X, y, X_test, y_test = digits_codes
    ours = fit_pipeline(digits_store, clf="linear_svm", out=tmp_path / "svm", progress=False)
    assert type(ours.pipeline.steps[-1][1]) is LinearProbe
    C = ours.best_params["classifier__C"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        liblinear = Pipeline([("s", StandardScaler()), ("c", LinearSVC(C=C, max_iter=20000))])
        reference = liblinear.fit(X, y).score(X_test, y_test)
    assert abs(ours.metrics["test_accuracy"] - reference) <= 0.02


def test_saved_probe_is_numpy_only_and_loads_without_trust(digits_store: Path,
                                                           tmp_path: Path) -> None:
    run = fit_pipeline(digits_store, clf="torch_logreg", out=tmp_path / "run",
                       progress=False).run_dir
    data = (run / "model.skops").read_bytes()
    assert untrusted_types(data) == []
    schema = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("schema.json"))
    text = json.dumps(schema)
    assert "torch" not in text and "LinearProbe" in text
    probe = load_model(run).pipeline.steps[-1][1]
    assert isinstance(probe, LinearProbe)
    assert all(type(getattr(probe, name)) is np.ndarray
               for name in ("coef_", "intercept_", "classes_"))


def test_hostile_variants_of_a_probe_are_refused(digits_store: Path, tmp_path: Path) -> None:
    run = fit_pipeline(digits_store, clf="linear_svm", out=tmp_path / "run", progress=False).run_dir
    data = (run / "model.skops").read_bytes()

    def renamed(schema: dict) -> None:  # the allowed class name in another module
        node = _find(schema, lambda n: n.get("__class__") == "LinearProbe")
        node["__module__"] = "cnncodes.probe.linear_evil"

    def as_call(schema: dict) -> None:  # the allowed type, built by a constructor call
        _find(schema, lambda n: n.get("__class__") == "LinearProbe")["__loader__"] = (
            "ConstructorFromReduceNode")

    assert untrusted_types(_edit_schema(data, renamed)) == [
        "cnncodes.probe.linear_evil.LinearProbe"]
    assert untrusted_types(_edit_schema(data, as_call)) == [
        "cnncodes.probe.linear.LinearProbe (as ConstructorFromReduceNode)"]
    (run / "model.skops").write_bytes(_edit_schema(data, renamed))
    with pytest.raises(CnnCodesError, match="does not load by default"):
        load_model(run)


def _cli(*args: str, cwd: Path) -> str:
    done = subprocess.run([str(CLI), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("clf", [
    pytest.param("torch_logreg", marks=pytest.mark.slow),
    pytest.param("linear_svm", marks=pytest.mark.slow)])
def test_fit_and_predict_through_the_real_command_line(clf: str, digits_store: Path,
                                                       tmp_path: Path) -> None:
    run = tmp_path / "runs" / clf
    row = _cli("fit", str(digits_store), "--clf", clf, "--device", "cpu", "--out", str(run),
               "--format", "csv", "--quiet", cwd=tmp_path)
    fitted = pd.read_csv(io.StringIO(row))
    assert fitted.loc[0, "pipeline"] == clf and fitted.loc[0, "test_accuracy"] >= 0.8
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    frame = pd.read_csv(io.StringIO(_cli("predict", str(run), str(digits_store), "--quiet",
                                         cwd=elsewhere)))
    test = frame[frame["split"] == "test"]
    with CodeStore(digits_store) as store:
        assert len(test) == int(np.sum(store.split == "test"))
    accuracy = float(np.mean(test["predicted"].astype(str) == test["label"].astype(str)))
    assert accuracy == pytest.approx(fitted.loc[0, "test_accuracy"], abs=1e-4)  # the row: 4 digits
    scores = [c for c in frame.columns if c.startswith(("proba_", "score_"))]
    assert len(scores) == 10 and scores[0].startswith("proba_" if clf == "torch_logreg" else "score_")


# --- parallel folds and their thread budget -------------------------------------------------


def test_thread_budget_shares_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_module, "available_cores", lambda: 2)
    assert thread_budget(5) == (2, 1)
    assert thread_budget(1) == (1, 2)  # one validation split: every core to the one fit
    assert thread_budget(5, n_jobs=1) == (1, 2)
    monkeypatch.setattr(search_module, "available_cores", lambda: 16)
    assert thread_budget(5) == (5, 3)
    assert thread_budget(5, n_jobs=32) == (5, 3)


class _ThreadSpy(ClassifierMixin, BaseEstimator):
    """Records the thread limits it sees while fitting (in a fold worker)."""

    seen: list[tuple[int, int, int]] = []

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X: np.ndarray, y: np.ndarray) -> _ThreadSpy:
        import threading

        import torch
        from threadpoolctl import threadpool_info

        blas = max((pool["num_threads"] for pool in threadpool_info()
                    if pool["user_api"] == "blas"), default=1)
        _ThreadSpy.seen.append((threading.get_ident(), blas, torch.get_num_threads()))
        self.classes_ = np.unique(y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.full(len(X), self.classes_[0])


def test_fold_workers_run_within_the_thread_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fold workers on two cores: each sees one BLAS and one torch thread."""
    import torch

    monkeypatch.setattr(search_module, "available_cores", lambda: 2)
    X, y = _blobs(n=80)
    folds = [(np.setdiff1d(np.arange(80), held), held)
             for held in (np.arange(i, 80, 4) for i in range(4))]
    before = torch.get_num_threads()
    _ThreadSpy.seen = []
    pipeline = Pipeline([("s", StandardScaler()), ("c", _ThreadSpy())])
    found = search_pipeline(pipeline, {"c__C": [0.1, 1.0]}, X, y, folds)
    assert len(found.candidates) == 2 and len(_ThreadSpy.seen) == 8
    assert {(blas, threads) for _, blas, threads in _ThreadSpy.seen} == {(1, 1)}
    assert torch.get_num_threads() == before  # restored after the search
    with limit_threads(1, torch_too=True):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
