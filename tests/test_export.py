"""A run as one torch module: equal to the scikit-learn pipeline, exported, served in memory.

Everything runs on real hymenoptera photos with the real Lite0 weights; the fit run is made
by the real CLI from another working directory (``hymenoptera_fit_run`` in conftest).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from cnncodes import CnnCodesError, CodeStore, load_model, load_predictor
from cnncodes.cli import main
from cnncodes.data.decode import decode_image
from cnncodes.probe.model import save_model
from cnncodes.probe.torch_probe import load_run_net
from tests.conftest import write_image_folder

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def codes(hymenoptera_fit_run: Path, hymenoptera: Path) -> dict[str, object]:
    """The fit run's store: train and val codes, labels, and the val photos' network inputs."""
    model = load_model(hymenoptera_fit_run)
    with CodeStore(hymenoptera_fit_run.parent / "codes.h5") as store:
        X, y = model.codes(store), np.asarray(store.labels)
        split = np.asarray(store.split).astype(str)
        paths = [hymenoptera / p for p in store.file_paths]
    net = load_run_net(hymenoptera_fit_run)
    val = np.flatnonzero(split == "val")
    images = torch.stack([net.backbone.transform(decode_image(paths[i])) for i in val])
    return {"X": X, "y": y, "train": np.flatnonzero(split == "train"), "val": val,
            "images": images, "paths": [paths[i] for i in val], "metadata": model.metadata}


def _variant(folder: Path, codes: dict, pipeline: Pipeline) -> Path:
    """A run folder holding ``pipeline`` fitted on the real train codes (the fit run's
    metadata: same backbone, layer, pooling)."""
    pipeline.fit(codes["X"][codes["train"]], codes["y"][codes["train"]])
    classifier = pipeline.steps[-1][1]
    if hasattr(classifier, "_loss_function_"):  # as fit --stream saves an SGDClassifier
        del classifier._loss_function_
    save_model(folder, pipeline, codes["metadata"])
    return folder


def _module_outputs(run: Path, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_run_net(run).scored()(images).double().numpy()


@pytest.mark.parametrize("name", ["cli-logreg", "scaler-logreg-C1", "l2-scaler-pca-whiten", "mlp",
                                  "linear_svm", "sgd-log"])
def test_module_equals_the_pipeline_on_real_codes(name: str, codes: dict, hymenoptera_fit_run: Path,
                                                  tmp_path: Path) -> None:
    from cnncodes.pipelines import linear_svm

    pipelines = {
        "scaler-logreg-C1": Pipeline([("scaler", StandardScaler()),
                                      ("classifier", LogisticRegression(C=1.0, max_iter=1000))]),
        "l2-scaler-pca-whiten": Pipeline([
            ("l2norm", Normalizer()), ("scaler", StandardScaler()),
            ("pca", PCA(8, whiten=True, random_state=0)),
            ("classifier", LogisticRegression(C=10.0, max_iter=1000))]),
        "mlp": Pipeline([("scaler", StandardScaler()),
                         ("classifier", MLPClassifier((16,), max_iter=300, random_state=0))]),
        "linear_svm": linear_svm.build(classifier__C=0.1),
        "sgd-log": Pipeline([("scaler", StandardScaler()),  # what fit --stream saves
                             ("classifier", SGDClassifier(loss="log_loss", alpha=1e-3, random_state=0))]),
    }
    run = hymenoptera_fit_run if name == "cli-logreg" else _variant(
        tmp_path / name, codes, pipelines[name])
    pipeline = load_model(run).pipeline
    X_val = codes["X"][codes["val"]]
    expected = (pipeline.predict_proba(X_val) if hasattr(pipeline, "predict_proba")
                else pipeline.decision_function(X_val).reshape(len(X_val), -1))
    got = _module_outputs(run, codes["images"])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    if name == "scaler-logreg-C1":  # a test of something: confident, varied probabilities
        assert expected[:, 1].std() > 0.2


def test_non_linear_pipelines_are_refused_in_one_line(codes: dict, tmp_path: Path) -> None:
    run = _variant(tmp_path / "knn", codes, Pipeline([("scaler", StandardScaler()),
                                                      ("classifier", KNeighborsClassifier(3))]))
    with pytest.raises(CnnCodesError, match=r"KNeighborsClassifier\) has no torch equivalent;.*"
                       r"use 'cnncodes predict'"):
        load_run_net(run)


@pytest.mark.parametrize("command", [["export", "{run}", "--out", "{out}/m.pt"],
                                     ["explain", "gradcam", "{image}", "--run", "{run}", "--out", "{out}"]])
def test_a_folder_that_is_no_run_is_a_one_line_error(command: list[str], codes: dict, runner,
                                                    tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    args = [a.format(run=tmp_path / "empty", image=codes["paths"][0], out=tmp_path / "out")
            for a in command]
    result = runner.invoke(main, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "empty' is not a run" in lines[0], result.output
    assert "'cnncodes fit'" in lines[0] and "'cnncodes finetune'" in lines[0]


def _cli(runner, args: list[str]):  # noqa: ANN202 - click's Result
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_cli_files_give_the_pipeline_probabilities(
        fmt: str, codes: dict, hymenoptera_fit_run: Path, runner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _cli(runner, ["export", str(hymenoptera_fit_run), "--format", fmt, "--out", f"probe.{fmt}"])
    written = Path(result.stdout.strip())
    assert written.resolve() == (tmp_path / f"probe.{fmt}").resolve()
    info = json.loads(Path(f"{written}.json").read_text())
    assert info["classes"] == ["ants", "bees"] and info["outputs"] == ["proba_ants", "proba_bees"]
    assert info["preprocessing"]["crop_size"] == [224]
    images = codes["images"][:5]  # another batch size than the trace's 2
    if fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(written))(images).double().numpy()
    else:
        onnxruntime = pytest.importorskip("onnxruntime", reason="needs cnncodes[export]")
        session = onnxruntime.InferenceSession(str(written), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": images.numpy()})[0]
    expected = load_model(hymenoptera_fit_run).pipeline.predict_proba(codes["X"][codes["val"][:5]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)


def test_onnx_without_the_extra_names_it_in_one_line(hymenoptera_fit_run: Path, runner, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    result = runner.invoke(main, ["export", str(hymenoptera_fit_run), "--format", "onnx",
                                  "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "pip install 'cnncodes[export]'" in lines[0], result.output
    assert not (tmp_path / "m.onnx").exists()


def test_a_fine_tuned_run_exports_its_softmax(tiny_folder: Path, runner, tmp_path: Path) -> None:
    from cnncodes import finetune, predict_run

    run = finetune(source=str(tiny_folder), strategy=3, model="resnet18", weights="none",
                   epochs=1, batch_size=4, out=str(tmp_path / "run"), progress=False).run_dir
    out = tmp_path / "finetuned.pt"
    _cli(runner, ["export", str(run), "--out", str(out)])
    frame = predict_run(run, tiny_folder)
    net = load_run_net(run)
    images = torch.stack([net.backbone.transform(decode_image(tiny_folder / p)) for p in frame["path"]])
    with torch.no_grad():
        got = torch.jit.load(str(out))(images).numpy()
    np.testing.assert_allclose(got, frame[["proba_cats", "proba_dogs"]].to_numpy(), atol=TOLERANCE)


def test_predictor_in_memory_equals_the_predict_command(
        codes: dict, hymenoptera_fit_run: Path, runner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "new"
    for path in codes["paths"][:6]:
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.parent.name / path.name)
    monkeypatch.chdir(tmp_path)
    printed = _cli(runner, ["predict", str(hymenoptera_fit_run), "new", "--quiet"]).stdout
    expected = pd.read_csv(io.StringIO(printed)).sort_values("path").reset_index(drop=True)
    files = [folder / p for p in expected["path"]]
    before = sorted(tmp_path.rglob("*"))
    predictor = load_predictor(hymenoptera_fit_run)
    pil = [Image.open(f) for f in files]
    arrays = [np.asarray(image.convert("RGB")) for image in pil]
    for given in (pil, arrays, files):
        frame = predictor.predict(given)
        assert list(frame.columns) == ["predicted", "proba_ants", "proba_bees"]
        assert frame["predicted"].tolist() == expected["predicted"].tolist()
        np.testing.assert_allclose(frame[["proba_ants", "proba_bees"]], expected[["proba_ants", "proba_bees"]],
                                   atol=TOLERANCE)
    np.testing.assert_allclose(predictor.predict_proba(arrays[0]), expected.iloc[:1, -2:], atol=TOLERANCE)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_predictor_refuses_what_is_not_an_image(hymenoptera_fit_run: Path, tmp_path: Path) -> None:
    predictor = load_predictor(hymenoptera_fit_run)
    with pytest.raises(CnnCodesError, match=r"must be uint8 H x W x C .* got float64 \(4, 4, 3\)"):
        predictor.predict([np.zeros((4, 4, 3))])
    broken = write_image_folder(tmp_path / "bad", per_class=1) / "cats" / "cats_0.jpg"
    broken.write_text("not a picture")
    with pytest.raises(CnnCodesError, match=r"cats_0\.jpg' cannot be read"):
        predictor.predict(broken)


def test_predictor_decodes_pil_images_as_files_are_decoded(
        codes: dict, hymenoptera_fit_run: Path, runner, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Transparency, 16-bit pixels and a 6:1 panorama: a PIL image handed to the predictor
    gives what ``cnncodes predict`` gives for the same file (white background, 8-bit
    scaling, the aspect cap), not what PIL's own convert("RGB") would give."""
    photo = Image.open(codes["paths"][0]).convert("RGB").resize((300, 200))
    folder = tmp_path / "odd" / "ants"
    folder.mkdir(parents=True)
    rgba = photo.convert("RGBA")
    alpha = np.full((200, 300), 255, dtype=np.uint8)
    alpha[:, :150] = 0  # left half transparent: black under convert("RGB"), white as decoded
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "a_transparent.png")
    grey16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "b_grey16.png")
    photo.resize((1200, 200)).save(folder / "c_panorama.png")
    monkeypatch.chdir(tmp_path)
    printed = _cli(runner, ["predict", str(hymenoptera_fit_run), "odd", "--quiet"]).stdout
    expected = pd.read_csv(io.StringIO(printed)).sort_values("path").reset_index(drop=True)
    pil = [Image.open(tmp_path / "odd" / p) for p in expected["path"]]
    assert [image.mode for image in pil] == ["RGBA", "I;16", "RGB"]
    got = load_predictor(hymenoptera_fit_run).predict(pil)
    np.testing.assert_allclose(got[["proba_ants", "proba_bees"]], expected[["proba_ants", "proba_bees"]],
                               atol=TOLERANCE)
