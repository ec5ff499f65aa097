"""compare: the four strategies in one table, on one split, plus learning curves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from cnncodes import CnnCodesError, finetune
from cnncodes.cli import main
from cnncodes.nets.backbones import load_backbone
from cnncodes.nets.layers import node_names
from cnncodes.studies.compare import compare, earlier_layers, validation_set

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
        "strategy", "trained", "trainable_params", "seconds", "peak_memory_mib", "val_accuracy"
    ]  # no test split, no test column
    assert table.val_accuracy.between(0, 1).all() and (table.trainable_params > 0).all()
    assert "best on val of: blocks.5.3.add" in table.trained[1]
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
    ]
    for name, recorded in _recorded(result.out).items():
        assert recorded["paths"] == result.validation["paths"], name
