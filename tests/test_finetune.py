"""Strategies 3 and 4: what is frozen stays bit-identical, what trains changes, at the
learning rates asked for; progressive unfreezing order; a real end-to-end run; bad options."""

from __future__ import annotations

import csv
import importlib
import json
import re
from pathlib import Path

import pytest
import torch

from cnncodes import CnnCodesError, load_backbone
from cnncodes.cli import main
from cnncodes.data.splits import carve_validation
from cnncodes.finetuning.finetune import FinetuneConfig, finetune, load_run, parse_head, predict_run
from cnncodes.nets.layers import node_names
from cnncodes.nets.surgery import install_head, layer_groups, unfrozen_groups

from .conftest import write_image_folder

# the module, not the function that cnncodes exports under the same name
finetune_module = importlib.import_module("cnncodes.finetuning.finetune")


def make_subset(root: Path, source: Path, counts: dict[str, int]) -> Path:
    """A small ImageFolder of real hymenoptera photos (symlinks), both classes per split."""
    for split, count in counts.items():
        for name in ("ants", "bees"):
            target = root / split / name
            target.mkdir(parents=True, exist_ok=True)
            for photo in sorted((source / split / name).glob("*.jpg"))[:count]:
                (target / photo.name).symlink_to(photo)
    return root


@pytest.fixture(scope="module")
def small_hymenoptera(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 + 4 training and 3 + 3 val photos of the real data set, plus two bad files: the
    data set's own GIF placeholder and a truncated JPEG."""
    subset = make_subset(tmp_path_factory.mktemp("small") / "hym", hymenoptera,
                         {"train": 4, "val": 3})
    gif = Path("train/ants/imageNotFound.gif")
    (subset / gif).symlink_to(hymenoptera / gif)
    (subset / "train" / "bees" / "broken.jpg").write_bytes(b"not a jpeg")
    return subset


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    """The default backbone's pretrained state dict (weights and BatchNorm buffers)."""
    return load_backbone().model.state_dict()


def _capture_head(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Record the freshly initialised head's weights when finetune installs it."""
    captured: dict[str, torch.Tensor] = {}
    original = finetune_module.install_head

    def recording(model: torch.nn.Module, *args, **kwargs) -> str:
        path = original(model, *args, **kwargs)
        for key, value in model.get_submodule(path).state_dict().items():
            captured[f"{path}.{key}"] = value.detach().clone()
        return path

    monkeypatch.setattr(finetune_module, "install_head", recording)
    return captured


def _checkpoint(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)


def test_strategy3_keeps_pretrained_weights_bit_identical_and_trains_the_head(
    small_hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pretrained
) -> None:
    initial_head = _capture_head(monkeypatch)
    result = finetune(source=str(small_hymenoptera), strategy=3, epochs=1, lr=1e-2,
                      out=str(tmp_path / "run"), progress=False)
    trained = _checkpoint(result.run_dir)
    body = [key for key in trained if not key.startswith("classifier")]
    assert len(body) == len(pretrained) - 2  # every weight and BN buffer but the old head
    for key in body:
        assert torch.equal(trained[key], pretrained[key]), key
    assert set(initial_head) == {"classifier.weight", "classifier.bias"}
    assert trained["classifier.weight"].shape == (2, 1280)
    for key, before in initial_head.items():
        assert not torch.equal(trained[key], before), f"{key} did not train"
    assert result.trainable_params == 2 * 1280 + 2
    assert result.trained == "head Linear 1280->2"


def test_strategy4_changes_exactly_the_unfrozen_groups_at_the_asked_rates(
    small_hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pretrained
) -> None:
    seen: list[tuple[int, float]] = []
    original = finetune_module.build_optimizer

    def recording(groups, **kwargs):
        seen.extend((len(params), lr) for params, lr in groups)
        return original(groups, **kwargs)

    monkeypatch.setattr(finetune_module, "build_optimizer", recording)
    result = finetune(
        source=str(small_hymenoptera), strategy=4, unfreeze_from="blocks.5", head=(16,),
        lr=2e-3, lr_decay=0.5, epochs=1, schedule="constant", out=str(tmp_path / "run"),
        progress=False,
    )
    rates = {row["group"]: row["lr"] for row in result.groups if row["trainable_params"]}
    assert rates == pytest.approx({"blocks.5": 5e-4, "blocks.6": 1e-3, "head": 2e-3})
    names = [k for k in pretrained if not k.endswith(("running_mean", "running_var", "batches_tracked"))]
    n_block5 = sum(1 for k in names if k.startswith("blocks.5."))
    n_block6 = sum(1 for k in names if k.startswith(("blocks.6.", "conv_head", "bn2")))
    assert seen == [(n_block5, 5e-4), (n_block6, 1e-3), (4, 2e-3)]

    trained = _checkpoint(result.run_dir)
    changed = {k for k in names if not k.startswith("classifier")
               and not torch.equal(trained[k], pretrained[k])}
    unfrozen = {k for k in names if k.startswith(("blocks.5.", "blocks.6.", "conv_head", "bn2"))}
    assert changed and changed <= unfrozen  # nothing earlier than blocks.5 moved
    assert len(changed) > len(unfrozen) // 2
    for key, value in pretrained.items():  # --freeze-bn (default) keeps running statistics
        if "running_" in key:
            assert torch.equal(trained[key], value), key


def test_unfreeze_from_an_index_splits_a_group(small_hymenoptera: Path) -> None:
    backbone = load_backbone(weights="none")
    names = node_names(backbone)
    head_path = install_head(backbone.model, 2)
    groups = layer_groups(backbone.model, head_path, names)
    assert [g.name for g in groups] == [f"blocks.{i}" for i in range(7)] + ["head"]
    trainable, start = unfrozen_groups(backbone, groups, "conv_head", names)
    assert start == "conv_head"
    assert trainable == {"blocks.6": ["conv_head.weight", "bn2.weight", "bn2.bias"]}
    trainable, start = unfrozen_groups(backbone, groups, names.index("bn2") - len(names), names)
    assert start == "bn2" and trainable == {"blocks.6": ["bn2.weight", "bn2.bias"]}


def test_progressive_unfreezing_goes_top_down_one_group_per_epoch(
    small_hymenoptera: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainable_per_epoch: list[list[str]] = []
    original = finetune_module.train_epoch

    def recording(model, *args, **kwargs):
        groups = {name.split(".")[0] if name.startswith("classifier") else ".".join(name.split(".")[:2])
                  for name, p in model.named_parameters() if p.requires_grad}
        trainable_per_epoch.append(sorted(groups))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "train_epoch", recording)
    result = finetune(source=str(small_hymenoptera), strategy=4, unfreeze_from="blocks.5",
                      progressive=True, epochs=3, patience=0, out=str(tmp_path / "run"),
                      progress=False)
    assert trainable_per_epoch == [
        ["classifier"],
        ["blocks.6", "bn2.bias", "bn2.weight", "classifier", "conv_head.weight"],
        ["blocks.5", "blocks.6", "bn2.bias", "bn2.weight", "classifier", "conv_head.weight"],
    ]
    assert [r.trainable_groups for r in result.history] == [
        "head", "blocks.6+head", "blocks.5+blocks.6+head"
    ]


def test_end_to_end_cli_run_then_predict(small_hymenoptera: Path, tmp_path: Path, runner) -> None:
    out = tmp_path / "run"
    result = runner.invoke(main, ["finetune", str(small_hymenoptera), "--strategy", "4",
                                  "--head", "32", "--epochs", "1", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "val_accuracy" in result.output  # the run's row of 'cnncodes report'
    assert "skipped train/ants/imageNotFound.gif: not an image type" in result.output
    assert "skipped train/bees/broken.jpg: unreadable image" in result.output
    for name in ("model.pt", "metrics.csv", "finetune.json", "curves.png"):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 and 0 <= float(rows[0]["val_accuracy"]) <= 1
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["classes"] == ["ants", "bees"] and meta["head"]["hidden"] == [32]

    model, transform, classes, config = load_run(out)
    assert not model.training and classes == ["ants", "bees"]
    assert config["config"]["strategy"] == 4 and transform.crop_size == [224]
    frame = predict_run(out, small_hymenoptera)
    assert len(frame) == 14 and len(frame.attrs["skipped"]) == 2
    assert list(frame.columns) == ["path", "label", "split", "predicted", "proba_ants", "proba_bees"]
    assert ((frame.proba_ants + frame.proba_bees) - 1).abs().max() < 1e-5
    # the predictions of the saved run are those of the accuracy it reported
    val = frame[frame.split == "val"]
    assert (val.predicted == val.label).mean() == pytest.approx(meta["result"]["val_accuracy"])


@pytest.mark.slow
def test_runs_on_the_cpu_are_repeatable(small_hymenoptera: Path, tmp_path: Path) -> None:
    first, second = (
        finetune(source=str(small_hymenoptera), epochs=1, out=str(tmp_path / name), progress=False)
        for name in ("a", "b")
    )
    assert first.history[0].train_loss == second.history[0].train_loss
    assert first.val_loss == second.val_loss
    assert torch.equal(_checkpoint(first.run_dir)["classifier.weight"],
                       _checkpoint(second.run_dir)["classifier.weight"])


def test_alexnet_replace_fc_rebuilds_the_last_two_linear_layers() -> None:
    backbone = load_backbone("alexnet", "none")
    kept = backbone.model.classifier[1]
    path = install_head(backbone.model, 5, replace_fc=2)
    assert path == "classifier.4"
    head = backbone.model.get_submodule(path)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 4096), (4096, 5)]
    assert backbone.model.classifier[1] is kept  # the first FC layer stays pretrained
    assert backbone.model(torch.zeros(1, 3, 224, 224)).shape == (1, 5)
    with pytest.raises(CnnCodesError, match=r"--replace-fc 4 is not possible: AlexNet has 3"):
        install_head(load_backbone("alexnet", "none").model, 5, replace_fc=4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, r"--epochs must be at least 1; got 0\."),
        ({"head": (0,)}, r"--head sizes must be positive integers, e\.g\. 512,256; got '0'\."),
        ({"strategy": 2}, r"strategy must be 3 .* got 2\. Strategies 1 and 2 are 'cnncodes fit'"),
        ({"unfreeze_from": "layer4"}, r"--unfreeze-from and --progressive apply to strategy 4"),
        ({"lr": -1.0}, r"--lr must be a positive number; got -1\.0\."),
        ({"optimizer": "adam"}, r"optimizer 'adam' is not one of adamw, sgd\."),
        ({"val_fraction": 1.0}, r"--val-fraction must be in \(0, 1\), e\.g\. 0\.2; got 1\.0\."),
        ({"val_paths": ()}, r"val_paths must be a non-empty sequence of image paths"),
    ],
)
def test_bad_options_are_named_with_the_fix(options: dict, message: str) -> None:
    with pytest.raises(CnnCodesError, match=message):
        FinetuneConfig(source="data", **options)


