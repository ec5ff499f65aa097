"""The strategy advisor: the decision rule on controlled inputs, the real command on real
photos (from another working directory), and bad input as one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cnncodes.cli import main
from cnncodes.errors import CnnCodesError
from cnncodes.studies.advise import AdviseConfig, Evidence, advise, decide

PENULTIMATE = "global_pool.flatten"


def evidence(per_class: float, confidence: float | None, penultimate: float,
             earlier: float) -> Evidence:
    return Evidence(
        images_per_class=per_class,
        cv_accuracy={PENULTIMATE: penultimate, "blocks.6.0.bn3": earlier - 0.05,
                     "blocks.5.3.add": earlier},
        imagenet_confidence=confidence, unfreeze_from="blocks.5",
    )


@pytest.mark.parametrize(("case", "expected"), [
    # few images per class, ImageNet-like (confident, penultimate best): codes + linear
    (evidence(60, 0.8, 0.95, 0.90), (1, PENULTIMATE)),
    # few images, far from ImageNet (unsure backbone), earlier codes clearly better
    (evidence(60, 0.2, 0.80, 0.86), (2, "blocks.5.3.add")),
    # few images, unsure backbone, but the earlier lead is inside the margin: penultimate
    (evidence(60, 0.2, 0.80, 0.81), (1, PENULTIMATE)),
    # few images, confident backbone, but an earlier layer separates clearly better
    (evidence(60, 0.8, 0.80, 0.85), (2, "blocks.5.3.add")),
    # few images, unsure backbone, yet the penultimate code wins beyond the margin
    (evidence(60, 0.2, 0.90, 0.80), (1, PENULTIMATE)),
    # lots of data far from ImageNet: fine-tune the top layers
    (evidence(5000, 0.2, 0.85, 0.86), (4, "blocks.5")),
    # lots of ImageNet-like data: new head on the frozen body
    (evidence(5000, 0.8, 0.95, 0.90), (3, PENULTIMATE)),
])
def test_decision_rule_on_controlled_inputs(case: Evidence, expected: tuple[int, str]) -> None:
    strategy, layer, reasons = decide(case, large_per_class=1000, min_confidence=0.5, margin=0.02)
    assert (strategy, layer) == expected
    assert f"strategy {strategy}" in reasons[-1]
    assert all(isinstance(line, str) and "\n" not in line for line in reasons)


def test_decision_thresholds_move_the_choice() -> None:
    case = evidence(300, 0.45, 0.90, 0.915)  # an earlier layer 1.5 points ahead
    assert decide(case)[0] == 1  # 300 < 1000 images: small; 1.5 points is inside 2
    assert decide(case, margin=0.01)[0] == 2  # now a measurable lead
    assert decide(case, large_per_class=300)[0] == 4  # large; 0.45 < 0.5: different
    assert decide(case, large_per_class=300, min_confidence=0.4)[0] == 3  # now similar
    assert decide(case, large_per_class=300, min_confidence=0.4, margin=0.01)[0] == 4
    no_confidence = Evidence(images_per_class=50, cv_accuracy={PENULTIMATE: 0.9})
    strategy, layer, reasons = decide(no_confidence)
    assert (strategy, layer) == (1, PENULTIMATE)
    assert any("not measured" in line for line in reasons)


def test_cli_on_real_photos_from_another_folder(hymenoptera: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, runner) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["advise", str(hymenoptera), "--limit", "30", "--sample", "30"]
    result = runner.invoke(main, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    # 30 training photos taken from both classes in turn: 15 ants, 15 bees
    assert row["images_per_class"] == 15 and row["classes"] == 2
    assert row["sample_images"] == 60  # 30 train + 30 val, never test
    assert 0.5 < row["imagenet_confidence"] <= 1  # ants and bees are ImageNet classes
    assert 0.5 < row["penultimate_cv_accuracy"] <= 1
    assert 0 <= row["earlier_cv_accuracy"] <= 1
    assert row["strategy"] == 1 and row["layer"] == PENULTIMATE  # small and similar
    assert "strategy 1" in row["why"] and "[advise]" in result.stderr
    assert list(tmp_path.glob("cache/stores/*.h5"))  # cached under this folder
    again = runner.invoke(main, [*args, "--format", "csv", "-q"], catch_exceptions=False)
    assert again.exit_code == 0 and again.stderr == ""
    table = pd.read_csv(io.StringIO(again.stdout))
    assert table.loc[0, "strategy"] == 1
    assert table.loc[0, "penultimate_cv_accuracy"] == pytest.approx(row["penultimate_cv_accuracy"])


def test_sample_codes_are_the_store_compare_reads(hymenoptera: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cnncodes import extract
    from cnncodes.studies.compare import earlier_layers

    monkeypatch.chdir(tmp_path)
    result = advise(source=str(hymenoptera), limit=20, sample=20, progress=False)
    assert set(result.layers["layer"]) == {PENULTIMATE, *earlier_layers()}
    assert (result.layers["n"] == 40).all()
    # compare --limit 20 extracts exactly these layers: a cache hit, no model run
    again = extract(source=str(hymenoptera), layers=("-2", *earlier_layers()), limit=20,
                    progress=False)
    assert again.cached and again.path == result.store_path


def test_fashion_mnist_counts_as_different(fashion_mnist: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = advise(source=str(fashion_mnist), limit=60, sample=60, folds=3, progress=False)
    row = result.table.iloc[0]
    assert row["imagenet_confidence"] < 0.5  # grey 28-px garments upsampled: unsure backbone
    assert any("different from" in line for line in result.reasons)
    assert result.strategy in (1, 2) and row["images_per_class"] == 6  # small: a probe


def write_photos(folder: Path, count: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(folder / f"{i}.png")


@pytest.mark.parametrize(("layout", "message"), [
    ("train/cats", "at least two classes; .* one class only \\('cats'\\)"),
    ("", "class"),  # images without class folders: unlabeled
])
def test_bad_input_is_one_line(tmp_path: Path, runner, layout: str, message: str) -> None:
    data = tmp_path / "data"
    write_photos(data / layout if layout else data)
    result = runner.invoke(main, ["advise", str(data)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert __import__("re").search(message, lines[0]), lines[0]
    assert result.stdout == ""


def test_unlabeled_manifest_is_refused(tmp_path: Path) -> None:
    write_photos(tmp_path / "img")
    manifest = tmp_path / "data.csv"
    manifest.write_text("path,label\n" + "".join(f"img/{i}.png,\n" for i in range(3)))
    with pytest.raises(CnnCodesError, match="label"):
        advise(source=str(manifest), progress=False)


def test_decision_needs_a_measured_layer() -> None:
    with pytest.raises(CnnCodesError, match="penultimate code's probe accuracy"):
        decide(Evidence(images_per_class=50, cv_accuracy={}))


@pytest.mark.parametrize(("option", "value"), [("sample", 5), ("folds", 1),
                                               ("min_confidence", 2.0), ("margin", -0.1)])
def test_bad_options(option: str, value: float) -> None:
    with pytest.raises(CnnCodesError, match=option):
        AdviseConfig(source="x", **{option: value})
