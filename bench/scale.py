"""Scaling benchmarks (issue 13): listing a million paths, extraction memory at 10x the
images, two torchrun ranks against one process.

Listing (``listing``): ``--paths`` hard links of the real hymenoptera JPEGs under distinct
names, in 100 class folders of ``train/`` (hard links cost a folder entry, not a copy),
then ``open_source`` on the tree in a fresh process per size: wall seconds, peak RSS
right after listing (VmHWM: it includes the interpreter, torch and numpy being imported,
about 500 MB before any path) and whether the paths come out in sorted order. Listing uses
``stat`` only; no file is opened (tests/test_sources.py checks that separately).

Extraction memory (``extraction``): whole ``cnncodes extract`` processes (default model
and settings) on ``--images`` real JPEGs, hard links under distinct names
(``photo_folder`` of bench/extract_limit.py): peak RSS of the process and of its largest
child, as bench/extract_limit.py's wrapper reads them, and the ratio of the largest run's
to the smallest's.

Ranks (``ranks``): ``torchrun --standalone --nproc-per-node 2 -m cnncodes extract`` (one
thread per rank, ``OMP_NUM_THREADS=1``, as tests/test_shards.py runs it) against one
process with the default threads, on the same ``--rank-images`` photos, whole commands
timed; each also on a handful of images, for start-up and the marginal rate.

Prints markdown and writes each part's section of bench/results/scale.md (the sections of
parts not run are kept). Measured once on one machine; never asserted in tests.
Run: python bench/scale.py [--parts listing extraction ranks] [--paths 10000 1000000]
     [--images 6000 60000] [--rank-images 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from extract_limit import HANDFUL, photo_folder

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = RESULTS / "scale.md"
HYMENOPTERA = HERE.parent.parent / "shared" / "data" / "hymenoptera_data"
CLASSES = 100
SECTIONS = {
    "listing": "Listing a million paths",
    "extraction": "Extraction memory at 10x the images",
    "ranks": "Two torchrun ranks against one process",
}
# The peak RSS of this process alone: VmHWM. ru_maxrss is no use in a child of this
# script: a child's starts at its parent's size when it forked.
PEAK = """
def peak_rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
"""
LIST = PEAK + """
import json, sys, time
started = time.perf_counter()
from cnncodes.data.sources import open_source
imported = time.perf_counter()
source = open_source(sys.argv[1])
done = time.perf_counter()
peak = peak_rss_mb()
items = source.items
print(json.dumps({"images": len(items), "import_s": imported - started,
                  "listing_s": done - imported,
                  "sorted": all(a.path <= b.path for a, b in zip(items, items[1:])),
                  "skipped": sum(1 for item in items if item.skip_reason),
                  "peak_rss_mb": peak}))
"""


def link_tree(root: Path, n: int) -> Path:
    """``n`` hard links of the real photos, in turn, spread over class folders of ``train/``
    (a file system allows some 65,000 links to one file, so not all of one photo)."""
    photos = sorted(p for p in HYMENOPTERA.glob("*/*/*") if p.suffix in (".jpg", ".jpeg"))
    for c in range(CLASSES):
        (root / "train" / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        photo = photos[i % len(photos)]
        target = root / "train" / f"class{i % CLASSES:03d}" / f"img{i:07d}.jpg"
        try:
            os.link(photo, target)
        except OSError:  # another file system: a copy
            target.write_bytes(photo.read_bytes())
    return root


def listing(sizes: list[int], work: Path) -> str:
    rows = []
    for n in sizes:
        tree = link_tree(work / f"tree{n}", n)
        out = subprocess.run([sys.executable, "-c", LIST, str(tree)], check=True,
                             capture_output=True, text=True).stdout
        rows.append({"paths": n, **json.loads(out.splitlines()[-1])})
        print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).round(2)
    ratio = table.peak_rss_mb.iloc[-1] / table.peak_rss_mb.iloc[0]
    return "\n\n".join([
        f"Hard links of the real hymenoptera JPEGs in {CLASSES} class folders; "
        "`open_source` in a fresh process per size; peak RSS read right after listing "
        "(it includes the interpreter and the imports).",
        table.to_markdown(index=False),
        f"Peak RSS at {table.paths.iloc[-1]:,} paths: {ratio:.2f}x that at "
        f"{table.paths.iloc[0]:,}.",
    ])


# A whole cnncodes command; on the way out, its own peak RSS and its largest child's.
RUN = PEAK + """
import resource, sys
from cnncodes.cli import main
try:
    main(sys.argv[2:], standalone_mode=False)
finally:
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    with open(sys.argv[1], "w") as report:
        report.write(f"{peak_rss_mb()} {child}")
