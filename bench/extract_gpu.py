"""GPU extraction throughput on the built-in sklearn:digits (1,797 real images), side by side.

(a) ``cnncodes.extract`` end to end on CUDA with mixed precision (the default there),
(b) the same in float32, (c) the bare forward pass of the same batches already decoded
and on the GPU, (d) a naive loop: one image at a time, float32, no DataLoader. Also the
cosine between CUDA mixed-precision codes and CPU float32 codes. Prints a Markdown table
and writes it to ``bench/results/extract_gpu.md`` (or ``--out``). Needs CUDA.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cnncodes import CodeStore, extract
from cnncodes.data.sources import open_source
from cnncodes.nets.backbones import load_backbone
from cnncodes.nets.layers import CodeExtractor, resolve_layers

ROOT = Path(__file__).resolve().parents[1]


def _timed_extract(work: Path, name: str, **options) -> tuple[float, Path]:
    started = time.perf_counter()
    result = extract(source="sklearn:digits", out=str(work / f"{name}.h5"), progress=False,
                     **options)
    return result.n_images / (time.perf_counter() - started), result.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "extract_gpu.md"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    backbone = load_backbone("efficientnet_lite0", "DEFAULT")
    source = open_source("sklearn:digits")
    images = torch.stack([backbone.transform(source.read(item)[0]) for item in source.items])
    extractor = CodeExtractor(backbone, resolve_layers(backbone, ("-2",)), "avg").cuda().eval()
    extractor = extractor.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        _timed_extract(work, "warmup", batch_size=args.batch_size, device="cuda")
        amp, amp_path = _timed_extract(work, "amp", batch_size=args.batch_size, device="cuda")
        fp32, _ = _timed_extract(work, "fp32", batch_size=args.batch_size, device="cuda", amp=False)
        _, cpu_path = _timed_extract(work, "cpu", batch_size=args.batch_size, device="cpu")
        with CodeStore(amp_path) as a, CodeStore(cpu_path) as b:
            X, Y = a.codes(), b.codes()
        cosine = (X * Y).sum(1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(Y, axis=1))
    on_gpu = images.cuda().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for batch in on_gpu.split(args.batch_size):  # warm-up
            extractor(batch)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in on_gpu.split(args.batch_size):
            extractor(batch)
        torch.cuda.synchronize()
        bare = len(images) / (time.perf_counter() - started)
    naive_model = CodeExtractor(backbone, resolve_layers(backbone, ("-2",)), "avg").cuda().eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for item in source.items[:300]:
            naive_model(backbone.transform(source.read(item)[0])[None].cuda()).popitem()[1].cpu()
    naive = 300 / (time.perf_counter() - started)
    rows = [
        ("(a) extract, CUDA, mixed precision (default)", amp),
        ("(b) extract, CUDA, float32", fp32),
        ("(c) bare forward, decoded batches on the GPU, bf16", bare),
        ("(d) naive loop, one image at a time, float32", naive),
    ]
    table = [f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; "
             f"batch {args.batch_size}; sklearn:digits, 1,797 images, efficientnet_lite0 -2", "",
             "| way | images/s |", "|---|---:|"]
    table += [f"| {name} | {rate:,.0f} |" for name, rate in rows]
    table += ["", f"a/c = {amp / bare:.2f}, a/d = {amp / naive:.2f}, a/b = {amp / fp32:.2f}; "
              f"cosine(CUDA mixed-precision codes, CPU float32 codes): min {cosine.min():.5f}, "
              f"mean {cosine.mean():.5f}"]
    text = "\n".join(table) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
