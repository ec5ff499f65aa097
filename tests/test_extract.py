"""Extraction end to end: real data, the store schema, cache hits, resume, bad images, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnncodes import CnnCodesError, CodeStore, extract
from cnncodes.cli import main
from tests.conftest import write_image_folder


def test_real_store_schema_and_contents(hymenoptera_store: Path) -> None:
    # Readable with plain h5py, without cnncodes.
    with h5py.File(hymenoptera_store, "r") as raw:
        assert set(raw) >= {"codes", "labels", "classes", "paths", "split", "skipped"}
        assert raw["codes/global_pool.flatten"].shape == (397, 1280)
        assert raw["codes/global_pool.flatten"].dtype == np.float32
        assert raw["codes/global_pool.flatten"].chunks[1] == 1280
        attrs = dict(raw.attrs)
        assert attrs["complete"] and attrs["backbone"] == "efficientnet_lite0"
        assert attrs["weights_sha256"].startswith("579344248a93e230")
        for key in ("cnncodes_version", "layer_specs", "layers", "pooling", "preprocessing",
                    "source_fingerprint", "weights", "store_key"):
            assert key in attrs
    with CodeStore(hymenoptera_store) as store:
        assert store.layers[0] == "global_pool.flatten"
        assert store.resolve("-2") == "global_pool.flatten"
        assert store.resolve("-5") == store.layers[1]
        assert store.classes == ["ants", "bees"]
        counts = {s: int((store.split == s).sum()) for s in ("train", "val")}
        assert counts == {"train": 244, "val": 153}
        X, y = store.load("-2", split="val")
        assert X.shape == (153, 1280) and np.isfinite(X).all() and X.std() > 0
        assert (y == 0).sum() == 70 and (y == 1).sum() == 83
        paths = store.paths
        assert len(set(paths)) == 397
        assert all(("/ants/" in p) == (label == 0) for p, label in zip(paths, store.labels))
        assert store.skipped == [
            ("train/ants/imageNotFound.gif", "not an image type cnncodes reads (.gif)")
        ]


def test_same_extraction_twice_is_a_cache_hit(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    first = extract(source=str(tiny_folder), model="resnet18", weights="none", progress=False)
    assert not first.cached and first.path.parent == tmp_path / "cache" / "stores"
    assert first.path.name.startswith("tiny-resnet18-")
    module = sys.modules["cnncodes.extraction.extract"]
    monkeypatch.setattr(module, "_run", lambda *a, **k: pytest.fail("the model ran again"))
    second = extract(source=str(tiny_folder), model="resnet18", weights="none", progress=False)
    assert second.cached and second.path == first.path and second.n_images == 8


def test_different_settings_get_a_different_store(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path))
    a = extract(source=str(tiny_folder), model="resnet18", weights="none", layers=("layer3",), progress=False)
    b = extract(source=str(tiny_folder), model="resnet18", weights="none", layers=("layer3",),
                pool="avgmax", progress=False)
    assert a.path != b.path
    assert a.dims == {"layer3.1.relu_1": 256} and b.dims == {"layer3.1.relu_1": 512}


def test_corrupt_images_are_reported_and_skipped(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "data", per_class=3)
    good = root / "cats" / "cats_0.jpg"
    (root / "cats" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (root / "dogs" / "notes.jpg").write_text("this is not an image")
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    result = extract(source=str(root), model="resnet18", weights="none", out=str(tmp_path / "s.h5"),
                     batch_size=4, workers=0, progress=False)
    assert result.n_images == 6
    reasons = dict(result.skipped)
    assert set(reasons) == {"cats/truncated.jpg", "dogs/notes.jpg", "dogs/empty.jpg"}
    assert reasons.pop("dogs/empty.jpg") == "empty file (0 bytes)"
    assert all(r.startswith("unreadable image:") for r in reasons.values())
    with CodeStore(result.path) as store:
        assert len(store) == 6 and set(store.paths).isdisjoint(reasons)


def test_existing_store_is_not_overwritten_without_asking(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "codes.h5"
    extract(source=str(tiny_folder), model="resnet18", weights="none", out=str(out), progress=False)
    before = out.read_bytes()
    with pytest.raises(CnnCodesError, match="already exists and holds other codes; pass --overwrite"):
        extract(source=str(tiny_folder), model="alexnet", weights="none", out=str(out), progress=False)
    assert out.read_bytes() == before
    replaced = extract(source=str(tiny_folder), model="alexnet", weights="none", out=str(out),
                       overwrite=True, progress=False)
    assert replaced.dims == {"classifier.5": 4096}


def test_pool_none_warns_for_huge_codes(tiny_folder: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"layer1.1.relu_1 gives 200,704-d codes with --pool none"):
        result = extract(source=str(tiny_folder), model="resnet18", weights="none", layers=("layer1",),
                         pool="none", out=str(tmp_path / "s.h5"), progress=False)
    assert result.dims["layer1.1.relu_1"] == 64 * 56 * 56


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates(hymenoptera: Path, hymenoptera_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "resume.h5"
    parts = tmp_path / "resume.h5.parts"
    command = [sys.executable, "-m", "cnncodes.cli", "extract", str(hymenoptera), "--out", str(out),
               "--part-size", "16", "--batch-size", "8", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(parts.glob("part-*.h5"))) < 2 and time.time() < deadline:
        assert process.poll() is None, "extraction ended before it could be killed"
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    done = len(list(parts.glob("part-*.h5")))
    assert 2 <= done < 398 // 16
    result = extract(source=str(hymenoptera), out=str(out), part_size=16, batch_size=8, progress=False)
    assert result.resumed_from == 16 * done and not parts.exists()
    with CodeStore(out) as resumed, CodeStore(hymenoptera_store) as reference:
        assert resumed.paths == reference.paths
        np.testing.assert_allclose(resumed.codes("-2"), reference.codes("-2"), atol=1e-4)
        assert resumed.skipped == reference.skipped


def test_cli_extract_and_info(runner, hymenoptera: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    args = ["extract", str(hymenoptera), "--limit", "12", "--layer", "-2", "--layer", "blocks.5",
            "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"  # stdout: the store's path alone
    assert "layer global_pool.flatten: 24 x 1280" in result.stderr
    assert "layer blocks.5.3.add: 24 x 192" in result.stderr
    again = runner.invoke(main, args)
    assert "cache hit (no model run)" in again.stderr
    quiet = runner.invoke(main, [*args, "--quiet"])
    assert quiet.stdout == f"{out}\n" and quiet.stderr == ""
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "train 12, val 12" in info.output
    assert "global_pool.flatten (as --layer -2): 24 x 1280" in info.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", "nowhere"], "Error: Source 'nowhere' does not exist"),
        (["extract", "{data}", "--layer", "-999"], "Error: Layer -999 is out of range for efficientnet_lite0"),
        (["extract", "{data}", "--model", "resnet19"], "Error: Unknown model 'resnet19'"),
        (["extract", "{data}", "--device", "cuda:7"] , "Error: Device 'cuda:7' was asked for but CUDA"),
        (["info", "{data}/cats/cats_0.jpg"], "is not a readable HDF5 code store"),
        (["layers", "resnet18", "--weights", "nope.pth"], "Error: Weights file 'nope.pth' does not exist"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(runner, tiny_folder: Path, args, message) -> None:
    if "cuda:7" in args and __import__("torch").cuda.is_available():
        pytest.skip("CUDA present")
    result = runner.invoke(main, [a.format(data=tiny_folder) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_layers_and_models(runner) -> None:
    result = runner.invoke(main, ["layers", "alexnet"])
    assert result.exit_code == 0
    assert "classifier.5" in result.output and "4096" in result.output
    models = runner.invoke(main, ["models"])
    assert "efficientnet_lite0" in models.output and "resnet18" in models.output


@pytest.mark.gpu
def test_cuda_extraction_matches_cpu_codes(tiny_folder: Path, tmp_path: Path) -> None:
    """Device placement and mixed precision: CUDA codes agree with CPU float32 codes."""
    cpu = extract(source=str(tiny_folder), out=str(tmp_path / "cpu.h5"), device="cpu", progress=False)
    gpu = extract(source=str(tiny_folder), out=str(tmp_path / "gpu.h5"), device="cuda", progress=False)
    with CodeStore(cpu.path) as a, CodeStore(gpu.path) as b:
        assert b.attrs["device"].startswith("cuda") and b.attrs["precision"] in ("bfloat16", "float16")
        X, Y = a.codes(), b.codes()
        cosine = (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))
        assert cosine.min() > 0.99


def test_cli_interrupt_says_how_to_resume(runner, tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["cnncodes.extraction.extract"], "_run", interrupted)
    result = runner.invoke(main, ["extract", str(tiny_folder), "--model", "resnet18", "--weights", "none",
                                  "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.output