"""


def run_cli(arguments: list[str], out: Path) -> dict[str, float]:
    """One whole ``cnncodes`` process: wall seconds, peak RSS of it and of its largest child."""
    report = out.with_suffix(".rss")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN, str(report), *arguments, "--out", str(out), "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    own, child = (float(v) for v in report.read_text().split())
    return {"seconds": seconds, "process MB": own, "largest child MB": child}


def extraction(sizes: list[int], work: Path) -> str:
    rows = []
    for n in sizes:
        folder = photo_folder(work / f"photos{n}", n)
        images = sum(1 for _ in folder.glob("*/*.jpg"))
        run = run_cli(["extract", str(folder)], work / f"store{n}.h5")
        rows.append({"images": images, "whole process s": run["seconds"],
                     "img/s": images / run["seconds"], "peak RSS MB": run["process MB"],
                     "largest child peak RSS MB": run["largest child MB"]})
        print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).round(2)
    ratio = table["peak RSS MB"].iloc[-1] / table["peak RSS MB"].iloc[0]
    return "\n\n".join([
        "Whole `cnncodes extract` processes, default model and settings, on real JPEGs "
        "(hymenoptera, hard links under distinct names; `photo_folder` rounds up to whole "
        "rounds of the photos). Peak RSS: the process's own (VmHWM); largest child: "
        "ru_maxrss of `RUSAGE_CHILDREN`, which starts at the parent's size when a child "
        "forks, so it is at least that, whatever the child does.",
        table.to_markdown(index=False),
        f"Peak RSS of the process at {table.images.iloc[-1]:,} images: {ratio:.2f}x that at "
        f"{table.images.iloc[0]:,} (floor: at most 1.3x).",
    ])


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **env})
    return time.perf_counter() - started


def ranks(n: int, work: Path) -> str:
    folder = photo_folder(work / "photos-ranks", n)
    images = sum(1 for _ in folder.glob("*/*.jpg"))
    single = [sys.executable, "-m", "cnncodes", "extract", str(folder), "-q"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "cnncodes", "extract", str(folder), "-q"]
    variants = {"1 process, default threads": (single, {}),
                "torchrun, 2 ranks x 1 thread": (torchrun, {"OMP_NUM_THREADS": "1"})}
    rows = []
    for name, (command, env) in variants.items():
        tag = len(rows)
        small = timed([*command, "--limit", str(HANDFUL), "--out", str(work / f"{tag}s.h5")], env)
        full = timed([*command, "--out", str(work / f"{tag}.h5")], env)
        rows.append({"cnncodes extract": name, "images": images, "whole process s": full,
                     "whole img/s": images / full, f"start-up s ({HANDFUL} images)": small,
                     "marginal img/s": (images - HANDFUL) / (full - small)})
        print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows).round(2)
    whole = table["whole img/s"].iloc[1] / table["whole img/s"].iloc[0]
    marginal = table["marginal img/s"].iloc[1] / table["marginal img/s"].iloc[0]
    return "\n\n".join([
        f"The same {images:,} real JPEGs, default model; the two ranks share this machine's "
        f"{os.cpu_count()} cores, one thread each; the single process uses all of them.",
        table.to_markdown(index=False),
        f"2 ranks / 1 process: {whole:.2f}x whole-process img/s, {marginal:.2f}x marginal.",
    ])


def write_section(part: str, body: str, load: str) -> None:
    """Replace the part's section of the report, keeping the others."""
    text = REPORT.read_text(encoding="utf-8") if REPORT.exists() else ""
    found = re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    sections = {title: body.strip() for title, body in found}
    sections[SECTIONS[part]] = "\n\n".join([
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; {load}.", body])
    ordered = [title for title in SECTIONS.values() if title in sections]
    ordered += [title for title in sections if title not in ordered]
    out = "# Scaling (bench/scale.py)\n\n" + "\n\n".join(
        f"## {title}\n\n{sections[title]}" for title in ordered)
    REPORT.write_text(out + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--paths", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--images", type=int, nargs="+", default=[6_000, 60_000])
    parser.add_argument("--rank-images", type=int, default=4_000)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for part in args.parts:
        start = os.getloadavg()[0]
        with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_TMP")) as tmp:
            work = Path(tmp)
            if part == "listing":
                body = listing(args.paths, work)
            elif part == "extraction":
                body = extraction(args.images, work)
            else:
                body = ranks(args.rank_images, work)
        load = f"load average {start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        print(f"## {SECTIONS[part]}\n\n{body}\n")
        write_section(part, body, load)


if __name__ == "__main__":
    main()