def test_bad_head_text() -> None:
    assert parse_head("512, 256") == (512, 256) and parse_head("none") == ()
    with pytest.raises(CnnCodesError, match=r"--head 'big' is not a comma-separated list"):
        parse_head("big")


def test_unknown_unfreeze_layer_is_one_error(small_hymenoptera: Path, tmp_path: Path) -> None:
    with pytest.raises(CnnCodesError, match=r"Layer 'blokcs\.5' is not a node of efficientnet_lite0"):
        finetune(source=str(small_hymenoptera), strategy=4, unfreeze_from="blokcs.5",
                 out=str(tmp_path / "run"), progress=False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--strategy", "4", "--unfreeze-from", "blokcs.5"], "is not a node of efficientnet_lite0"),
        (["--head", "0"], "--head sizes must be positive integers"),
        (["--epochs", "0"], "--epochs must be at least 1; got 0."),
    ],
)
def test_cli_bad_options_give_one_line_and_exit_code_2(
    small_hymenoptera: Path, tmp_path: Path, runner, arguments: list[str], message: str
) -> None:
    result = runner.invoke(main, ["finetune", str(small_hymenoptera), "-q", "--out",
                                  str(tmp_path / "run"), *arguments])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]


@pytest.mark.gpu
def test_strategy4_on_cuda_with_mixed_precision(small_hymenoptera: Path, tmp_path: Path) -> None:
    result = finetune(source=str(small_hymenoptera), strategy=4, epochs=1, device="cuda",
                      out=str(tmp_path / "run"), progress=False)
    meta = json.loads((result.run_dir / "finetune.json").read_text())
    assert meta["amp"] is True and meta["device"].startswith("cuda")
    assert 0 <= result.val_accuracy <= 1


