"""The four transfer strategies on a Fashion-MNIST subset, test n >= 1,000.

``cnncodes compare`` on the first 2,000 training and 2,000 test images of Fashion-MNIST
(28 x 28 grayscale, 10 classes; the backbone sees them upsampled to 224 px RGB), val
carved as 20 % of each class of the training images. Enough test images that a 1-point
difference between strategy 3 and strategy 1 can be read off (McNemar on the same 2,000
images); strategy 4 gets the same few epochs, which keeps the run under 15 minutes on a
2-core CPU. Writes bench/results/compare_fashion.md, .csv and _curves.png.

Run: python bench/compare_fashion.py [--limit 2000] [--epochs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_bench import run_compare  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=2000, help="first N images of each split")
    parser.add_argument("--epochs", type=int, default=5, help="compare's default: 5")
    args = parser.parse_args()
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST not found in {FASHION_MNIST}; "
                         "apt-get install dataset-fashion-mnist")
    with tempfile.TemporaryDirectory(prefix="compare-fashion-") as work:
        run_compare(
            "fashion", f"cnncodes compare on Fashion-MNIST ({args.limit:,} train / "
            f"{args.limit:,} test)",
            "Backbone efficientnet_lite0 (ImageNet weights); the first "
            f"{args.limit:,} images of each split; compare's defaults otherwise (strategy 3 "
            "without augmentation, its head on the frozen codes as strategy 1's probe is; "
            "strategy 4 augmented).",
            ["Strategy 3 within 1 point of strategy 1 (or better) is read from test_accuracy; "
             "p_vs_best is the exact McNemar test on the same test images."],
            work=Path(work),
            command=f"cnncodes compare fashion-mnist --limit {args.limit} --epochs {args.epochs}",
            source=str(FASHION_MNIST), limit=args.limit, epochs=args.epochs,
        )


if __name__ == "__main__":
    main()
