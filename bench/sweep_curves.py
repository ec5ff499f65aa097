"""Transferability curves: one logistic regression per layer of EfficientNet-Lite0.

Runs ``cnncodes.sweep`` on the real hymenoptera images (val split) and on Fashion-MNIST
(first 10,000 train and 10,000 test images; selection by 5-fold CV on train), then copies
each table (CSV, Markdown) and curve (PNG) to bench/results/ as
``sweep_<dataset>.{csv,md,png}`` and prints the tables. Timing is reported, never asserted.

Run: python bench/sweep_curves.py [--datasets hymenoptera fashion-mnist] [--layers all]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import torch

from cnncodes.studies.sweep import sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DATASETS = {
    "hymenoptera": ROOT.parent / "shared" / "data" / "hymenoptera_data",
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--layers", default="all",
                        help="default, all, or a comma-separated list (see cnncodes sweep)")
    parser.add_argument("--fashion-layers", default=None,
                        help="layers for Fashion-MNIST only (e.g. the list another extraction "
                        "of it used, so that its cached store is reused); default --layers")
    parser.add_argument("--clf", default="logreg")
    parser.add_argument("--limit", type=int, default=10_000,
                        help="images per split of Fashion-MNIST (hymenoptera: all)")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    for dataset in args.datasets:
        source = DATASETS[dataset]
        if not source.exists():
            print(f"skip {dataset}: {source} not found")
            continue
        layers = args.layers
        if dataset == "fashion-mnist" and args.fashion_layers:
            layers = args.fashion_layers
        started = time.perf_counter()
        result = sweep(
            source=str(source), layers=layers, clf=args.clf, workers=args.workers,
            limit=args.limit if dataset == "fashion-mnist" else None,
            out=str(ROOT / "sweeps" / f"bench-{dataset}-{args.clf}"),
        )
        seconds = time.perf_counter() - started
        for path in (result.table_path, result.markdown_path, result.plot_path):
            shutil.copyfile(path, RESULTS / f"sweep_{dataset}{path.suffix}")
        header = (
            f"# Layer sweep: {dataset}, efficientnet_lite0 avg-pooled codes, {args.clf}\n\n"
            f"store {result.store.name}; {seconds:.0f} s in all (extraction cached or not) on "
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
            "threads\n\n"
        )
        markdown = RESULTS / f"sweep_{dataset}.md"
        markdown.write_text(header + markdown.read_text())
        print(markdown.read_text())
        print(f"curve: {RESULTS / f'sweep_{dataset}.png'}\n")


if __name__ == "__main__":
    main()
