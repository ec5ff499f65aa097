"""Extraction throughput on the real hymenoptera images, three ways, side by side.

(a) ``cnncodes.extract`` end to end (listing, decoding in a DataLoader worker, forward,
    HDF5 write; the whole call timed, model load included);
(b) the bare model forward on tensors decoded and transformed beforehand (the ceiling);
(c) the naive loop most tutorials write: open, transform and forward one image at a time.

Same backbone, batch size and torch threads for all three. Prints a markdown table and
writes it to bench/results/extract_throughput.md. Run: python bench/extract_throughput.py
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from cnncodes import extract, load_backbone, open_source, resolve_layers
from cnncodes.nets.layers import CodeExtractor

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each way")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = open_source(args.data)
    items = [it for it in source.items if not it.skip_reason]
    backbone = load_backbone()
    layers = resolve_layers(backbone, [-2])
    extractor = CodeExtractor(backbone, layers).eval()
    n = len(items)

    def end_to_end() -> float:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            result = extract(source=args.data, out=f"{folder}/codes.h5", batch_size=args.batch_size,
                             progress=False)
            seconds = time.perf_counter() - started
            assert result.n_images == n
        return seconds

    decode_started = time.perf_counter()
    tensors = [backbone.transform(source.open_image(it)) for it in items]
    decode_seconds = time.perf_counter() - decode_started

    def bare_forward() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, args.batch_size):
                extractor(torch.stack(tensors[i: i + args.batch_size]))
        return time.perf_counter() - started

    def naive_loop() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            for item in items:
                image = Image.open(source.root / item.path).convert("RGB")
                extractor(backbone.transform(image).unsqueeze(0))
        return time.perf_counter() - started

    timings = {}
    for name, run in (("a", end_to_end), ("b", bare_forward), ("c", naive_loop)):
        timings[name] = min(run() for _ in range(args.repeats))

    rows = [
        ("(a) cnncodes extract, end to end", timings["a"]),
        ("(b) bare model forward, pre-decoded tensors", timings["b"]),
        ("(c) naive loop, one image at a time", timings["c"]),
    ]
    lines = [
        f"Extraction throughput: efficientnet_lite0, layer -2, {n} hymenoptera images, "
        f"batch {args.batch_size}, {args.threads} torch threads, best of {args.repeats}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "",
        "| way | seconds | images/s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {sec:.2f} | {n / sec:.1f} |" for label, sec in rows]
    lines += [
        "",
        f"a/b = {timings['b'] / timings['a']:.2f} (throughput of a relative to b; floor 0.8)",
        f"a/c = {timings['c'] / timings['a']:.2f} (throughput of a relative to c; floor 3)",
        "",
        f"Decoding + transforming all {n} images once, in one process: {decode_seconds:.2f} s. "
        "Where the forward pass already keeps every core busy, decoding cannot overlap "
        f"with it, so a/b is bounded by b / (b + decode) = "
        f"{timings['b'] / (timings['b'] + decode_seconds):.2f} on this machine.",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / "extract_throughput.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
