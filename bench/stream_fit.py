"""Streamed fit (`cnncodes fit --stream`) against the in-memory fit, and its memory at 10x rows.

On the cached Fashion-MNIST store (bench/fashion_codes.py: 10,000 train / 10,000 test
EfficientNet-Lite0 codes, 1280-d ``global_pool.flatten``):

1. ``cnncodes fit --clf logreg`` and ``--clf linear_svm`` in memory, then each with
   ``--stream``: test accuracy with n and a 95% Wilson interval, wall seconds and the
   peak RSS of the process. Every fit is its own ``python -m cnncodes fit`` subprocess,
   and its peak RSS is that child's own ``ru_maxrss`` (``os.wait4``).
2. The streamed logreg again with ``--scheduler``, on a local Dask cluster of 2 worker
   processes with 1 thread each (``distributed.LocalCluster``, started here): seconds,
   the fit process's peak RSS, the workers' peak RSS, and whether its model equals the
   local streamed fit's (it should: the same rows reach the models in the same order).
3. Memory at scale: two stores written from the same codes, one with the 10,000 train
   rows (8,000 train + 2,000 val, so that both select on val) and one with the 8,000 train
   rows repeated 10 times (80,000 train, the same val and test); the same streamed
   logreg fit on each (2 epochs, to keep the 10x run short); peak RSS of 10x over 1x.

Run: python bench/stream_fit.py  (writes bench/results/stream_fit.md)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cnncodes import CodeStore, format_table
from cnncodes.data.store import PartWriter, assemble_store
from cnncodes.probe.stream import DEFAULT_EPOCHS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fit_speed import _Item, wilson  # noqa: E402  (the fit benches share them)

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "global_pool.flatten"


def run_fit(store: Path, out: Path, clf: str, *extra: str) -> dict[str, Any]:
    """One `cnncodes fit` in a child process: its result row, seconds and peak RSS."""
    command = [
        sys.executable,
        "-m",
        "cnncodes",
        "fit",
        str(store),
        "--clf",
        clf,
        "--layer",
        LAYER,
        "-o",
        str(out),
        "--format",
        "json",
        "-q",
        *extra,
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode()}")
    row = json.loads(stdout)[0]
    metadata = json.loads((out / "metadata.json").read_text())
    n_test = metadata["metrics"]["n_test"]
    accuracy = row["test_accuracy"]
    low, high = wilson(round(accuracy * n_test), n_test)
    return {
        "params": row["params"],
        "selected on": row["selected_on"],
        "n train": row["n_train"],
        "test accuracy": f"{accuracy:.4f} [{low:.3f}, {high:.3f}] (n={n_test})",
        "accuracy": accuracy,
        "seconds": round(seconds, 1),
        "peak RSS MiB": round(usage.ru_maxrss / 1024, 1),
    }


def _peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_dask_fit(store: Path, out: Path, local_out: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """The streamed logreg on a local Dask cluster of 2 single-thread worker processes: its
    result row, and a line on the workers' memory and the model against ``local_out``'s."""
    from distributed import Client, LocalCluster

    from cnncodes import load_model

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        result = run_fit(store, out, "logreg", "--stream", "--scheduler", cluster.scheduler_address, *extra)
        with Client(cluster) as client:
            workers = sorted(client.run(_peak_rss_mib).values())
    on_dask, local = (load_model(path).pipeline for path in (out, local_out))
    differences = [
        np.abs(getattr(on_dask[step], name) - getattr(local[step], name)).max()
        for step, name in (("scaler", "mean_"), ("scaler", "scale_"), ("classifier", "coef_"),
                           ("classifier", "intercept_"))
    ]
    same = "bitwise equal to" if max(differences) == 0 else f"within {max(differences):.2g} of"
    line = (
        f"On Dask, the scaler and coefficients were {same} the local streamed logreg's; "
        f"the workers' peak RSS was {' and '.join(f'{w:.0f}' for w in workers)} MiB."
    )
    return result, line


def scaled_store(source: Path, folder: Path, repeats: int) -> Path:
    """A store of the source's train codes (the first 8,000 train rows ``repeats`` times,
    the other 2,000 as val) and its test codes, written part by part."""
    with CodeStore(source) as store:
        attrs, classes = store.attrs, store.classes
        split, labels = store.split, store.labels
        train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
        fit_rows, val_rows = train[:8000], train[8000:]
        blocks = [(fit_rows, "train")] * repeats + [(val_rows, "val"), (test, "test")]
        codes = store.code_rows(LAYER, 0, len(store))
        key = {"store_key": f"fashion-stream-x{repeats}"}
        writer = PartWriter(folder / f"x{repeats}.h5.parts", key)
        items: list[_Item] = []
        for rows, name in blocks:
            start = len(items)
            items += [
                _Item(f"{name}/{classes[labels[r]]}/{start + i}.png", int(labels[r]), name)
                for i, r in enumerate(rows)
            ]
            writer.write(start, len(items), range(start, len(items)), {LAYER: codes[rows]}, [])
    attrs = {**attrs, "layers": [LAYER], "layer_specs": ["-2"], **key}
    return assemble_store(
        writer,
        folder / f"x{repeats}.h5",
        layers=[LAYER],
        dims={LAYER: 1280},
        items=items,
        classes=classes,
        has_split=True,
        attrs=attrs,
    )


def cached_fashion_store() -> Path:
    """The store's path, extracted first if needed in a child process: the fits below are
    children of this process, and a child's peak RSS counts this process's memory at the
    fork, which extraction would have grown."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        "from fashion_codes import fashion_store; print(fashion_store())"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(output.strip().splitlines()[-1])


