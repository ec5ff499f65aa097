"""End to end through the real CLI, from an unrelated working directory, on data shaped like
a user's: the built-in digits, real digit PNGs in folders and CSV manifests (relative,
absolute, --root, BOM + CRLF), damaged files. stdout is parsed as data every time."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cnncodes.cli import main
from tests.conftest import write_digits_folder

CLI = [sys.executable, "-m", "cnncodes.cli"]


def run_cli(*args: str, code: int = 0) -> CliRunner:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def error_line(stderr: str) -> str:
    """The one ``Error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("Error:")]
    return line


def one_path(stdout: str) -> Path:
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    path = Path(lines[0])
    assert path.is_file(), path
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory that is neither the repository nor beside the data."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    return work


def test_builtin_digits_source_is_real_and_split() -> None:
    from cnncodes import open_source

    source = open_source("sklearn:digits")
    splits = pd.Series([it.split for it in source.items]).value_counts().to_dict()
    assert splits == {"train": 1347, "test": 450}
    assert source.classes == [str(d) for d in range(10)]
    image, reason = source.read(source.items[0])
    assert reason == "" and image.mode == "RGB" and image.size == (8, 8)
    assert open_source("sklearn:digits").fingerprint == source.fingerprint
    test_labels = pd.Series([it.label for it in source.items if it.split == "test"])
    assert test_labels.value_counts().min() >= 17  # stratified: every digit in test


def test_unknown_builtin_is_one_line(elsewhere: Path) -> None:
    result = run_cli("extract", "sklearn:nope", code=2)
    assert result.stderr.count("\n") == 1 and "sklearn:digits" in result.stderr


def test_digits_extract_fit_predict_report(elsewhere: Path, digits_store: Path) -> None:
    """The README's first command on the embedded data set, each stdout parsed."""
    extract = run_cli("extract", "sklearn:digits", "--limit", "300", "--out", str(digits_store))
    assert one_path(extract.stdout) == digits_store  # a cache hit, path alone on stdout
    assert "cache hit" in extract.stderr

    fit = run_cli("fit", str(digits_store), "--clf", "logreg", "--format", "json",
                  "--cv", "3", "--out", "runs/digits")
    (row,) = json.loads(fit.stdout)
    assert row["selected_on"] == "3-fold CV" and row["n_train"] == 300
    # 300 training digits, 300 test digits; measured 0.85 (chance is 0.10).
    assert row["test_accuracy"] > 0.75
    assert "saved" in fit.stderr

    predictions = run_cli("predict", "runs/digits", str(digits_store), "--format", "csv")
    frame = pd.read_csv(io.StringIO(predictions.stdout))
    assert len(frame) == 600 and {"path", "label", "predicted"} <= set(frame.columns)
    as_json = pd.DataFrame(json.loads(run_cli("predict", "runs/digits", str(digits_store),
                                              "--format", "json").stdout))
    assert as_json["predicted"].tolist() == frame["predicted"].astype(str).tolist()

    report = run_cli("report", "runs/digits", "--format", "csv", "--per-class")
    table = pd.read_csv(io.StringIO(report.stdout))
    assert set(table["table"]) == {"runs", "per_class"}
    assert len(table[table["table"] == "per_class"]) == 10
    nested = json.loads(run_cli("report", "runs/digits", "--format", "json",
                                "--confusion").stdout)
    assert set(nested) == {"runs", "confusion"}

    info = json.loads(run_cli("info", str(digits_store), "--format", "json").stdout)
    assert info["split"] == {"train": 300, "test": 300} and info["layers"][0]["dim"] == 1280


