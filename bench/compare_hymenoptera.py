"""The four transfer strategies on the real hymenoptera split, with default settings.

Runs ``cnncodes.compare`` exactly as ``cnncodes compare DATA`` does (default backbone,
default epochs), times the whole call, and writes the table (Markdown with the machine it
ran on, and CSV) and the learning curves of strategies 3 and 4 to bench/results/. No
assertions on time: the figures are recorded, and judged by a reader.

Hymenoptera has no test split: val (153 images) is the scored split, and it also chose C,
strategy 2's layer and the best epochs, so its figures are optimistic, and n = 153 cannot
resolve a 1-point difference (read the intervals and p_vs_best).

Run: python bench/compare_hymenoptera.py [--fresh-codes] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_bench import ROOT, run_compare  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hymenoptera_data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--epochs", type=int, default=None, help="default: compare's default")
    parser.add_argument("--fresh-codes", action="store_true",
                        help="extract into an empty cache, so strategies 1-2 pay for extraction")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="compare-hymenoptera-") as work:
        if args.fresh_codes:
            os.environ["CNNCODES_CACHE"] = str(Path(work) / "cache")
        options = {"epochs": args.epochs} if args.epochs else {}
        run_compare(
            "hymenoptera", "cnncodes compare on hymenoptera (ants vs bees), default settings",
            "Train 244 images (+1 GIF placeholder, skipped and reported), val 153, no test; "
            "backbone efficientnet_lite0 (ImageNet weights). "
            f"{'Codes extracted in this run' if args.fresh_codes else 'Codes from the cache when present'}.",
            ["Val is the only held-out split: it is scored and it also chose every setting, "
             "so these figures are optimistic, and with n = 153 a 1-point difference is far "
             "inside the intervals.",
             "Reference (PyTorch tutorial, ResNet-18 on the same split): frozen backbone "
             "0.9477, full fine-tune 0.9346."],
            work=Path(work),
            command=f"cnncodes compare {Path(args.data).name}"
            + (f" --epochs {args.epochs}" if args.epochs else ""),
            source=args.data, **options,
        )


if __name__ == "__main__":
    main()
