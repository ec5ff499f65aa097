"""compare: the four strategies in one table, on one split, plus learning curves."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from cnncodes import CnnCodesError
from cnncodes.backbones import load_backbone
from cnncodes.cli import main
from cnncodes.compare import compare, earlier_layers
from cnncodes.layers import node_names

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


def test_compare_needs_a_val_split(tiny_folder: Path) -> None:
    with pytest.raises(CnnCodesError, match=r"compare needs a source with train and val splits"):
        compare(source=str(tiny_folder), epochs=1, progress=False)


def test_compare_rejects_zero_epochs(small_hymenoptera: Path, runner) -> None:
    result = runner.invoke(main, ["compare", str(small_hymenoptera), "--epochs", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --epochs must be at least 1; got 0."