def test_csv_manifests_as_users_write_them(elsewhere: Path, tmp_path: Path) -> None:
    """Relative to the manifest's folder, absolute, relative to --root, and Excel's
    UTF-8 BOM + CRLF with quoted names holding commas: all give the same codes."""
    data = write_digits_folder(tmp_path / "data", per_class=4, classes=(3, 8))
    files = sorted(data.rglob("*.png"))
    renamed = []
    for i, path in enumerate(files):  # a comma in a file name forces CSV quoting
        target = path.with_name(f"img, {i}.png") if i % 3 == 0 else path
        path.rename(target)
        renamed.append(target)
    rows = [(p, p.parent.name, p.parent.parent.name.upper()) for p in renamed]

    def write(path: Path, make_path, **options) -> Path:
        frame = pd.DataFrame([(make_path(p), label, split) for p, label, split in rows],
                             columns=["path", "label", "split"])
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False, **options)
        return path

    manifests = {
        "relative": write(data / "lists" / "rel.csv", lambda p: os.path.relpath(p, data / "lists")),
        "absolute": write(tmp_path / "abs.csv", lambda p: str(p)),
        "excel": write(data / "excel.csv", lambda p: p.relative_to(data).as_posix(),
                       encoding="utf-8-sig", lineterminator="\r\n"),
    }
    root_manifest = write(tmp_path / "elsewhere" / "root.csv", lambda p: p.relative_to(data).as_posix())
    codes = {}
    for name, manifest in manifests.items():
        out = one_path(run_cli("extract", str(manifest), "-q", "--out", f"{name}.h5").stdout)
        with h5py.File(out) as store:
            assert len(store["labels"]) == len(rows), name
            assert list(store["skipped/path"]) == []
            codes[name] = store["codes"][next(iter(store["codes"]))][:]
    out = one_path(run_cli("extract", str(root_manifest), "--root", str(data), "-q",
                           "--out", "root.h5").stdout)
    with h5py.File(out) as store:
        codes["root"] = store["codes"][next(iter(store["codes"]))][:]
        assert sorted(set(store["split"].asstr()[:])) == ["test", "train"]
    reference = codes["relative"]
    for name, array in codes.items():
        assert array.shape == reference.shape and abs(array - reference).max() < 1e-5, name
    fit = run_cli("fit", "excel.h5", "--format", "csv", "--cv", "2", "--out", "runs/excel")
    assert pd.read_csv(io.StringIO(fit.stdout))["n_train"].item() == 8


