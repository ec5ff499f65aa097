"""Progressive resizing (``cnncodes finetune --sizes``): the model trains at each size in
turn and sees each one, stages and epochs are recorded, validation, the checkpoint and the
predictions stay at the model's own size, early stopping waits for the last stage, and bad
sizes are one-line errors."""

from __future__ import annotations

import importlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cnncodes import CnnCodesError
from cnncodes.cli import main
from cnncodes.finetuning.finetune import (
    FinetuneConfig,
    finetune,
    parse_sizes,
    stage_epochs,
    stage_records,
)
from cnncodes.finetuning.trainer import EpochRecord

# the module, not the function that cnncodes exports under the same name
finetune_module = importlib.import_module("cnncodes.finetuning.finetune")

NATIVE = 224  # efficientnet_lite0's own crop


def _record_input_sides(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(height, width) of every batch the backbone's first layer receives."""
    sides: list[tuple[int, int]] = []
    original = finetune_module.load_backbone

    def recording(*args, **kwargs):
        backbone = original(*args, **kwargs)
        first = next(m for m in backbone.model.modules() if isinstance(m, torch.nn.Conv2d))
        first.register_forward_pre_hook(lambda _m, inputs: sides.append(tuple(inputs[0].shape[-2:])))
        return backbone

    monkeypatch.setattr(finetune_module, "load_backbone", recording)
    return sides


def _runs_of(values: list[int]) -> list[tuple[int, int]]:
    """(value, how many in a row) for each run of equal values."""
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    return runs


@pytest.mark.parametrize("options", [["--strategy", "4"], ["--strategy", "3", "--no-augment"]])
def test_each_stage_trains_at_its_size_and_the_run_records_it(
    hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner, options: list[str]
) -> None:
    sides = _record_input_sides(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the CLI from another working directory, a relative --out
    result = runner.invoke(main, [
        "finetune", str(hymenoptera), *options, "--sizes", "128,160,224", "--epochs", "4",
        "--limit", "8", "--batch-size", "4", "--patience", "0", "--out", "run", "--format", "csv",
    ])
    assert result.exit_code == 0, result.output
    summary = [line.split(", best")[0] for line in result.stderr.splitlines()
               if line.startswith("  stage")]
    assert summary == ["  stage 1: 128px, epoch 1", "  stage 2: 160px, epoch 2",
                       "  stage 3: 224px, epochs 3-4"]
    row = pd.read_csv(io.StringIO(result.stdout))
    assert row["stages"].item().startswith("128px x1 val ") and "; 224px x2 val " in row["stages"].item()

    run = tmp_path / "run"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["size"].tolist() == [128, 160, 224, 224]  # 4 epochs over 3 sizes: 1, 1, 2
    meta = json.loads((run / "finetune.json").read_text())
    assert meta["config"]["sizes"] == [128, 160, 224]
    stages = meta["stages"]
    assert [(s["size"], s["epochs"], s["epochs_run"], s["first_epoch"], s["last_epoch"])
            for s in stages] == [(128, 1, 1, 1, 1), (160, 1, 1, 2, 2), (224, 2, 2, 3, 4)]
    for stage in stages:  # each stage's score is read from its own epochs of metrics.csv
        own = metrics[metrics["size"] == stage["size"]]
        assert stage["val_accuracy"] == pytest.approx(own["val_accuracy"].max(), abs=1e-6)
    # the best epoch is chosen over all stages, and the checkpoint and predictions are its,
    # at the model's own size
    assert meta["result"]["val_accuracy"] == pytest.approx(max(s["val_accuracy"] for s in stages))
    assert meta["transform"]["crop_size"] == NATIVE
    predictions = pd.read_csv(run / "predictions.csv")
    val = predictions[predictions["split"] == "val"]
    assert len(val) == 8
    assert (val["label"] == val["predicted"]).mean() == pytest.approx(meta["result"]["val_accuracy"])

    # the backbone saw 8 training images at 128 px, then at 160 px, in 2 batches of 4 each
    # (strategy 3 without augmentation: features computed once per stage); everything else,
    # validation included, at its own size; never a non-square input
    assert all(height == width for height, width in sides)
    assert [run for run in _runs_of([h for h, _ in sides]) if run[0] != NATIVE] == [(128, 2), (160, 2)]


def test_early_stopping_waits_for_the_last_stage(
    hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = finetune_module.evaluate

    def never_better(*args, **kwargs):  # every epoch scores as the first: no improvement
        _, _, probabilities = original(*args, **kwargs)
        return 1.0, 0.5, probabilities

    monkeypatch.setattr(finetune_module, "evaluate", never_better)
    common = {"source": str(hymenoptera), "strategy": 3, "limit": 4, "epochs": 5, "patience": 1,
              "progress": False}
    staged = finetune(**common, sizes=(64, 96), out=str(tmp_path / "staged"))
    # stage 1 (64 px, 2 epochs) runs out although epoch 2 was no better; the count starts
    # again at stage 2 (96 px, 3 epochs) and stops it after one epoch without improvement
    assert [r.size for r in staged.history] == [64, 64, 96]
    assert staged.best_epoch == 1
    assert [(s["size"], s["epochs"], s["epochs_run"]) for s in staged.stages] == [(64, 2, 2), (96, 3, 1)]
    plain = finetune(**common, out=str(tmp_path / "plain"))
    assert [r.size for r in plain.history] == [NATIVE, NATIVE]  # one size: stops at epoch 2


def test_epochs_are_shared_out_over_the_stages() -> None:
    assert stage_epochs((128, 160, 224), 7) == [2, 2, 3]
    assert stage_epochs((128, 160, 224), 6) == [2, 2, 2]
    assert stage_epochs((128, 160, 224), 3) == [1, 1, 1]
    assert stage_epochs((128,), 5) == [5]
    assert parse_sizes("128, 160,224") == (128, 160, 224) and parse_sizes(None) is None
    assert FinetuneConfig(source="data", sizes=[96, 224], epochs=2).sizes == (96, 224)
    with pytest.raises(CnnCodesError, match=r"--sizes must go up, smallest first"):
        FinetuneConfig(source="data", sizes=(224, 128))


def test_a_stage_s_best_epoch_is_chosen_as_the_run_chooses() -> None:
    def record(epoch: int, size: int, accuracy: float, loss: float, score: float | None):
        return EpochRecord(epoch, 1e-3, 0.5, 0.5, loss, accuracy, 1.0, "head", size, score)

    by_accuracy = [record(1, 96, 0.70, 0.9, None), record(2, 96, 0.70, 0.8, None),
                   record(3, 224, 0.80, 0.5, None), record(4, 224, 0.75, 0.4, None)]
    stages = stage_records([96, 96, 224, 224, 224], by_accuracy)  # stopped early in stage 2
    assert [(s["best_epoch"], s["val_accuracy"], s["last_val_accuracy"]) for s in stages] == [
        (2, 0.70, 0.70), (3, 0.80, 0.75)]  # ties go to the lower val loss
    assert [(s["epochs"], s["epochs_run"], s["seconds"]) for s in stages] == [(2, 2, 2.0), (3, 2, 2.0)]
    by_score = [record(1, 96, 0.80, 0.9, 0.60), record(2, 96, 0.75, 0.9, 0.70)]
    (stage,) = stage_records([96, 96], by_score)  # e.g. --scoring macro_f1: the score decides
    assert (stage["best_epoch"], stage["val_accuracy"], stage["val_score"]) == (2, 0.75, 0.70)
    assert "val_score" not in stages[0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sizes", "128,big"], "--sizes '128,big' is not a comma-separated list of image sizes"),
        (["--sizes", "224,160"], "--sizes must go up, smallest first, each size once, e.g. "
                                 "128,160,224; got '224,160'."),
        (["--sizes", "160,160"], "--sizes must go up, smallest first, each size once"),
        (["--sizes", "16,224"], "--sizes must be image sizes of at least 32 pixels"),
        (["--sizes", "-128,224"], "--sizes must be image sizes of at least 32 pixels"),
        (["--sizes", "128,160,224", "--epochs", "2"],
         "--sizes 128,160,224 has 3 stages but --epochs is 2; give --epochs 3 or more"),
    ],
)
def test_bad_sizes_give_one_line_and_exit_code_2(
    tmp_path: Path, runner, arguments: list[str], message: str
) -> None:
    result = runner.invoke(main, ["finetune", str(tmp_path), "-q", "--out", str(tmp_path / "run"),
                                  *arguments])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
    assert not (tmp_path / "run").exists()
