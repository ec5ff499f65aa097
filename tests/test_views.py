"""Augmented codes: extract --views, view-aware fit (no leakage across folds), predict --tta.

Real Lite0 codes of real hymenoptera photos, small subsets, stores read back with h5py.
"""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier

from cnncodes import CnnCodesError, CodeStore, extract, fit_pipeline
from cnncodes.cli import main
from cnncodes.data.splits import carve_validation
from cnncodes.data.store import PartWriter, seal_store
from cnncodes.probe.fit import cv_folds

PER_CLASS = {"train": 5, "val": 3}


@pytest.fixture(scope="module")
def photos(hymenoptera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/val of ants and bees: 10 + 6 real photos."""
    root = tmp_path_factory.mktemp("photos")
    for split, count in PER_CLASS.items():
        for label in ("ants", "bees"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for photo in sorted((hymenoptera / split / label).glob("*.jpg"))[:count]:
                (folder / photo.name).write_bytes(photo.read_bytes())
    return root


@pytest.fixture(scope="module")
def views_store(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("views") / "views.h5"
    return extract(source=str(photos), views=2, part_size=4, batch_size=4, out=str(out),
                   progress=False).path


def test_views_are_rows_after_their_training_image(runner, photos: Path, views_store: Path,
                                                   tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with h5py.File(views_store) as store:
        view, source = store["view"][:], store["source_index"][:]
        paths, split = store["paths"].asstr()[:], store["split"].asstr()[:]
        codes = store["codes/global_pool.flatten"][:]
        settings = json.loads(store.attrs["views"])
    assert len(view) == 10 * 3 + 6  # every training photo thrice, every val photo once
    assert set(split[view > 0]) == {"train"} and (view[split == "val"] == 0).all()
    for image in np.unique(source):
        rows = np.flatnonzero(source == image)
        assert len(set(paths[rows])) == 1 and view[rows].tolist() == list(range(len(rows)))
        if len(rows) > 1:  # a view is another picture of the same photo: other codes
            assert not np.allclose(codes[rows[0]], codes[rows[1]], atol=1e-3)
    assert settings["count"] == 2 and "random-resized-crop" in settings["augment"]
    # The images' own rows are the codes a store without views holds.
    result = runner.invoke(main, ["extract", str(photos), "--out", "plain.h5", "-q"])
    assert result.exit_code == 0, result.output
    with CodeStore(tmp_path / "plain.h5") as plain, CodeStore(views_store) as viewed:
        assert "view" not in h5py.File(tmp_path / "plain.h5") and plain.view_settings is None
        assert plain.attrs["store_key"] != viewed.attrs["store_key"]
        assert plain.paths == [p for p, v in zip(viewed.paths, view) if v == 0]
        np.testing.assert_allclose(plain.codes(), viewed.codes()[view == 0], atol=1e-4, rtol=0)
    # A store with views never answers a request without them, and the other way round.
    refused = runner.invoke(main, ["extract", str(photos), "--out", "plain.h5", "--views", "2"])
    assert refused.exit_code == 2 and "already exists and holds other codes" in refused.output
    info = runner.invoke(main, ["info", str(views_store), "--format", "json"])
    summary = json.loads(info.stdout)
    assert summary["views"]["augmented_rows"] == 20 and summary["views"]["images"] == 16
    assert summary["split"] == {"train": 10, "val": 6}  # images, not rows
    text = runner.invoke(main, ["info", str(views_store)]).stdout
    assert "views: 2 per image" in text and "20 augmented rows of 16 images" in text


def test_a_view_store_is_format_3_that_a_version_2_reader_refuses(views_store: Path,
                                                                  tmp_path: Path) -> None:
    """A cnncodes that reads only format 2 would take view rows for images; a view store
    is format 3, and a store claiming 2 while holding /view is refused as corrupted."""
    with h5py.File(views_store) as handle:
        assert handle.attrs["format_version"] == 3
    claims_two = tmp_path / "claims-two.h5"
    shutil.copy(views_store, claims_two)
    with h5py.File(claims_two, "r+") as handle:
        handle.attrs["format_version"] = 2
    with pytest.raises(CnnCodesError, match=r"corrupted \(format_version 2 cannot hold /view\)"):
        CodeStore(claims_two)


def test_a_view_depends_on_seed_image_and_view_only(photos: Path) -> None:
    from cnncodes.data.preprocess import split_preprocessing
    from cnncodes.data.sources import open_source
    from cnncodes.extraction.views import ViewPlan, view_dataset, view_rows
    from cnncodes.nets.backbones import load_backbone

    source = open_source(photos)
    preprocessing = split_preprocessing(load_backbone("efficientnet_lite0", "DEFAULT").transform)

    def pixels(seed: int, rows: list[int], threads: int) -> dict[int, np.ndarray]:
        plan = ViewPlan(2, seed)
        dataset = view_dataset(source, rows, *view_rows(source.items, plan), preprocessing,
                               224, plan, threads)
        return {row: image.numpy() for row, image, _ in dataset.__getitems__(list(range(len(rows))))}

    every = list(range(36))
    whole = pixels(0, every, 1)
    # Another order, another batch, other threads (a torchrun rank, a resumed run): same views.
    alone = pixels(0, every[::-7], 2)
    assert all(np.array_equal(alone[row], whole[row]) for row in alone)
    assert whole[1].shape == whole[0].shape == (224, 224, 3)
    assert not np.array_equal(whole[1], whole[2])
    other = pixels(1, [1, 2], 1)
    assert not np.array_equal(other[1], whole[1]) and not np.array_equal(other[2], whole[2])


def test_a_resumed_run_stores_the_one_shot_views(photos: Path, views_store: Path,
                                                 tmp_path: Path, monkeypatch) -> None:
    write, written = PartWriter.write, []

    def interrupted(self, *args, **kwargs):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(args[0])
        return write(self, *args, **kwargs)

    out = tmp_path / "resumed.h5"
    monkeypatch.setattr(PartWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(source=str(photos), views=2, part_size=4, batch_size=4, out=str(out),
                progress=False)
    monkeypatch.setattr(PartWriter, "write", write)
    # The rest decoded in a DataLoader worker process (as on a GPU): the same views.
    result = extract(source=str(photos), views=2, part_size=4, batch_size=4, out=str(out),
                     progress=False, workers=1)
    assert result.resumed_from == 12 and result.n_views == 20
    with h5py.File(out) as got, h5py.File(views_store) as want:
        for key in ("codes/global_pool.flatten", "view", "source_index", "paths"):
            assert np.array_equal(got[key][:], want[key][:]), key  # byte for byte


def _shuffled_labels(store_path: Path, seed: int) -> np.ndarray:
    """Give every source image a random class (all its views the same): nothing to learn."""
    with h5py.File(store_path, "r+") as handle:
        groups = handle["source_index"][:]
        per_image = np.random.default_rng(seed).permutation(np.arange(groups.max() + 1) % 2)
        handle["labels"][:] = per_image[groups]
        seal_store(handle)
        return handle["labels"][:]


def test_cv_never_trains_on_views_of_a_scored_image(hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "train-views.h5"
    extract(source=str(hymenoptera / "train"), limit=60, views=2, out=str(out), progress=False)
    labels = _shuffled_labels(out, seed=0)
    one_nn = tmp_path / "one_nn.py"
    one_nn.write_text(
        "from sklearn.neighbors import KNeighborsClassifier\n"
        "from sklearn.pipeline import make_pipeline\n"
        "search_space = {}\n"
        "def build(**params):\n"
        "    return make_pipeline(KNeighborsClassifier(n_neighbors=1))\n")
    with CodeStore(out) as store:
        codes, groups, views = store.codes(), store.groups, store.views
    # Plain stratified folds over rows: a photo's own views sit in training and a
    # memorising 1-NN "predicts" its random label from them.
    leaky = cross_val_predict(KNeighborsClassifier(1), codes, labels,
                              cv=StratifiedKFold(5, shuffle=True, random_state=0))
    assert np.mean(leaky[views == 0] == labels[views == 0]) > 0.8
    fitted = fit_pipeline(out, clf=str(one_nn), out=tmp_path / "run", progress=False)
    assert fitted.metrics["cv_accuracy"] < 0.7  # chance (0.5) on 60 images, not memory
    for train, held in cv_folds(labels, groups, views, np.arange(len(labels)), 5, 0):
        assert not set(groups[train]) & set(groups[held]) and (views[held] == 0).all()
    scored = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(scored) == 60 and scored["path"].is_unique


def test_a_held_out_image_takes_its_views_out_of_training(views_store: Path,
                                                          tmp_path: Path) -> None:
    with CodeStore(views_store) as store:
        train = store.split == "train"
        paths = np.asarray(store.paths, dtype=object)[train]
        labels = store.labels[train]
    held = carve_validation(paths.tolist(), labels.tolist(), 0.4, seed=0)
    once = sorted(set(paths.tolist()))
    assert held == carve_validation(once, [labels[paths.tolist().index(p)] for p in once], 0.4, 0)
    assert len(held) == 4  # 40 % of 5 images per class, not of 15 rows
    # fit on the training images only (the val split dropped) with the carve-out as val
    only_train = tmp_path / "train-only.h5"
    with h5py.File(views_store) as source, h5py.File(only_train, "w") as target:
        keep = source["split"].asstr()[:] == "train"
        for key in ("labels", "paths", "paths_raw", "source_index", "view",
                    "codes/global_pool.flatten"):
            target.create_dataset(key, data=source[key][:][keep])
        for key in ("classes", "skipped/path", "skipped/reason", "skipped/path_raw"):
            target.create_dataset(key, data=source[key][:])
        target.attrs.update(source.attrs)
        seal_store(target)
    fitted = fit_pipeline(only_train, val_paths=held, out=tmp_path / "run", progress=False)
    assert fitted.metrics["n_val"] == 4
    # counts are of images (10 - 4 held out), the rows fitted on are images x 3 views
    assert fitted.metrics["n_train"] == 6 and fitted.metrics["n_train_rows"] == 30 - 12
    assert fitted.metadata["validation"]["count"] == 4
    assert fitted.metadata["views"]["count"] == 2


@pytest.mark.parametrize("where", [[], ["--scheduler", "tcp://127.0.0.1:9"]],
                         ids=["here", "dask"])
def test_streamed_fit_refuses_views(runner, views_store: Path, tmp_path: Path,
                                    where: list[str]) -> None:
    result = runner.invoke(main, ["fit", str(views_store), "--stream", *where,
                                  "-o", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "holds augmented views" in result.output


def test_predict_tta_averages_seeded_views(runner, photos: Path, views_store: Path,
                                           tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = fit_pipeline(views_store, out=tmp_path / "run", progress=False).run_dir
    val = photos / "val"

    def tta(*options: str) -> pd.DataFrame:
        result = runner.invoke(main, ["predict", str(run), str(val), "-q", *options])
        assert result.exit_code == 0, result.output
        return pd.read_csv(StringIO(result.stdout))

    plain, twice, again = tta(), tta("--tta", "3"), tta("--tta", "3")
    assert list(twice.columns) == list(plain.columns) == ["path", "label", "predicted",
                                                          "proba_ants", "proba_bees"]
    assert len(twice) == 6 and twice["path"].tolist() == plain["path"].tolist()
    np.testing.assert_allclose(twice[["proba_ants", "proba_bees"]].sum(axis=1), 1, rtol=1e-6)
    pd.testing.assert_frame_equal(twice, again)  # deterministic for a seed
    assert not np.allclose(twice["proba_ants"], plain["proba_ants"], atol=1e-4)
    assert not np.allclose(tta("--tta", "3", "--seed", "1")["proba_ants"], twice["proba_ants"],
                           atol=1e-6)
    chosen = np.where(twice["proba_ants"] > twice["proba_bees"], "ants", "bees")
    assert (twice["predicted"] == chosen).all()
    stored = runner.invoke(main, ["predict", str(run), str(views_store), "-q"])
    from_store = pd.read_csv(StringIO(stored.stdout))
    assert len(from_store) == 16 and from_store["path"].is_unique  # images, not their views
    refused = runner.invoke(main, ["predict", str(run), str(views_store), "--tta", "2"])
    assert refused.exit_code == 2 and "is a code store" in refused.output
    with pytest.raises(CnnCodesError, match="tta must be 0"):
        from cnncodes.probe.predict import predict

        predict(run, val, tta=-1)


@pytest.mark.slow
def test_two_torchrun_ranks_store_the_single_process_views(photos: Path, views_store: Path,
                                                          tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "cnncodes", "extract", str(photos), "--views",
               "2", "--out", "ranks.h5", "--part-size", "4", "--batch-size", "4", "-q"]
    job = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr
    with h5py.File(tmp_path / "ranks.h5") as got, h5py.File(views_store) as want:
        for key in ("view", "source_index", "paths", "labels"):
            assert np.array_equal(got[key][:], want[key][:]), key
        assert got.attrs["store_key"] == want.attrs["store_key"]
        np.testing.assert_allclose(got["codes/global_pool.flatten"][:],
                                   want["codes/global_pool.flatten"][:], atol=1e-5, rtol=0)