def test_carve_validation_is_stratified_seeded_and_independent_of_order() -> None:
    paths = [f"train/{name}/{i:02d}.jpg" for name in ("ants", "bees", "wasp") for i in range(10)]
    labels = [0] * 10 + [1] * 10 + [2] * 10
    held_out = carve_validation(paths, labels, 0.2, seed=0)
    assert held_out == sorted(held_out) and len(held_out) == 6
    assert [sum(p.split("/")[1] == name for p in held_out) for name in ("ants", "bees", "wasp")] == [2, 2, 2]
    # keyed by path: any order and any subset that keeps a class's paths gives the same share
    assert carve_validation(paths[::-1], labels[::-1], 0.2, seed=0) == held_out
    assert carve_validation(paths[:10], labels[:10], 0.2, seed=0) == held_out[:2]
    assert carve_validation(paths, labels, 0.2, seed=1) != held_out
    assert carve_validation(["a.jpg", "b.jpg", "c.jpg"], [0, 0, 1], 0.2, seed=0) in (["a.jpg"], ["b.jpg"])
    with pytest.raises(CnnCodesError, match=r"val_fraction must be in \(0, 1\); got 0"):
        carve_validation(paths, labels, 0, seed=0)


def _train_test_folders(root: Path) -> tuple[Path, Path]:
    """Two train/test-only sources with the same training images and the same test images
    under swapped labels: what is chosen on val must not tell them apart."""
    first = write_image_folder(root / "a", per_class=5, split="train", size=32)
    write_image_folder(first, per_class=2, split="test", size=32)
    second = write_image_folder(root / "b", per_class=5, split="train", size=32)
    write_image_folder(second, per_class=2, split="test", size=32)
    (second / "test" / "cats").rename(second / "test" / "swap")
    (second / "test" / "dogs").rename(second / "test" / "cats")
    (second / "test" / "swap").rename(second / "test" / "dogs")
    return first, second


