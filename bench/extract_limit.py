"""Extraction at the machine's limit: ``cnncodes extract`` against the bare forward pass.

On >= 4,000 real photos (the hymenoptera JPEGs, hard-linked under distinct names):

1. the bare forward pass of the extractor (model up to ``--layer -2``) on real, already
   preprocessed images, per memory layout, batch size and precision, each warmed up at
   its own shape first, and the same with batch norms folded into the convolutions (as
   cnncodes runs it): the ceiling is the fastest of all;
2. a naive per-image loop (PIL open, the weights' transform, one contiguous fp32 forward
   per image), as a script without cnncodes would do it;
3. whole ``cnncodes extract`` processes on all images and on a handful; the *marginal*
   rate (images between the two runs over the time between them) leaves out start-up and
   model load, which are printed beside it; variants: the default execution, one niced
   decoding worker, batches decoded by the main thread alone (as before the decoding
   threads), ``--amp`` (bfloat16) where the CPU has native bfloat16, and, on a
   busy machine (one other process spinning on a core), the default (whose thread
   governor moves the forward pass to the free cores) against every pass on all cores
   (``CNNCODES_FIXED_THREADS=1``);
4. peak memory (RSS of the process and its children) on a quarter of the images and on
   all of them.

Prints markdown tables and writes bench/results/extract_limit.md. Ratios come from one run
on one machine; they are never asserted in tests.
Run: python bench/extract_limit.py [--images 4000] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from cnncodes.data.decode import decoder_name
from cnncodes.nets.backbones import load_backbone
from cnncodes.nets.layers import CodeExtractor, resolve_layers
from cnncodes.runtime import cpu_has_native_bf16, tune_cpu_allocator

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HYMENOPTERA = HERE.parent.parent / "shared" / "data" / "hymenoptera_data"
HANDFUL = 32
BUSY_IMAGES = 1000
RUN = """
import os, resource, sys, time
from cnncodes.cli import main
if os.environ.get("BENCH_ONE_DECODE_THREAD"):  # the loop before batches were decoded by threads
    from cnncodes.data.sources import ImageDataset
    ImageDataset.__getitems__ = None
started = time.perf_counter()
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    # VmHWM, not RUSAGE_SELF: Linux carries ru_maxrss across exec, so RUSAGE_SELF would
    # report this bench's own size at the fork that started the process.
    with open("/proc/self/status") as status:
        own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as report:
        report.write(f"{own} {kids}")
"""


def photo_folder(root: Path, n: int) -> Path:
    """At least ``n`` real JPEGs in two class folders, hard links under distinct names."""
    photos = sorted(p for p in HYMENOPTERA.glob("*/*/*") if p.suffix in (".jpg", ".jpeg"))
    if not photos:
        raise SystemExit(f"no photos under {HYMENOPTERA}")
    made = 0
    while made < n:
        for photo in photos:
            target = root / photo.parent.name / f"{made:06d}-{photo.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(photo, target)
            except OSError:
                target.write_bytes(photo.read_bytes())
            made += 1
    return root


def forward_grid(model: str, folder: Path, batches: list[int]) -> pd.DataFrame:
    """Images/s of the bare extractor forward per layout, batch and precision."""
    from cnncodes.data.decode import decode_image

    tune_cpu_allocator()
    backbone = load_backbone(model, "DEFAULT")
    extractor = CodeExtractor(backbone, resolve_layers(backbone, ("-2",)), "avg").eval()
    photos = sorted(folder.glob("*/*.jpg"))[: max(batches)]
    images = torch.stack([backbone.transform(decode_image(p)) for p in photos])
    rows = []
    folded = extractor.folded()[0]
    for layout in ("contiguous", "channels_last", "channels_last folded"):
        memory = torch.contiguous_format if layout == "contiguous" else torch.channels_last
        module = (folded if "folded" in layout else extractor).to(memory_format=memory)
        for precision in ("float32", "bfloat16"):
            # Emulated bfloat16 (no AVX512-BF16 or AMX) runs at a few img/s: one batch size.
            native = cpu_has_native_bf16() or precision == "float32"
            for batch in batches if native else [8]:
                x = images[:batch].contiguous(memory_format=memory)
                rate = _forward_rate(module, x, precision == "bfloat16")
                rows.append({"layout": layout, "precision": precision, "batch": batch,
                             "img/s": round(rate, 1)})
                print(rows[-1], file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def _forward_rate(module: torch.nn.Module, x: torch.Tensor, bf16: bool) -> float:
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for _ in range(3):  # same-shape warm-up: oneDNN builds its kernels per shape
            module(x)
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0 or done < 3 * len(x):
            module(x)
            done += len(x)
        return done / (time.perf_counter() - started)


def naive_loop(model: str, folder: Path, n: int = 300) -> float:
    """A per-image loop: PIL open, the weights' transform, one fp32 forward per image."""
    from PIL import Image

    backbone = load_backbone(model, "DEFAULT")
    extractor = CodeExtractor(backbone, resolve_layers(backbone, ("-2",)), "avg").eval()
    photos = sorted(folder.glob("*/*.jpg"))[:n]
    with torch.inference_mode():
        for photo in photos[:10]:  # warm-up
            extractor(backbone.transform(Image.open(photo).convert("RGB"))[None])
        started = time.perf_counter()
        for photo in photos:
            extractor(backbone.transform(Image.open(photo).convert("RGB"))[None])
    return len(photos) / (time.perf_counter() - started)


