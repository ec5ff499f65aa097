"""The strategy advisor against ``compare`` on real data: its choice, its time, the truth.

For each data set the advisor runs cold (an empty extraction cache, so its time includes
extracting its sample) and names a strategy; ``compare`` on the same data gives the test
accuracy of all four. The advisor passes where its strategy is the best row or within
1 point of it on test. Test images are never read by the advisor.

- hymenoptera: the 244 training photos; the 153 val photos become the **test** split (a
  CSV manifest under the cache), so that compare carves its validation images out of train
  (20 %, seed 0) and test is scored once, and the advisor sees the training photos only.
- fashion: Fashion-MNIST, the first ``--fashion-limit`` images of each split (200 training
  images per class and 2,000 test images at the default 2,000).

``compare``'s tables come from ``--compare-from DIR`` (``compare_<name>.csv`` of
bench/compare_<name>.py, with the wall time recorded in its ``.md``) where that table scores
a test split, else from running ``cnncodes compare`` here (``--epochs``, wall time; kept as
bench/results/advise_compare_<name>.csv and .json, which ``--reuse`` reads again).

Run: python bench/advise.py [--compare-from bench/results] [--epochs 4] [--reuse]
Writes bench/results/advise.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from cnncodes import advise, compare
from cnncodes.studies.report import format_table

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
RESULTS = ROOT / "bench" / "results"
WITHIN = 0.01  # the floor: the advised row within 1 point of the best on test


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    interval = binomtest(correct, n).proportion_ci(0.95, method="wilson")
    return float(interval.low), float(interval.high)


def hymenoptera_manifest(folder: Path) -> Path:
    """train/ as train, val/ as test: a test split the advisor and every choice never see."""
    lines = ["path,label,split"]
    for split, role in (("train", "train"), ("val", "test")):
        for path in sorted((HYMENOPTERA / split).glob("*/*")):
            lines.append(f"{path},{path.parent.name},{role}")
    manifest = folder / "hymenoptera_val_as_test.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def in_fresh_cache(function, *args, **kwargs):
    """Run with an empty CNNCODES_CACHE: cold timings, no store shared between runs."""
    with tempfile.TemporaryDirectory(prefix="cnncodes-advise-") as cache:
        old = os.environ.get("CNNCODES_CACHE")
        os.environ["CNNCODES_CACHE"] = cache
        try:
            started = time.perf_counter()
            result = function(*args, **kwargs)
            return result, time.perf_counter() - started
        finally:
            if old is None:
                del os.environ["CNNCODES_CACHE"]
            else:
                os.environ["CNNCODES_CACHE"] = old


def _recorded_minutes(markdown: Path) -> float | None:
    """The wall time bench/compare_bench.py records under its table, in seconds."""
    if not markdown.is_file():
        return None
    found = re.search(r"\*\*([\d.]+) minutes\*\*", markdown.read_text(encoding="utf-8"))
    return float(found.group(1)) * 60 if found else None


def compare_tables(name: str, source: str, limit: int | None, args
                   ) -> list[tuple[pd.DataFrame, float, str]]:
    """compare's tables on this data, each with its time and where both came from.

    The table of bench/compare_<name>.py (``--compare-from``) where it scores a test split;
    and this bench's own compare, run in an empty cache (so that it pays for its own
    extraction, as the advisor does), or read back with ``--reuse``.
    """
    tables = []
    path = Path(args.compare_from or RESULTS).resolve() / f"compare_{name}.csv"
    if args.compare_from and path.is_file():
        table = pd.read_csv(path)
        if "test_accuracy" in table and table["test_accuracy"].notna().all():
            recorded = _recorded_minutes(path.with_suffix(".md"))
            seconds = recorded if recorded is not None else float(table["seconds"].sum())
            how = "its recorded wall time" if recorded is not None else "the sum of its rows"
            tables.append((table, seconds, f"`{path.relative_to(ROOT)}`; time: {how}"))
    own, record = RESULTS / f"advise_compare_{name}.csv", RESULTS / f"advise_compare_{name}.json"
    if args.reuse and own.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        return [*tables, (pd.read_csv(own), saved["seconds"], saved["origin"] + " (reused)")]
    result, seconds = in_fresh_cache(compare, source=source, limit=limit, epochs=args.epochs,
                                     progress=False)
    origin = f"`cnncodes compare --epochs {args.epochs}" + (
        f" --limit {limit}" if limit else "") + "` run by this bench in an empty cache; wall time"
    result.table.to_csv(own, index=False)
    record.write_text(json.dumps({"seconds": seconds, "origin": origin}) + "\n")
    return [*tables, (result.table, seconds, origin)]


def verdict(table: pd.DataFrame, strategy: int) -> dict:
    """The advised row against the best row on test, with n and 95 % Wilson intervals."""
    numbers = table["strategy"].astype(str).str.extract(r"^\s*(\d)")[0].astype(int)
    column = "test_accuracy"
    n = int(table["n_test"].iloc[0]) if "n_test" in table else None
    best = table[column].idxmax()
    advised = int(numbers[numbers == strategy].index[0])
    gap = float(table.loc[best, column] - table.loc[advised, column])

    def shown(row: int) -> str:
        accuracy = float(table.loc[row, column])
        if not n:
            return f"{accuracy:.4f}"
        low, high = wilson_interval(round(accuracy * n), n)
        return f"{accuracy:.4f} ({low:.3f}-{high:.3f})"

    return {
        "best_strategy": int(numbers[best]), "best_test": shown(best),
        "advised_test": shown(advised), "gap_points": round(100 * gap, 2),
        "pass": gap <= WITHIN + 1e-12,
    }


def run(name: str, source: str, limit: int | None, n_test: int, args
        ) -> list[tuple[dict, pd.DataFrame, str]]:
    advice, advise_seconds = in_fresh_cache(advise, source=source, limit=limit, progress=False)
    row = advice.table.iloc[0]
    print(f"\n{name}: advised strategy {advice.strategy} on {advice.layer}", flush=True)
    for reason in advice.reasons:
        print(f"  {reason}", flush=True)
    found = []
    for table, compare_seconds, origin in compare_tables(name, source, limit, args):
        if "n_test" not in table:
            table["n_test"] = n_test
        summary = {
            "data": name,
            "compare": f"compare_{name}.csv" if origin.startswith("`bench/") else "this bench",
            "advised": int(advice.strategy), "layer": advice.layer,
            "images_per_class": row["images_per_class"],
            "imagenet_confidence": round(float(row["imagenet_confidence"]), 3),
            "penultimate_cv": round(float(row["penultimate_cv_accuracy"]), 3),
            "best_earlier_cv": f"{row['earlier_cv_accuracy']:.3f} ({row['best_earlier_layer']})",
            "probe_n": int(row["sample_images"]),
            "advise_s": round(advise_seconds, 1), "compare_s": round(compare_seconds),
            "time_ratio": f"{advise_seconds / compare_seconds:.3f}",
            **verdict(table, advice.strategy),
        }
        found.append((summary, table, origin))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-from", help="folder with compare_<name>.csv tables to use")
    parser.add_argument("--epochs", type=int, default=4, help="compare --epochs when run here")
    parser.add_argument("--fashion-limit", type=int, default=2000)
    parser.add_argument("--only", choices=("hymenoptera", "fashion"))
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the compare tables an earlier run of this bench wrote")
    args = parser.parse_args()
    sets = []
    with tempfile.TemporaryDirectory() as folder:
        if args.only in (None, "hymenoptera") and HYMENOPTERA.is_dir():
            sets += run("hymenoptera", str(hymenoptera_manifest(Path(folder))), None, 153, args)
        if args.only in (None, "fashion") and FASHION_MNIST.is_dir():
            sets += run("fashion", str(FASHION_MNIST), args.fashion_limit, args.fashion_limit,
                        args)
    if not sets:
        sys.exit("no data: neither hymenoptera nor Fashion-MNIST found")
    summary = pd.DataFrame([s for s, _, _ in sets])
    load = os.getloadavg()
    parts = [
        "# Strategy advisor against compare (`python bench/advise.py "
        + " ".join(sys.argv[1:]) + "`)\n",
        format_table(summary, "md"), "",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, no GPU; load average "
        f"{load[0]:.1f} at the end (other jobs share the cores; times are indicative).",
        "- advise_s: the advisor cold (empty cache: extraction of its sample included); "
        "compare_s: compare's time on the same data. pass: the advised strategy's test "
        f"accuracy is within {WITHIN * 100:g} point of the best row's (95 % Wilson intervals "
        "in brackets). p_vs_best / vs_best in the tables below: compare's exact McNemar "
        "test of each row against the best row on the same test images.",
        "- hymenoptera: bench/compare_hymenoptera.py scores val only (the folder has no test "
        "split), so compare runs here on a manifest whose 153 val photos are the test split; "
        "compare carves its validation images (20 %, seed 0) out of the 244 training photos.",
        "- The advisor's probe and decision use non-test images only. Its extraction covers "
        "every split of its sample (the very store a later compare with the same --limit "
        "reads), so test rows are extracted into the cache, but never probed.",
    ]
    for (summary_row, table, origin) in sets:
        shown = table.drop(columns=[c for c in ("trained",) if c in table])
        parts += ["", f"## {summary_row['data']}: compare ({origin})", "",
                  format_table(shown, "md")]
    text = "\n".join(parts) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "advise.md").write_text(text)


if __name__ == "__main__":
    main()