def main() -> None:
    store = cached_fashion_store()
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for clf in ("logreg", "linear_svm"):
            for stream in (False, True):
                name = f"fit --clf {clf}" + (" --stream" if stream else "")
                print(f"{name} ...", flush=True)
                result = run_fit(
                    store, folder / name.replace(" ", "_"), clf, *(["--stream"] if stream else [])
                )
                rows.append({"fit": name, **result})
                print(rows[-1], flush=True)
        print("fit --clf logreg --stream --scheduler (local Dask cluster) ...", flush=True)
        result, dask_line = run_dask_fit(
            store, folder / "dask", folder / "fit_--clf_logreg_--stream"
        )
        rows.append({"fit": "fit --clf logreg --stream --scheduler (2 Dask workers)", **result})
        print(rows[-1], dask_line, flush=True)
        scale = []
        for repeats in (1, 10):
            path = scaled_store(store, folder, repeats)
            print(f"streamed logreg on x{repeats} ...", flush=True)
            result = run_fit(
                path, folder / f"scale{repeats}", "logreg", "--stream", "--epochs", "2"
            )
            scale.append({"store": f"{repeats}x ({result['n train']} train rows)", **result})
            print(scale[-1], flush=True)
            path.unlink()
    load_after = os.getloadavg()[0]
    table = pd.DataFrame(rows).drop(columns="accuracy")
    scale_table = pd.DataFrame(scale).drop(columns="accuracy")
    ratio = scale[1]["peak RSS MiB"] / scale[0]["peak RSS MiB"]
    gaps = {
        clf: rows[2 * i]["accuracy"] - rows[2 * i + 1]["accuracy"]
        for i, clf in enumerate(("logreg", "linear_svm"))
    }
    text = "\n".join(
        [
            "# fit --stream: streamed SGD probe against the in-memory fit",
            "",
            f"{platform.machine()}, {os.cpu_count()} cores, no GPU. Fashion-MNIST Lite0 codes "
            f"({LAYER}, 1280-d), 10,000 train / 10,000 test; 5-fold CV on train; chunks of 4096 "
            f"rows, {DEFAULT_EPOCHS} epochs. Each fit is its own `python -m cnncodes fit` process; peak RSS is "
            f"its ru_maxrss. Load average {load:.1f} at the start, {load_after:.1f} at the end. "
            "Made by bench/stream_fit.py.",
            "",
            format_table(table, "md"),
            "",
            "In-memory minus streamed test accuracy: "
            + ", ".join(f"{clf} {gap * 100:+.2f} points" for clf, gap in gaps.items())
            + ".",
            "",
            "The `--scheduler` row ran on a `distributed.LocalCluster` of 2 worker processes with "
            "1 thread each on the same machine (its peak RSS is the fit process's, which holds "
            "no codes; the workers read them). " + dask_line,
            "",
            "## Peak memory at 10x the rows",
            "",
            "The same streamed logreg (val selection, 2 epochs) on 8,000 train rows and on "
            "them repeated 10 times (80,000), with 2,000 val and 10,000 test rows each.",
            "",
            format_table(scale_table, "md"),
            "",
            f"Peak RSS 10x / 1x: {ratio:.2f}.",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream_fit.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