def run_extract(folder: Path, out: Path, limit: int | None, extra: list[str],
                env: dict[str, str] | None = None) -> dict[str, float]:
    """One whole ``cnncodes extract`` process: wall seconds and peak RSS (MB)."""
    report = out.with_suffix(".rss")
    command = [sys.executable, "-c", RUN, str(report), "extract", str(folder), "--out", str(out),
               "-q", *(["--limit", str(limit)] if limit else []), *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    own, kids = (int(v) for v in report.read_text().split())
    return {"seconds": seconds, "rss_mb": max(own, kids) / 1024}


def extract_rows(folder: Path, n: int, model: str, work: Path) -> tuple[pd.DataFrame, dict]:
    fixed = {"CNNCODES_FIXED_THREADS": "1"}
    variants: dict[str, tuple[list[str], dict[str, str], bool]] = {
        "default": ([], {}, False),
        "decoding on one thread (the main one)": ([], {"BENCH_ONE_DECODE_THREAD": "1"}, False),
        "1 niced decoding worker": (["--workers", "1"], {}, False),
    }
    if cpu_has_native_bf16():  # elsewhere --amp falls back to float32 on a CPU
        variants["--amp (bfloat16)"] = (["--amp"], {}, False)
    variants["busy machine: default"] = ([], {}, True)
    variants["busy machine: every pass on all cores"] = ([], fixed, True)
    rows, rss = [], {}
    for name, (extra, env, busy) in variants.items():
        extra = ["--model", model, *extra]
        images = min(n, BUSY_IMAGES) if busy else n
        with _busy_core(busy):
            small = run_extract(folder, work / f"{len(rows)}-small.h5", HANDFUL, extra, env)
            full = run_extract(folder, work / f"{len(rows)}-full.h5", images, extra, env)
        marginal = (images - HANDFUL) / (full["seconds"] - small["seconds"])
        rows.append({"cnncodes extract": name, "images": images,
                     "whole process s": full["seconds"], "whole img/s": images / full["seconds"],
                     f"start-up s ({HANDFUL} images)": small["seconds"],
                     "marginal img/s": marginal, "peak RSS MB": full["rss_mb"]})
        print(rows[-1], file=sys.stderr, flush=True)
        if name == "default":
            quarter = run_extract(folder, work / "quarter.h5", None, extra + ["--limit", str(n // 4)])
            rss = {"quarter": quarter["rss_mb"], "all": full["rss_mb"]}
    return pd.DataFrame(rows).round(2), rss


@contextlib.contextmanager
def _busy_core(busy: bool) -> Iterator[None]:
    """One other process spinning on a core, at normal priority, while the block runs."""
    if not busy:
        yield
        return
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def _execution(store: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "cnncodes.cli", "info", str(store), "--format",
                          "json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out).get("execution", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batches", default="1,4,8,16,32")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = photo_folder(work / "photos", args.images)
        n = len(list(folder.glob("*/*.jpg")))
        grid = forward_grid(args.model, folder, batches)
        naive = naive_loop(args.model, folder)
        runs, rss = extract_rows(folder, n, args.model, work)
        execution = _execution(work / "0-full.h5")
    write_report(args.model, n, grid, naive, runs, rss, execution,
                 f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


def write_report(model: str, n: int, grid: pd.DataFrame, naive: float, runs: pd.DataFrame,
                 rss: dict, execution: dict, load: str) -> None:
    fp32 = grid[grid.precision == "float32"]
    best = fp32.loc[fp32["img/s"].idxmax()]
    unfolded = fp32[~fp32.layout.str.contains("folded")]["img/s"].max()
    default = runs.iloc[0]
    ratios = pd.DataFrame([
        {"ratio": "cnncodes marginal / fastest bare fp32 forward (any layout, folded or not)",
         "value": default["marginal img/s"] / best["img/s"], "floor": 0.80},
        {"ratio": "cnncodes marginal / fastest bare fp32 forward of the model as loaded",
         "value": default["marginal img/s"] / unfolded, "floor": None},
        {"ratio": "cnncodes marginal / naive per-image loop",
         "value": default["marginal img/s"] / naive, "floor": 1.3},
        {"ratio": f"peak RSS, {n} images / {n // 4} images", "value": rss["all"] / rss["quarter"],
         "floor": None},
    ]).round(3)
    pivot = grid.pivot_table(index="batch", columns=["layout", "precision"], values="img/s")
    pivot.columns = [f"{layout} {precision}" for layout, precision in pivot.columns]
    native = "native" if cpu_has_native_bf16() else "emulated (no AVX512-BF16 or AMX)"
    text = "\n\n".join([
        f"# Extraction at the machine's limit: {model}, --layer -2",
        f"{n} real JPEGs (hymenoptera, hard-linked); {platform.machine()}, {os.cpu_count()} "
        f"cores, torch {torch.__version__}, {torch.get_num_threads()} threads, decoder "
        f"{decoder_name()}; bfloat16 {native}; {time.strftime('%Y-%m-%d')}; {load}.",
        f"Default execution chosen by cnncodes here: `{json.dumps(execution)}`.",
        "## Bare forward pass (img/s, real preprocessed images, same-shape warm-up)",
        pivot.to_markdown(),
        f"Fastest fp32: {best['layout']}, batch {best['batch']}: {best['img/s']} img/s. "
        f"Naive per-image loop (PIL, transform, contiguous fp32, batch 1): {naive:.1f} img/s.",
        "## Whole `cnncodes extract` processes",
        runs.to_markdown(index=False),
        "## Ratios",
        ratios.to_markdown(index=False),
    ]) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extract_limit.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