def test_train_and_test_only_holds_validation_out_of_train_and_never_chooses_on_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _train_test_folders(tmp_path)
    monkeypatch.chdir(tmp_path)
    runs = [finetune(source=str(folder), strategy=3, epochs=2, patience=0, augment=False,
                     lr=0.05, out=f"run-{folder.name}", progress=False)
            for folder in (first, second)]
    validation = runs[0].validation
    assert validation["origin"] == "carved from train" and validation["count"] == 2
    assert validation["fraction"] == 0.2 and validation["seed"] == 0
    assert all(path.startswith("train/") for path in validation["paths"])
    assert validation == runs[1].validation
    meta = json.loads((tmp_path / "run-a" / "finetune.json").read_text())
    assert meta["validation"] == validation and "val_paths" not in meta["config"]
    assert (meta["result"]["n_train"], meta["result"]["n_val"], meta["result"]["n_test"]) == (8, 2, 4)
    # swapped test labels: the same epochs, scores and best epoch; only the test score moves
    assert [r.val_loss for r in runs[0].history] == [r.val_loss for r in runs[1].history]
    assert runs[0].best_epoch == runs[1].best_epoch
    assert runs[1].test_accuracy == pytest.approx(1 - runs[0].test_accuracy)


def test_given_val_paths_must_be_readable_training_images(tmp_path: Path, capsys) -> None:
    folder = write_image_folder(tmp_path / "flat", per_class=3, size=32)
    result = finetune(source=str(folder), epochs=1, val_paths=["cats/cats_0.jpg", "dogs/dogs_2.jpg"],
                      out=str(tmp_path / "run"), progress=True)
    captured = capsys.readouterr()  # stderr is no terminal here: one line per stage and epoch
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert [line.split("]")[0] + "]" for line in lines] == [
        "[decode train]", "[decode val]", "[decode test]", "[finetune]", "[strategy 3 epoch 1/1]"]
    assert lines[3] == "[finetune] strategy 3: 4 training, 2 validation (given), 0 test images"
    assert re.fullmatch(r"\[strategy 3 epoch 1/1\] 1/1 step in .*, val_loss \d\.\d{3}, "
                        r"val_acc \d\.\d{3}", lines[4])
    assert result.validation["origin"] == "given"
    assert result.validation["paths"] == ["cats/cats_0.jpg", "dogs/dogs_2.jpg"]
    with pytest.raises(CnnCodesError, match=r"1 of the 2 val_paths are not readable training "
                       r"images of .* \(first: 'cats/nope\.jpg'\)"):
        finetune(source=str(folder), epochs=1, val_paths=["cats/nope.jpg", "dogs/dogs_2.jpg"],
                 out=str(tmp_path / "run2"), progress=False)
