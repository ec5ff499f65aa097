"""How extraction runs (layout, batch, workers, precision, decoder) never changes the codes
beyond float rounding, is recorded in the store, and is reused by a resumed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncodes import CodeStore, extract
from cnncodes.data.decode import decode_image
from cnncodes.data.store import PartWriter
from cnncodes.nets.backbones import load_backbone
from cnncodes.nets.layers import CodeExtractor, resolve_layers

LIMIT = 12  # per split: 24 real photos


@pytest.fixture(scope="module")
def reference_codes(hymenoptera: Path) -> dict[str, np.ndarray]:
    """The reference: contiguous fp32, one image at a time, decoded by PIL in this process."""
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    layers = resolve_layers(backbone, ("-2",))
    extractor = CodeExtractor(backbone, layers, "avg").eval()
    codes = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNCODES_DECODER", "pil")
        for split in ("train", "val"):
            for path in _first_paths(hymenoptera / split, LIMIT):
                image = backbone.transform(decode_image(path))[None]
                with torch.inference_mode():
                    codes[str(path.relative_to(hymenoptera))] = extractor(image)[layers[0]][0].numpy()
    return codes


def _first_paths(split_folder: Path, limit: int) -> list[Path]:
    """The first ``limit`` files of a split in the order the folder source lists them."""
    from cnncodes.data.sources import open_source

    source = open_source(str(split_folder.parent), limit=limit)
    return [split_folder.parent / item.path for item in source.items
            if item.split == split_folder.name and not item.skip_reason]


def _assert_matches(store_path: Path, reference: dict[str, np.ndarray]) -> None:
    with CodeStore(store_path) as store:
        codes = store.codes("-2")
        rows = {path: codes[i] for i, path in enumerate(store.paths)}
    assert set(rows) == set(reference)
    worst = max(float(np.abs(rows[p] - reference[p]).max()) for p in reference)
    assert worst < 1e-5, f"codes differ from the reference by up to {worst:.2e}"


def test_default_execution_matches_the_reference(hymenoptera: Path, tmp_path: Path,
                                                 reference_codes) -> None:
    out = tmp_path / "default.h5"
    extract(source=str(hymenoptera), limit=LIMIT, out=str(out), progress=False)
    _assert_matches(out, reference_codes)
    with CodeStore(out) as store:
        execution = store.attrs["execution"]
    assert execution["channels_last"] is True and execution["workers"] == 0
    assert execution["batch_size"] >= 1 and execution["threads"] >= 1


@pytest.mark.parametrize("options", [
    {"batch_size": 5, "workers": 1},  # a niced decoding worker, batches that straddle parts
    {"batch_size": 1},
])
def test_other_executions_match_the_reference(hymenoptera: Path, tmp_path: Path,
                                              reference_codes, options) -> None:
    out = tmp_path / "other.h5"
    extract(source=str(hymenoptera), limit=LIMIT, out=str(out), part_size=7, progress=False,
            **options)
    _assert_matches(out, reference_codes)
    with CodeStore(out) as store:
        recorded = store.attrs["execution"]
    assert {key: recorded[key] for key in options} == options


def test_resumed_run_reuses_the_recorded_execution(hymenoptera: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   reference_codes) -> None:
    out = tmp_path / "resumed.h5"
    real_write, calls = PartWriter.write, []

    def dies_after_one_part(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(PartWriter, "write", dies_after_one_part)
    with pytest.raises(KeyboardInterrupt):
        extract(source=str(hymenoptera), limit=LIMIT, out=str(out), part_size=6, batch_size=3,
                progress=False)
    record = json.loads((tmp_path / "resumed.h5.parts" / "execution.json").read_text())
    assert record["batch_size"] == 3
    monkeypatch.setattr(PartWriter, "write", real_write)
    result = extract(source=str(hymenoptera), limit=LIMIT, out=str(out), part_size=6,
                     progress=False)  # no batch size given: the recorded one is reused
    assert result.resumed_from == 6
    with CodeStore(out) as store:
        assert store.attrs["execution"]["batch_size"] == 3
    _assert_matches(out, reference_codes)


def test_bfloat16_on_cpu_stores_float32_codes_close_to_fp32(hymenoptera: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             reference_codes) -> None:
    from cnncodes.runtime import cpu_has_native_bf16

    if not cpu_has_native_bf16():
        monkeypatch.setenv("CNNCODES_CPU_BF16", "1")  # emulated: slow, but it runs here
    out = tmp_path / "bf16.h5"
    extract(source=str(hymenoptera), limit=LIMIT, out=str(out), device="cpu", amp=True,
            progress=False)
    with CodeStore(out) as store:
        assert store.attrs["precision"] == "bfloat16"
        codes = store.codes("-2")
        paths = store.paths
    assert codes.dtype == np.float32
    reference = np.stack([reference_codes[p] for p in paths])
    cosine = (codes * reference).sum(1) / np.linalg.norm(codes, axis=1) / np.linalg.norm(
        reference, axis=1)
    assert cosine.min() > 0.98, cosine.min()
    assert not np.array_equal(codes, reference)  # bf16 really ran


def test_amp_without_native_bfloat16_runs_float32_and_says_so(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cnncodes import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv("CNNCODES_CPU_BF16", raising=False)
    chosen = runtime.setup_runtime("cpu", amp=True)
    assert chosen.precision == torch.float32
    assert "--amp ignored: this CPU has no native bfloat16" in capsys.readouterr().err
    monkeypatch.setenv("CNNCODES_CPU_BF16", "1")
    assert runtime.setup_runtime("cpu", amp=True).precision == torch.bfloat16



def test_one_thread_matches_the_reference(hymenoptera: Path, tmp_path: Path, reference_codes,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the thread governor does on a busy machine: codes stay within float rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "one-thread.h5"
        extract(source=str(hymenoptera), limit=LIMIT, out=str(out), progress=False)
    finally:
        torch.set_num_threads(threads)
    _assert_matches(out, reference_codes)


class _Machine:
    """A simulated CPU: 90 img/s on 2 threads and 48 on 1 while quiet; beside a busy
    process, 2 threads collapse to 8 while 1 thread keeps 45."""

    def __init__(self) -> None:
        self.busy = False

    def seconds(self, images: int) -> float:
        threads = torch.get_num_threads()
        rate = {(2, False): 90, (1, False): 48, (2, True): 8, (1, True): 45}[(threads, self.busy)]
        return images / rate


def _passes(governor, machine: _Machine, n: int) -> list[int]:
    threads = []
    for _ in range(n):
        governor.record(8, machine.seconds(8))
        threads.append(torch.get_num_threads())
    return threads


def test_thread_governor_follows_the_free_cores() -> None:
    from cnncodes.extraction.execution import ThreadGovernor

    before = torch.get_num_threads()
    machine = _Machine()
    try:
        torch.set_num_threads(2)
        governor = ThreadGovernor(2, retry=20)
        assert set(_passes(governor, machine, 200)) == {2}, "a quiet machine keeps every core"
        assert governor.summary() == ""
        machine.busy = True
        busy = _passes(governor, machine, 100)
        assert busy[-90:].count(1) > 84, "beside a busy process it moves to 1 thread"
        machine.busy = False
        quiet = _passes(governor, machine, 200)
        assert quiet[-20:] == [2] * 20, "and returns to 2 once the machine is quiet again"
        assert "on 1 thread(s)" in governor.summary()
    finally:
        torch.set_num_threads(before)


def test_thread_governor_stays_when_fewer_threads_do_not_help() -> None:
    from cnncodes.extraction.execution import ThreadGovernor

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        governor = ThreadGovernor(2)
        for rate in [90] * 20 + [50] * 40:  # slower input, not contention: 1 thread is worse
            governor.record(8, 8 / (rate if torch.get_num_threads() == 2 else rate / 2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
