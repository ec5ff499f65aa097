"""compare: the four strategies in one table, on one split, plus learning curves."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from cnncodes import CnnCodesError, finetune
from cnncodes.cli import main
from cnncodes.nets.backbones import load_backbone
from cnncodes.nets.layers import node_names
from cnncodes.probe.search import search_pipeline
from cnncodes.scoring import SCORINGS, balanced_weights, score
from cnncodes.studies.compare import compare, earlier_layers, validation_set
from cnncodes.studies.significance import mcnemar_exact, wilson_interval

from .conftest import write_image_folder
from .test_finetune import make_subset


@pytest.fixture(scope="module")
def small_hymenoptera(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_subset(tmp_path_factory.mktemp("cmp") / "hym", hymenoptera, {"train": 5, "val": 3})


def test_earlier_layers_are_stage_outputs_before_the_penultimate_code() -> None:
    layers = earlier_layers()
    names = node_names(load_backbone(weights="none"))
    assert layers == ["blocks.6.0.bn3", "blocks.5.3.add", "blocks.4.2.add"]
    assert all(names.index(name) < len(names) - 2 - 3 for name in layers)


def test_compare_table_has_all_four_strategies(
    small_hymenoptera: Path, tmp_path: Path, runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cmp"
    result = runner.invoke(main, [
        "compare", str(small_hymenoptera), "--epochs", "1", "--layer", "blocks.5",
        "--layer", "blocks.4", "--out", str(out), "--format", "csv", "-q",
    ])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output.split("\n\nruns")[0]))
    assert [s.split()[0] for s in table.strategy] == ["1", "2", "3", "4"]
    assert list(table.columns) == [
        "strategy", "trained", "trainable_params", "seconds", "peak_memory_mib",
        "epochs_budget", "best_epoch", "converged", "val_accuracy", "n_val", "val_ci95_low",
        "val_ci95_high", "p_vs_best", "vs_best",
    ]  # no test split, no test columns: val is the scored split
    assert table.val_accuracy.between(0, 1).all() and (table.trainable_params > 0).all()
    assert (table.n_val == 6).all()  # 3 + 3 val photos, every strategy on the same ones
    assert (table.val_ci95_low <= table.val_accuracy).all()
    assert (table.val_accuracy <= table.val_ci95_high).all()
    # one epoch allowed, so its best epoch is the last: not converged, and said so
    assert table.epochs_budget.isna()[:2].all() and (table.epochs_budget[2:] == 1).all()
    assert (table.best_epoch[2:] == 1).all()
    assert table.converged.fillna("").tolist() == ["", "", "not converged", "not converged"]
    assert (table.vs_best == "best").sum() == 1
    best = table.val_accuracy[table.vs_best == "best"].iloc[0]
    assert best == table.val_accuracy.max()
    assert table.p_vs_best.isna().sum() == 1 and table.p_vs_best.dropna().between(0, 1).all()
    assert "best val accuracy of: blocks.5.3.add" in table.trained[1]
    assert table.trainable_params[0] == 1281  # binary logistic regression on 1280-d codes
    assert table.trainable_params[2] == 2 * 1280 + 2
    assert (out / "curves.png").is_file() and (out / "compare.csv").is_file()
    for strategy in (3, 4):
        assert (out / f"strategy{strategy}" / "finetune.json").is_file()


def test_compare_needs_training_images(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "only-val", split="val")
    with pytest.raises(CnnCodesError, match=r"compare needs labelled training images; .* has "
                       r"val\. Put class folders under train/"):
        compare(source=str(folder), epochs=1, progress=False)
    with pytest.raises(CnnCodesError, match=r"--val-fraction must be in \(0, 1\), e\.g\. 0\.2; got 0"):
        compare(source=str(folder), val_fraction=0, progress=False)


def test_compare_rejects_zero_epochs(small_hymenoptera: Path, runner) -> None:
    result = runner.invoke(main, ["compare", str(small_hymenoptera), "--epochs", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --epochs must be at least 1; got 0."


def _train_test_subset(root: Path, hymenoptera: Path, *, swap_test: bool = False) -> Path:
    """The way most published data comes: train/ and test/, no val/. 8 training photos of
    each class and a file that does not decode; 4 of each class's val photos as test,
    under the other class's name with ``swap_test``."""
    for split, origin, count in (("train", "train", 8), ("test", "val", 4)):
        for name, other in (("ants", "bees"), ("bees", "ants")):
            target = root / split / (other if swap_test and split == "test" else name)
            target.mkdir(parents=True, exist_ok=True)
            for photo in sorted((hymenoptera / origin / name).glob("*.jpg"))[:count]:
                (target / photo.name).symlink_to(photo)
    (root / "train" / "bees" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _compare_in(directory: Path, source: Path) -> tuple[object, dict]:
    """compare with the defaults' output folders, run from ``directory``; the result's
    folders as absolute paths (they are relative to the working directory)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(directory)
        patch.delenv("CNNCODES_CACHE", raising=False)
        result = compare(source=str(source), epochs=1, layers=("blocks.5",), progress=False)
        result.out, result.store_path = result.out.resolve(), result.store_path.resolve()
    return result, json.loads((result.out / "compare.json").read_text())


@pytest.fixture(scope="module")
def train_test_compared(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("train-test")
    source = _train_test_subset(base / "hym", hymenoptera)
    work = base / "elsewhere"
    work.mkdir()
    return (source, work, *_compare_in(work, source))


def _recorded(out: Path) -> dict[str, dict]:
    """The validation record of every run folder compare wrote."""
    runs = {}
    for run in sorted(out.iterdir()):
        for name in ("metadata.json", "finetune.json"):
            if (run / name).is_file():
                runs[run.name] = json.loads((run / name).read_text())["validation"]
    return runs


def test_compare_on_train_and_test_only_chooses_every_strategy_on_one_carved_set(
    train_test_compared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, work, result, record = train_test_compared
    assert result.out.parent == (work / "cache" / "compare").resolve()  # relative to the cwd
    assert result.store_path.parent == (work / "cache" / "stores").resolve()
    table = result.table
    assert [s.split()[0] for s in table.strategy] == ["1", "2", "3", "4"]
    assert table.val_accuracy.between(0, 1).all() and table.test_accuracy.between(0, 1).all()

    validation = result.validation
    assert validation["origin"] == "carved from train" and validation["count"] == 4
    assert (validation["fraction"], validation["seed"]) == (0.2, 0)
    paths = validation["paths"]
    assert [p.split("/")[:2] for p in paths] == [["train", "ants"]] * 2 + [["train", "bees"]] * 2
    assert "train/bees/broken.jpg" not in paths  # drawn from what decodes, as the store holds
    assert not {str(p.relative_to(source)) for p in (source / "test").rglob("*.jpg")} & set(paths)
    assert record["validation"] == validation
    runs = _recorded(result.out)
    assert sorted(runs) == ["strategy1", "strategy2-blocks_5_3_add", "strategy3", "strategy4"]
    for name, recorded in runs.items():
        assert recorded["paths"] == paths and recorded["sha256"] == validation["sha256"], name
    assert result.notes[0].startswith("no val split: 4 images (20% of each class, seed 0)")
    assert record["notes"] == result.notes == table.attrs["notes"]

    # finetune on its own holds the very same images out (the same function, on the
    # source's readable training images rather than the store's rows); another seed, others
    monkeypatch.chdir(tmp_path)
    alone = finetune(source=str(source), epochs=1, augment=False, out="alone", progress=False)
    assert alone.validation == validation
    other = validation_set(result.store_path, seed=1)
    assert other["paths"] != paths and other["count"] == 4 and other["seed"] == 1


@pytest.mark.slow
def test_compare_choices_do_not_depend_on_test_labels(
    train_test_compared, hymenoptera: Path, tmp_path: Path
) -> None:
    _, _, first, _ = train_test_compared
    swapped = _train_test_subset(tmp_path / "hym", hymenoptera, swap_test=True)
    second, _ = _compare_in(tmp_path, swapped)
    assert second.validation == first.validation
    for layer, fitted in first.fit_runs.items():  # C of strategy 1 and of each earlier layer
        assert second.fit_runs[layer].best_params == fitted.best_params
        scores = [c["score"] for c in fitted.metadata["search"]["candidates"]]
        assert [c["score"] for c in second.fit_runs[layer].metadata["search"]["candidates"]] == (
            pytest.approx(scores, abs=1e-9))
    for strategy, run in first.finetune_runs.items():  # the best epoch of 3 and 4
        assert second.finetune_runs[strategy].best_epoch == run.best_epoch
        assert [r.val_loss for r in second.finetune_runs[strategy].history] == pytest.approx(
            [r.val_loss for r in run.history], abs=1e-5)
    chosen = [table[["strategy", "trainable_params", "val_accuracy"]].assign(
        trained=table.trained.str.replace(r"; (cached codes|extraction \d+s shared with 2)", "",
                                          regex=True))
        for table in (first.table, second.table)]
    pd.testing.assert_frame_equal(chosen[0], chosen[1], atol=1e-6)
    # every test label swapped: only the test scores move, to one minus what they were
    assert (second.table.test_accuracy + first.table.test_accuracy).tolist() == pytest.approx([1.0] * 4)


def test_compare_on_a_folder_without_splits_carves_from_all_and_has_no_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    folder = write_image_folder(tmp_path / "flat", per_class=5, size=32)
    result = compare(source=str(folder), epochs=1, layers=("blocks.5",), out=str(tmp_path / "cmp"),
                     progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""  # progress is for stderr, stdout is the command's data
    assert "[compare] no val split: 2 images" in captured.err and "[fit] logreg" in captured.err
    assert len(result.table) == 4 and "test_accuracy" not in result.table.columns
    assert result.table.val_accuracy.between(0, 1).all()
    assert result.validation["origin"] == "carved from all" and result.validation["count"] == 2
    assert result.notes == [
        "no val split: 2 images (20% of each class, seed 0) held out of all images (the "
        "source has no train/val/test split); every strategy is chosen on them",
        "no test split, so no test accuracy",
        "selection maximises val accuracy; accuracies with n and a 95 % Wilson interval; "
        "vs_best: exact McNemar test of accuracy against the most accurate row on the same "
        "val images (differs: p < 0.05; that row is picked on these images and each row is "
        "tested alone, with no correction for the three tests); val also chose every "
        "setting, so its scores are optimistic",
    ]
    for name, recorded in _recorded(result.out).items():
        assert recorded["paths"] == result.validation["paths"], name


def test_wilson_interval_and_exact_mcnemar_match_the_binomial_test() -> None:
    z = NormalDist().inv_cdf(0.975)
    for correct, n in ((8, 10), (0, 20), (153, 153), (871, 1000)):
        p = correct / n  # the Wilson score interval in closed form
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson_interval(correct, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # textbook value
    assert all(math.isnan(v) for v in wilson_interval(0, 0))

    # 9 images only the first gets right, 1 only the second, 10 both, 5 neither
    first = [True] * 9 + [False] + [True] * 10 + [False] * 5
    second = [False] * 9 + [True] + [True] * 10 + [False] * 5
    only_first, only_second, p = mcnemar_exact(first, second)
    assert (only_first, only_second) == (9, 1)
    assert p == pytest.approx(2 * (math.comb(10, 0) + math.comb(10, 1)) / 2**10)  # 0.0215
    assert p == pytest.approx(binomtest(1, 10, 0.5).pvalue)
    assert mcnemar_exact(first, first)[2] == 1.0  # no discordant pair: nothing differs
    assert mcnemar_exact([True] * 3 + [False] * 3, [False] * 3 + [True] * 3)[2] == 1.0


def _imbalanced(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Two overlapping classes, 9:1, as train (400) then val (200) rows."""
    rng = np.random.default_rng(seed)

    def draw(common: int, rare: int) -> tuple[np.ndarray, np.ndarray]:
        X = np.vstack([rng.normal(0, 1, (common, 5)), rng.normal(0.7, 1, (rare, 5))])
        return X, np.r_[np.zeros(common, int), np.ones(rare, int)]

    (X_train, y_train), (X_val, y_val) = draw(360, 40), draw(180, 20)
    return (np.vstack([X_train, X_val]), np.r_[y_train, y_val],
            [(np.arange(400), np.arange(400, 600))])


def test_scoring_chooses_differently_on_imbalanced_classes() -> None:
    from sklearn.metrics import balanced_accuracy_score

    from cnncodes.pipelines import logreg

    X, y, folds = _imbalanced()
    space = {"classifier__class_weight": [None, "balanced"]}
    chosen = {scoring: search_pipeline(logreg.build(), space, X, y, folds, scoring=scoring)
              for scoring in SCORINGS}
    # accuracy rewards calling everything the common class; balanced accuracy does not
    assert chosen["accuracy"].best_params == {"classifier__class_weight": None}
    assert chosen["balanced_accuracy"].best_params == {"classifier__class_weight": "balanced"}
    for weight, candidate in zip(space["classifier__class_weight"],
                                 chosen["balanced_accuracy"].candidates, strict=True):
        model = logreg.build(classifier__class_weight=weight).fit(X[:400], y[:400])
        assert candidate["score"] == pytest.approx(
            balanced_accuracy_score(y[400:], model.predict(X[400:])))
    # balanced weights are sklearn's n / (classes * count)
    assert balanced_weights(y[:400], 2) == pytest.approx([400 / (2 * 360), 400 / (2 * 40)])
    majority = np.zeros(200, int)
    assert score("accuracy", y[400:], majority) == pytest.approx(0.9)
    assert score("balanced_accuracy", y[400:], majority) == pytest.approx(0.5)
    assert score("macro_f1", y[400:], majority) == pytest.approx((2 * 0.9 / 1.9) / 2)


def test_compare_rejects_unknown_scoring_and_class_weight(small_hymenoptera: Path, runner) -> None:
    result = runner.invoke(main, ["compare", str(small_hymenoptera), "--scoring", "auc"])
    assert result.exit_code == 2 and "'auc' is not one of" in result.output
    with pytest.raises(CnnCodesError, match=r"--scoring 'f1' is not one of accuracy, "
                       r"balanced_accuracy, macro_f1"):
        compare(source=str(small_hymenoptera), scoring="f1", progress=False)
    with pytest.raises(CnnCodesError, match=r"--class-weight 'auto' is not one of none, balanced"):
        finetune(source=str(small_hymenoptera), class_weight="auto", progress=False)


def test_compare_csv_from_another_directory_on_fashion_mnist(fashion_mnist: Path,
                                                             tmp_path: Path) -> None:
    """The real command in a subprocess, run elsewhere: stdout is the CSV table alone."""
    env = {k: v for k, v in os.environ.items() if k != "CNNCODES_CACHE"}
    done = subprocess.run(
        [sys.executable, "-m", "cnncodes", "compare", str(fashion_mnist), "--limit", "60",
         "--epochs", "2", "--layer", "blocks.5", "--scoring", "balanced_accuracy",
         "--class-weight", "balanced", "--format", "csv"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = pd.read_csv(io.StringIO(done.stdout))
    assert [s.split()[0] for s in table.strategy] == ["1", "2", "3", "4"]
    assert list(table.columns) == [
        "strategy", "trained", "trainable_params", "seconds", "peak_memory_mib",
        "epochs_budget", "best_epoch", "converged",
        "val_accuracy", "n_val", "val_ci95_low", "val_ci95_high", "val_balanced_accuracy",
        "test_accuracy", "n_test", "test_ci95_low", "test_ci95_high", "test_balanced_accuracy",
        "p_vs_best", "vs_best",
    ]
    for split in ("val", "test"):
        assert (table[f"{split}_ci95_low"] <= table[f"{split}_accuracy"]).all()
        assert (table[f"{split}_accuracy"] <= table[f"{split}_ci95_high"]).all()
    assert (table.n_test == 60).all()
    assert table.trained[2].endswith("no augmentation")  # strategy 3: the frozen codes, as 1
    assert (table.epochs_budget[2:] == 2).all() and table.best_epoch[2:].between(1, 2).all()
    assert table.converged[2:].tolist() == [
        "not converged" if epoch == 2 else "yes" for epoch in table.best_epoch[2:]]

    out = next((tmp_path / "cache" / "compare").iterdir())  # relative to the cwd
    predictions = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    test = predictions[predictions.split == "test"]
    right = {k: g.set_index("path").eval("label == predicted") for k, g in test.groupby("strategy")}
    assert sorted(right) == ["1", "2", "3", "4"]
    assert all(len(r) == 60 and set(r.index) == set(right["1"].index) for r in right.values())
    for index, strategy in enumerate("1234"):  # the table's figures from the predictions
        assert table.test_accuracy[index] == pytest.approx(right[strategy].mean(), abs=1e-4)
    best = str(table.strategy[table.vs_best == "best"].iloc[0]).split()[0]
    for index, strategy in enumerate("1234"):
        if strategy != best:
            paths = right[best].index
            p = mcnemar_exact(right[best].loc[paths], right[strategy].loc[paths])[2]
            assert table.p_vs_best[index] == pytest.approx(p, abs=1e-4)
            assert table.vs_best[index] == ("differs" if p < 0.05 else "n.s.")
    config = json.loads((out / "strategy3" / "finetune.json").read_text())["config"]
    assert (config["scoring"], config["class_weight"], config["augment"]) == (
        "balanced_accuracy", "balanced", False)


def test_fit_cli_scores_by_scoring_and_weighs_classes(hymenoptera_store: Path, tmp_path: Path,
                                                      runner) -> None:
    from sklearn.metrics import f1_score

    from cnncodes.probe.fit import fit_pipeline

    out = tmp_path / "fit"
    result = runner.invoke(main, ["fit", str(hymenoptera_store), "--scoring", "macro_f1",
                                  "--class-weight", "balanced", "--out", str(out), "-q",
                                  "--format", "csv"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metadata.json").read_text())["metrics"]
    assert metrics["scoring"] == "macro_f1"
    fitted = fit_pipeline(hymenoptera_store, scoring="macro_f1", class_weight="balanced",
                          out=tmp_path / "api", progress=False)
    assert fitted.pipeline.steps[-1][1].class_weight == "balanced"
    assert metrics["selection_score"] == pytest.approx(fitted.metrics["selection_score"])
    assert fitted.metrics["selection_score"] == pytest.approx(
        max(c["score"] for c in fitted.search.candidates), abs=1e-6)
    frame = pd.read_csv(out / "predictions.csv")
    val = frame[frame.split == "val"]
    assert metrics["macro_f1"] == pytest.approx(f1_score(val.label, val.predicted, average="macro"),
                                                abs=1e-6)

    knn = runner.invoke(main, ["fit", str(hymenoptera_store), "--clf", "knn", "--class-weight",
                               "balanced", "--out", str(tmp_path / "knn")])
    assert knn.exit_code != 0 and knn.output.strip().splitlines()[-1] == (
        "Error: --class-weight balanced needs a classifier that takes class weights; "
        "KNeighborsClassifier of 'knn' does not. Use --clf logreg or rbf_svm, or "
        "--class-weight none.")
    streamed = runner.invoke(main, ["fit", str(hymenoptera_store), "--stream", "--scoring",
                                    "macro_f1"])
    assert streamed.exit_code != 0 and "--scoring is not available with it" in streamed.output


def test_finetune_best_epoch_follows_scoring_and_weighs_classes(
    hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real training on real photos; only the val predictions of each epoch are set, so
    that accuracy and balanced accuracy disagree on the best epoch."""
    import importlib

    import torch

    root = tmp_path / "imbalanced"  # 8 ants and 2 bees to train on, 5 + 2 to validate
    for split, counts in (("train", {"ants": 8, "bees": 2}), ("val", {"ants": 5, "bees": 2})):
        for name, count in counts.items():
            (root / split / name).mkdir(parents=True)
            for photo in sorted((hymenoptera / split / name).glob("*.jpg"))[:count]:
                (root / split / name / photo.name).symlink_to(photo)
    module = importlib.import_module("cnncodes.finetuning.finetune")
    # val predictions per epoch (5 ants, then 2 bees): accuracy 5/7, 5/7, 6/7, 5/7;
    # balanced accuracy 0.5, 0.8, 0.75, 0.8: the best epoch is 3 by one, 2 by the other
    epochs = ["aaaaaaa", "aaabbbb", "aaaaaab", "aaabbbb"]
    seen: list = []
    original_train, original_evaluate = module.train_epoch, module.evaluate

    def train_spy(*args, class_weights=None, **kwargs):
        seen.append(class_weights)
        return original_train(*args, class_weights=class_weights, **kwargs)

    def evaluate(model, batches, *, head=None, **kwargs):
        if head is None:  # test and predictions: the real model
            return original_evaluate(model, batches, head=head, **kwargs)
        predicted = epochs[len(seen) - 1]
        probabilities = torch.tensor([[0.9, 0.1] if c == "a" else [0.1, 0.9] for c in predicted])
        truth = "aaaaabb"
        return 0.5, sum(p == t for p, t in zip(predicted, truth, strict=True)) / 7, probabilities

    monkeypatch.setattr(module, "train_epoch", train_spy)
    monkeypatch.setattr(module, "evaluate", evaluate)
    best = {}
    for scoring, weight in (("accuracy", "none"), ("balanced_accuracy", "balanced")):
        seen.clear()
        out = tmp_path / scoring
        best[scoring] = finetune(source=str(root), strategy=3, epochs=4, patience=0,
                                 scoring=scoring, class_weight=weight, out=str(out),
                                 progress=False).best_epoch
        metrics = pd.read_csv(out / "metrics.csv")
        if scoring == "balanced_accuracy":
            assert metrics.val_score.tolist() == pytest.approx([0.5, 0.8, 0.75, 0.8])
            assert seen[0].tolist() == pytest.approx([10 / (2 * 8), 10 / (2 * 2)])
            config = json.loads((out / "finetune.json").read_text())["config"]
            assert (config["scoring"], config["class_weight"], config["augment"]) == (
                "balanced_accuracy", "balanced", False)
        else:
            assert metrics.val_score.isna().all() and seen[0] is None
    assert best == {"accuracy": 3, "balanced_accuracy": 2}  # ties go to the earlier epoch


def test_vs_best_tests_accuracy_against_the_most_accurate_row_on_the_same_images() -> None:
    """With --scoring balanced_accuracy the row that scores best is not the most accurate;
    McNemar tests accuracy, so its reference is the most accurate row (here the row that
    always says 'a'), and a row predicted on other images is marked, never read as n.s."""
    from cnncodes.studies.compare import _mark_best

    labels = np.array(["a"] * 180 + ["b"] * 20)
    always_a = labels.copy()
    always_a[:] = "a"  # accuracy 0.90, balanced accuracy 0.50
    balanced = labels.copy()
    balanced[:40] = "b"  # 40 ants wrong, every bee right: accuracy 0.80, balanced 0.89
    paths = [f"img{i}.png" for i in range(200)]

    def row(name: str, predicted: np.ndarray, names: list[str]) -> dict:
        frame = pd.DataFrame({"path": names, "split": "test", "label": labels,
                              "predicted": predicted})
        right = float((frame["label"] == frame["predicted"]).mean())
        return {"strategy": name, "predictions": frame, "test_accuracy": right,
                "test_balanced_accuracy": score("balanced_accuracy", labels, predicted)}

    rows = [row("1", always_a, paths), row("3", balanced, paths),
            row("4", always_a, [f"/elsewhere/{p}" for p in paths])]
    assert rows[1]["test_balanced_accuracy"] > rows[0]["test_balanced_accuracy"]
    _mark_best(rows, "test")
    assert rows[0]["vs_best"] == "best"
    # 40 ants only the first got right, 20 bees only the second: p = 0.013
    assert rows[1]["vs_best"] == "differs"
    assert rows[1]["p_vs_best"] == pytest.approx(binomtest(20, 60, 0.5).pvalue)
    assert rows[2]["vs_best"] == "other images" and rows[2]["p_vs_best"] is None


@pytest.mark.parametrize("clf", ["linear_svm", "knn"])
def test_compare_refuses_class_weights_the_probe_cannot_take_before_any_work(
        clf: str, tmp_path: Path) -> None:
    """The refusal comes from the configuration, before a source is even opened."""
    with pytest.raises(CnnCodesError, match=rf"--class-weight balanced needs .* of '{clf}' does not"):
        compare(source=str(tmp_path / "not-there"), clf=clf, class_weight="balanced")