def test_manifest_of_missing_files_is_an_error(elsewhere: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "gone.csv"
    manifest.write_text("path,label\nnope/a.png,x\nnope/b.png,y\n")
    result = run_cli("extract", str(manifest), code=2)
    assert result.stderr.startswith("Error:") and result.stderr.count("\n") == 1
    assert "gone.csv" in result.stderr
    assert not list(Path(os.environ["CNNCODES_CACHE"]).glob("*.h5"))


def test_damaged_files_are_listed_good_ones_kept(elsewhere: Path, tmp_path: Path) -> None:
    data = write_digits_folder(tmp_path / "messy", per_class=3, classes=(1, 7), splits=("",))
    good = sorted((data / "1").glob("*.png"))[0]
    (data / "1" / "truncated.png").write_bytes(good.read_bytes()[:40])
    (data / "1" / "empty.jpg").write_bytes(b"")
    (data / "7" / "notes.jpg").write_text("not an image")
    (data / "7" / "link.png").symlink_to(data / "7" / "missing.png")
    result = run_cli("extract", str(data), "--out", "messy.h5")
    one_path(result.stdout)
    for name in ("truncated.png", "empty.jpg", "notes.jpg", "link.png"):
        assert name in result.stderr
    with h5py.File("messy.h5") as store:
        assert len(store["labels"]) == 6
        skipped = set(store["skipped/path"].asstr()[:])
    assert {"1/truncated.png", "1/empty.jpg", "7/notes.jpg", "7/link.png"} <= skipped


def test_all_unreadable_is_an_error_and_leaves_no_store(elsewhere: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad" / "cats"
    data.mkdir(parents=True)
    for i in range(3):
        (data / f"{i}.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run_cli("extract", str(data.parent), "--out", "bad.h5", code=2)
    error = error_line(result.stderr)
    assert "none of its 3 files" in error and "unreadable image" in error
    assert not Path("bad.h5").exists() and not Path("bad.h5.parts").exists()
    for i in range(3):  # once the files are fixed, the same command works
        (data / f"{i}.jpg").unlink()
    write_digits_folder(data.parent, per_class=2, classes=(3,), splits=("",))
    one_path(run_cli("extract", str(data.parent), "--out", "bad.h5").stdout)


@pytest.mark.parametrize("out, problem", [
    ("/proc/codes.h5", "special file system"),
    ("afile/codes.h5", "is a file, not a folder"),
    ("adir", "is a folder"),
])
def test_bad_out_is_refused_before_any_work(elsewhere: Path, tmp_path: Path, out: str,
                                            problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Path("afile").write_text("x")
    Path("adir").mkdir()
    data = write_digits_folder(tmp_path / "d", per_class=1, classes=(0,), splits=("",))
    extract_module = importlib.import_module("cnncodes.extraction.extract")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(extract_module, "load_backbone", no_model)
    result = run_cli("extract", str(data), "--out", out, code=2)
    assert problem in result.stderr and result.stderr.count("\n") == 1


def test_unwritable_out_is_refused(elsewhere: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, which writes anywhere; the permission answer is what we control.
    Path("locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p).name == "locked"
                        else real_access(p, mode))
    result = run_cli("extract", "sklearn:digits", "--out", "locked/x.h5", code=2)
    assert "no write permission" in result.stderr


def test_disk_full_mid_run_is_one_line_and_resumes(elsewhere: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from cnncodes.data.store import PartWriter

    data = write_digits_folder(tmp_path / "d", per_class=4, classes=(2, 5), splits=("",))
    real_write, calls = PartWriter.write, []

    def full_disk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "part"))
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(PartWriter, "write", full_disk)
    result = run_cli("extract", str(data), "--out", "d.h5", "--part-size", "3", "-b", "3", code=1)
    assert "No space left on device" in error_line(result.stderr)
    assert not Path("d.h5").exists() and len(list(Path("d.h5.parts").glob("part-*.h5"))) == 1
    monkeypatch.setattr(PartWriter, "write", real_write)
    again = run_cli("extract", str(data), "--out", "d.h5", "--part-size", "3", "-b", "3")
    assert "resumed with 3 images already done" in again.stderr
    with h5py.File(one_path(again.stdout)) as store:
        assert len(store["labels"]) == 8


def test_progress_in_a_log_is_lines_not_carriage_returns(elsewhere: Path, tmp_path: Path) -> None:
    data = write_digits_folder(tmp_path / "d", per_class=2, classes=(4,), splits=("",))
    result = run_cli("extract", str(data), "--out", "p.h5")
    assert "\r" not in result.stderr
    assert "[extract efficientnet_lite0] 2/2 img" in result.stderr


def test_second_run_on_same_out_waits_then_reuses(elsewhere: Path, tmp_path: Path) -> None:
    """A lock held on the target (as by a running extraction) makes a second run wait,
    say so on stderr, and then finish; it never crashes or corrupts the store."""
    from filelock import FileLock

    data = write_digits_folder(tmp_path / "d", per_class=2, classes=(6, 9), splits=("",))
    out = tmp_path / "shared.h5"
    lock = FileLock(str(out) + ".lock")
    lock.acquire()
    process = subprocess.Popen(
        [*CLI, "extract", str(data), "--out", str(out)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 600  # a bound for a loaded machine, not a timing claim
    while not any("waiting" in line for line in lines) and time.monotonic() < deadline:
        assert process.poll() is None, "".join(lines)
        time.sleep(0.2)
    assert any("another cnncodes run is writing" in line for line in lines), lines
    assert not out.exists()
    lock.release()
    stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=10)
    assert process.returncode == 0, lines
    assert Path(stdout.strip()) == out and out.is_file()


@pytest.mark.slow
def test_readme_quick_start_from_a_fresh_folder(tmp_path: Path) -> None:
    """The README's first command (after its venv set-up) in an empty folder, for real."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("python3 -m venv .venv && ")
                and "sklearn:digits" in x)
    commands = line.split(" && ")[2:]  # skip venv creation and pip install
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CNNCODES_CACHE", None)
    for command in commands:
        command = command.replace(".venv/bin/", "")
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    runs = [p.parent for p in tmp_path.glob("runs/*/metadata.json")]
    report = subprocess.run([*CLI, "report", *map(str, runs), "--format", "json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, check=True)
    (row,) = json.loads(report.stdout)
    assert row["n_train"] == 1347 and row["test_accuracy"] > 0.9  # measured 0.96


@pytest.mark.parametrize("args", [
    ["fit", "missing.h5", "--out", "/proc/run"],
    ["finetune", "sklearn:digits", "--out", "/proc/run"],
    ["compare", "sklearn:digits", "--out", "/sys/run"],
    ["sweep", "sklearn:digits", "--out", "/proc/sweep"],
    ["predict", "runs/x", "sklearn:digits", "--out", "/dev/preds.csv"],
    ["report", "runs/x", "--out", "/proc/report.md"],
    ["explain", "filters", "--out", "/proc/explain"],
])
def test_every_out_is_checked_first(elsewhere: Path, args: list[str]) -> None:
    result = run_cli(*args, code=2)
    assert "special file system" in error_line(result.stderr)


def test_bad_input_corpus_end_to_end(elsewhere: Path, tmp_path: Path, digits_store: Path) -> None:
    """The 20+ kinds of bad and odd files of test_bad_inputs through the real CLI: no
    traceback, every bad file listed with its reason on stderr and in /skipped, every good
    file a row of the store, and predict gives one row per good file, non-UTF-8 name too."""
    from cnncodes.data.sources import display_path
    from tests.test_bad_inputs import EXPECTED_SKIPS, GOOD, _write_corpus

    tree = _write_corpus(tmp_path / "corpus")
    result = run_cli("extract", str(tree), "--out", "corpus.h5")
    assert "Traceback" not in result.stderr
    store_path = one_path(result.stdout)
    with h5py.File(store_path) as store:
        rows = set(store["paths"].asstr()[:])
        skipped = dict(zip(store["skipped/path"].asstr()[:], store["skipped/reason"].asstr()[:]))
    assert rows == {display_path(p) for p in GOOD}
    for path, reason in EXPECTED_SKIPS.items():
        if path == "cats/socket.jpg" and path not in skipped:
            continue  # the socket is only made where its path is short enough
        assert skipped[path].startswith(reason), (path, skipped.get(path))
        assert path in result.stderr
    # Any run of the same backbone and layer scores these images: one fitted on digits.
    run_cli("fit", str(digits_store), "--cv", "2", "--out", "runs/corpus", "-q")
    predicted = pd.read_csv(io.StringIO(run_cli("predict", "runs/corpus", str(tree)).stdout))
    assert set(predicted["path"]) == rows and "cats/caf\\xe9.jpg" in rows
    one = run_cli("predict", "runs/corpus", str(tree / "cats" / "good.jpg"), "--format", "json")
    (row,) = json.loads(one.stdout)
    assert row["path"] == "good.jpg" and row["predicted"] in [str(d) for d in range(10)]


def test_a_weights_download_keeps_stdout_clean(elsewhere: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.hub prints "Downloading: ..." on stdout; cnncodes moves it to stderr. Offline
    the download then fails with one line naming the file to put in the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = run_cli("layers", "resnet18", "--weights", "DEFAULT", code=2)
    assert result.stdout == ""
    assert "resnet18-f37072fd.pth" in error_line(result.stderr)


def test_knn_and_layer_indices_on_small_multi_layer_stores(elsewhere: Path, tmp_path: Path) -> None:
    """k-NN never asks for more neighbours than a fold holds, and an index (-2) finds its
    layer in a store that was extracted by node name."""
    data = write_digits_folder(tmp_path / "d", per_class=4, classes=(1, 7), splits=("",))
    store = one_path(run_cli("extract", str(data), "-q", "--layer", "blocks.6",
                             "--layer", "global_pool.flatten").stdout)
    fit = run_cli("fit", str(store), "--clf", "knn", "--cv", "2", "--layer", "-2",
                  "--format", "json", "--out", "runs/knn")
    (row,) = json.loads(fit.stdout)
    assert row["layer"] == "global_pool.flatten" and row["n_train"] == 8
    missing = run_cli("fit", str(store), "--layer", "-5", "--out", "runs/x", code=2)
    assert "does not hold" in error_line(missing.stderr) and not Path("runs/x").exists()


def _write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    import gzip

    from cnncodes.data.sources import IDX_FILES

    image_file, label_file = IDX_FILES[split]
    header = b"\0\0\x08\x03" + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    (folder / image_file).write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))
    header = b"\0\0\x08\x01" + len(labels).to_bytes(4, "big")
    (folder / label_file).write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes()))


def test_idx_folder_with_limit_extract_fit_predict(elsewhere: Path, tmp_path: Path) -> None:
    """MNIST-style idx files (real digits, written as Fashion-MNIST's files are) with
    --limit, through extract, fit and predict; a damaged idx file is one error line."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16)
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_idx(folder, "train", pixels[:200], digits.target[:200])
    _write_idx(folder, "test", pixels[200:300], digits.target[200:300])
    store = one_path(run_cli("extract", str(folder), "--limit", "30", "-q").stdout)
    with h5py.File(store) as codes:
        assert sorted(codes["split"].asstr()[:]).count("train") == 30
        assert len(set(codes["labels"][:])) == 10  # --limit takes every class in turn
    run_cli("fit", str(store), "--cv", "2", "--out", "runs/idx", "-q")
    frame = pd.read_csv(io.StringIO(run_cli("predict", "runs/idx", str(store)).stdout))
    assert len(frame) == 60 and set(frame["split"]) == {"train", "test"}
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    assert "is damaged" in error_line(run_cli("extract", str(folder), code=2).stderr)


@pytest.mark.slow
def test_compare_on_a_csv_manifest_with_train_and_test(elsewhere: Path, tmp_path: Path) -> None:
    """compare from a manifest (paths relative to it, a split column, no val) with the
    validation carved out of train; stdout is one JSON table of four strategies."""
    data = write_digits_folder(tmp_path / "imgs", per_class=10, classes=(0, 3, 8))
    rows = [(p.relative_to(tmp_path).as_posix(), p.parent.name, p.parent.parent.name)
            for p in sorted(data.rglob("*.png"))]
    manifest = tmp_path / "split.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
    result = run_cli("compare", str(manifest), "--epochs", "1", "--format", "json",
                     "--layer", "blocks.5")
    table = pd.DataFrame(json.loads(result.stdout))
    assert [s.split()[0] for s in table["strategy"]] == ["1", "2", "3", "4"]
    assert table["val_accuracy"].between(0, 1).all() and table["test_accuracy"].notna().all()
    assert "held out of the training images" in result.stderr


def test_finetune_sweep_explain_models_layers_stdout_parses(elsewhere: Path, tmp_path: Path) -> None:
    """The remaining commands' stdout, parsed as the data it claims to be."""
    data = write_digits_folder(tmp_path / "d", per_class=4, classes=(2, 9))
    tuned = run_cli("finetune", str(data), "--epochs", "1", "--format", "json",
                    "--out", "runs/ft")
    (row,) = json.loads(tuned.stdout)
    assert row["pipeline"] == "finetune strategy 3" and 0 <= row["val_accuracy"] <= 1
    assert 0 <= row["macro_f1"] <= 1  # from the held-out predictions on test
    per_class = json.loads(run_cli("report", "runs/ft", "--per-class", "--confusion",
                                   "--format", "json").stdout)
    assert [r["class"] for r in per_class["per_class"]] == ["2", "9"]
    assert sum(r["support"] for r in per_class["per_class"]) == 8  # the test digits
    store = one_path(run_cli("extract", str(data), "-q", "--layer", "-2",
                             "--layer", "blocks.5").stdout)
    swept = run_cli("sweep", str(store), "--cv", "2", "--format", "csv", "-q")
    table = pd.read_csv(io.StringIO(swept.stdout))
    assert len(table) == 2 and table["code_dim"].tolist() == [192, 1280]
    image = next(data.rglob("*.png"))
    pictures = run_cli("explain", "saliency", str(image), "--out", "pngs").stdout.split()
    assert len(pictures) == 1 and Path(pictures[0]).is_file()
    models = run_cli("models").stdout.splitlines()
    assert models[0].split()[:2] == ["model", "family"] and any("efficientnet_lite0" in m for m in models)
    layers = run_cli("layers", "efficientnet_lite0", "--weights", "none").stdout.splitlines()
    assert layers[0].split()[:3] == ["index", "-index", "node"] and len(layers) > 100


def test_a_closed_stdout_pipe_is_quiet(tmp_path: Path) -> None:
    """``cnncodes layers ... | head -1``: the reader leaves early; no error, no traceback."""
    done = subprocess.run(
        f"{sys.executable} -m cnncodes.cli layers efficientnet_lite0 --weights none | head -1",
        shell=True, capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert done.stdout.startswith(" index") and len(done.stdout.splitlines()) == 1
    assert "Error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
