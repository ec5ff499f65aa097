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
    scale = max(1.0, max(float(np.abs(reference[p]).max()) for p in reference))
    # float32 reassociation (layout, batch, threads, folded norms) moves codes by a few
    # 1e-6 of the largest code: the bound is 1e-5 of it (1e-5 absolute below 1)
    assert worst <= 1e-5 * scale, f"codes differ from the reference by up to {worst:.2e}"


def test_default_execution_matches_the_reference(hymenoptera: Path, tmp_path: Path,
                                                 reference_codes) -> None:
    out = tmp_path / "default.h5"
    extract(source=str(hymenoptera), limit=LIMIT, out=str(out), progress=False)
    _assert_matches(out, reference_codes)
    with CodeStore(out) as store:
        execution = store.attrs["execution"]
    assert execution["channels_last"] is True and execution["workers"] == 0
    assert execution["batch_size"] >= 1 and execution["threads"] >= 1
    # no decoding worker: a batch is decoded by as many threads as the forward pass has
    assert execution["decode_threads"] == execution["threads"]


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
    if options.get("workers"):  # the worker decodes alone
        assert recorded["decode_threads"] == 1


def test_decoding_threads_return_the_batch_in_order_with_its_failures(
        hymenoptera: Path, tmp_path: Path) -> None:
    """Threads decode a batch to exactly what one thread gives, in order, bad files kept."""
    import threading

    from cnncodes.data.preprocess import split_preprocessing
    from cnncodes.data.sources import ImageDataset, open_source

    folder = tmp_path / "photos" / "ants"
    folder.mkdir(parents=True)
    for path in _first_paths(hymenoptera / "train", 5):
        (folder / path.name).write_bytes(path.read_bytes())
    photo = sorted(folder.iterdir())[0].read_bytes()
    (folder / "b-truncated.jpg").write_bytes(photo[: len(photo) // 3])
    (folder / "c-notes.jpg").write_text("not an image")
    source = open_source(str(folder.parent))
    geometry = split_preprocessing(load_backbone("efficientnet_lite0", "DEFAULT").transform).image
    seen: set[str] = set()

    def recording(image):
        seen.add(threading.current_thread().name)
        return geometry(image)

    positions = list(range(len(source.items)))
    one = ImageDataset(source, positions, geometry).__getitems__(positions)
    threaded = ImageDataset(source, positions, recording, threads=3)
    try:
        many = threaded.__getitems__(positions)
    finally:
        threaded.close()
    assert any(name.startswith("cnncodes-decode") for name in seen)
    assert [(p, r) for p, _, r in many] == [(p, r) for p, _, r in one]
    assert sum(1 for _, pixels, _ in many if pixels is None) == 2  # reported, not dropped
    for (_, a, _), (_, b, _) in zip(one, many):
        assert (a is None and b is None) or torch.equal(a, b)


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


@pytest.mark.parametrize("layers, pool", [(("-2",), "avg"), (("-3", "-6"), "none")])
def test_code_widths_from_the_meta_device_equal_a_real_pass(layers, pool) -> None:
    """The store's widths come from shapes alone; they equal a real forward pass's."""
    from cnncodes.extraction.extract import _code_dims

    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    extractor = CodeExtractor(backbone, resolve_layers(backbone, layers), pool).eval()
    with torch.inference_mode():
        real = extractor(torch.zeros(1, 3, backbone.input_size, backbone.input_size))
    widths = {name: int(value.shape[1]) for name, value in real.items()}
    assert _code_dims(extractor, backbone) == widths
    assert all(not p.is_meta for p in extractor.parameters())  # the model is left as it was


def _random_norm_stats(model: torch.nn.Module) -> None:
    """Norm statistics far from the identity, so that folding them changes the weights."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(size, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(size, generator=generator) * 0.1)


@pytest.mark.parametrize("model, weights, layers", [
    ("efficientnet_lite0", "DEFAULT", ("-2",)),
    ("efficientnet_lite0", "DEFAULT", ("conv_head", "-2")),  # a tapped conv keeps its norm
    ("resnet18", "none", ("-2",)),
])
def test_folded_norms_compute_the_same_codes(hymenoptera: Path, model, weights, layers) -> None:
    backbone = load_backbone(model, weights)
    if weights == "none":
        _random_norm_stats(backbone.model)
    extractor = CodeExtractor(backbone, resolve_layers(backbone, layers), "avg").eval()
    folded, count = extractor.folded()
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert count > 0 and left == norms - count
    assert ("conv_head" in layers) == (left == 1)  # the norm after a tapped conv stays
    photos = _first_paths(hymenoptera / "val", 8)
    images = torch.stack([backbone.transform(decode_image(p)) for p in photos])
    with torch.inference_mode():
        want, got = extractor(images), folded(images)
    for name in extractor.layers:
        scale = max(1.0, float(want[name].abs().max()))
        assert float((want[name] - got[name]).abs().max()) <= 1e-5 * scale, name
    # the original is untouched: all its norms are there, and it still gives its codes
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules()) == norms
    with torch.inference_mode():
        again = extractor(images)
    assert all(torch.equal(want[name], again[name]) for name in extractor.layers)
