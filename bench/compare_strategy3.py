"""Why strategy 3 (frozen body + new linear head) trailed strategy 1 (same codes + logreg).

Both see the same frozen EfficientNet-Lite0 penultimate codes; strategy 1 standardises
them and tunes C on val, strategy 3 trained an unscaled ``nn.Linear`` with AdamW. This
bench trains strategy 3's head *on the very codes of a code store* with cnncodes' own
training pieces (``build_optimizer``, ``build_scheduler``, ``train_epoch``), one recipe
change at a time, and scores it against strategy 1 on the same train / val / test rows.
Augmentation cannot be replayed on stored codes: its effect is measured by real
fine-tuning runs (``--with-finetune``).

Run: python bench/compare_strategy3.py [--train 2000] [--test 2000] [--with-finetune]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cnncodes.data.splits import carve_validation
from cnncodes.data.store import CodeStore
from cnncodes.finetuning.trainer import build_optimizer, build_scheduler, train_epoch
from cnncodes.studies.report import format_table
from cnncodes.studies.significance import wilson_interval

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_codes import FASHION_MNIST, fashion_store  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"


class _Bar:
    def update(self, _n: int) -> None:
        pass

    def set_postfix(self, **_kw: Any) -> None:
        pass


def rows(store: Path, n_train: int, n_test: int) -> dict[str, Any]:
    """Codes of the first ``n_train`` training and ``n_test`` test rows, val carved as
    ``compare`` carves it (20 %, seed 0)."""
    with CodeStore(store) as codes:
        X = codes.codes("global_pool.flatten").astype(np.float32)
        y, split, paths = codes.labels, codes.split, np.asarray(codes.file_paths, dtype=object)
    train = np.flatnonzero(split == "train")[:n_train]
    test = np.flatnonzero(split == "test")[:n_test]
    held = set(carve_validation(paths[train].tolist(), y[train].tolist(), 0.2, 0))
    is_val = np.array([p in held for p in paths[train]])
    return {"X": X, "y": y, "train": train[~is_val], "val": train[is_val], "test": test}


def logreg(data: dict[str, Any]) -> tuple[float, float, str]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = data["X"], data["y"]
    best = (-1.0, None)
    for C in np.logspace(-4, 2, 13):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        model.fit(X[data["train"]], y[data["train"]])
        score = model.score(X[data["val"]], y[data["val"]])
        if score > best[0]:
            best = (score, model)
    model = best[1]
    test = model.score(X[data["test"]], y[data["test"]]) if len(data["test"]) else None
    return best[0], test, f"C={model[-1].C:.3g}"


def head(data: dict[str, Any], *, epochs: int, lr: float, wd: float, scale: bool,
         batch: int = 32, seed: int = 0) -> tuple[float, float, int, float]:
    """A linear head on the codes as strategy 3 trains it: AdamW, warm-up + cosine, best
    epoch by val accuracy. Returns (val at the best epoch, test at it, best epoch)."""
    X, y = torch.from_numpy(data["X"]), torch.from_numpy(data["y"].astype(np.int64))
    if scale:
        mean = X[data["train"]].mean(0)
        std = X[data["train"]].std(0).clamp_min(1e-6)
        X = (X - mean) / std
    torch.manual_seed(seed)
    layer = nn.Linear(X.shape[1], int(y.max()) + 1)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X[data["train"]], y[data["train"]]),
        batch_size=batch, shuffle=True, generator=generator)
    optimizer = build_optimizer([(list(layer.parameters()), lr)], name="adamw", weight_decay=wd)
    scheduler = build_scheduler(optimizer, name="cosine", total_steps=epochs * len(loader))
    best = (-1.0, 0.0, 0, 0.0)
    for epoch in range(1, epochs + 1):
        layer.train()
        loss, _ = train_epoch(layer, loader, optimizer, scheduler, device=torch.device("cpu"),
                              amp=False, scaler=None, bar=_Bar())
        with torch.no_grad():
            val = float((layer(X[data["val"]]).argmax(1) == y[data["val"]]).float().mean())
            test = float((layer(X[data["test"]]).argmax(1) == y[data["test"]]).float().mean()
                         ) if len(data["test"]) else float("nan")
        if val > best[0]:
            best = (val, test, epoch, loss)
    return best


RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("old default: raw codes, lr 1e-3, wd 0.01, 5 epochs", dict(epochs=5, lr=1e-3, wd=0.01, scale=False)),
    ("raw codes, lr 1e-3, 10 epochs", dict(epochs=10, lr=1e-3, wd=0.01, scale=False)),
    ("raw codes, lr 1e-3, 20 epochs", dict(epochs=20, lr=1e-3, wd=0.01, scale=False)),
    ("raw codes, lr 1e-2, 5 epochs", dict(epochs=5, lr=1e-2, wd=0.01, scale=False)),
    ("raw codes, lr 1e-2, 10 epochs", dict(epochs=10, lr=1e-2, wd=0.01, scale=False)),
    ("raw codes, lr 1e-2, 20 epochs", dict(epochs=20, lr=1e-2, wd=0.01, scale=False)),
    ("raw codes, lr 3e-2, 10 epochs", dict(epochs=10, lr=3e-2, wd=0.01, scale=False)),
    ("standardised codes, lr 1e-3, 5 epochs", dict(epochs=5, lr=1e-3, wd=0.01, scale=True)),
    ("standardised codes, lr 1e-3, 20 epochs", dict(epochs=20, lr=1e-3, wd=0.01, scale=True)),
    ("standardised codes, lr 1e-2, 10 epochs", dict(epochs=10, lr=1e-2, wd=0.01, scale=True)),
]
SEEDS = (0, 1, 2)


def table_for(name: str, data: dict[str, Any]) -> pd.DataFrame:
    """Strategy 1, then each head recipe (mean over :data:`SEEDS`) on one data set."""
    scored = "test" if len(data["test"]) else "val"
    n = len(data[scored])
    val, test, params = logreg(data)
    out = [{"data": name, "recipe": f"strategy 1: standardised + logreg ({params} on val)",
            "best_epoch": "", "final_train_loss": None, "val_accuracy": val,
            "test_accuracy": test if scored == "test" else None}]
    for label, options in RECIPES:
        runs = [head(data, seed=seed, **options) for seed in SEEDS]
        vals, tests, epochs, losses = (np.array(column) for column in zip(*runs, strict=True))
        out.append({"data": name, "recipe": f"strategy 3 head: {label}",
                    "best_epoch": "/".join(map(str, epochs)) + f" of {options['epochs']}",
                    "final_train_loss": float(losses.mean()), "val_accuracy": float(vals.mean()),
                    "test_accuracy": float(tests.mean()) if scored == "test" else None})
        print(f"{name}: {label}: val {vals.mean():.4f} test {tests.mean():.4f}", file=sys.stderr)
    frame = pd.DataFrame(out)
    accuracy = frame[f"{scored}_accuracy"]
    low, high = zip(*(wilson_interval(round(a * n), n) for a in accuracy), strict=True)
    frame[f"{scored}_95ci"] = [f"{a:.3f}-{b:.3f}" for a, b in zip(low, high, strict=True)]
    frame[f"n_{scored}"] = n
    return frame


def hymenoptera_rows() -> dict[str, Any] | None:
    """Hymenoptera's penultimate codes (its own train / val split; no test)."""
    from cnncodes import extract
    from cnncodes.studies.compare import earlier_layers

    if not HYMENOPTERA.is_dir():
        return None
    store = extract(source=str(HYMENOPTERA), layers=("-2", *earlier_layers()), progress=True).path
    with CodeStore(store) as codes:
        X = codes.codes("global_pool.flatten").astype(np.float32)
        y, split = codes.labels, codes.split
    return {"X": X, "y": y, "train": np.flatnonzero(split == "train"),
            "val": np.flatnonzero(split == "val"), "test": np.zeros(0, dtype=np.int64)}


FINETUNE_RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("old default: augment, lr 1e-3", dict(augment=True, lr=1e-3)),
    ("no augment, lr 1e-3", dict(augment=False, lr=1e-3)),
    ("augment, lr 1e-2", dict(augment=True, lr=1e-2)),
    ("no augment, lr 1e-2", dict(augment=False, lr=1e-2)),
]


def finetuned(limit: int, epochs: int, work: Path) -> pd.DataFrame:
    """Real ``cnncodes finetune --strategy 3`` runs on Fashion-MNIST (first ``limit`` of each
    split, val carved 20 %): what augmentation and the head's learning rate do end to end."""
    from cnncodes import finetune

    out = []
    for label, options in FINETUNE_RECIPES:
        result = finetune(source=str(FASHION_MNIST), strategy=3, limit=limit, epochs=epochs,
                          patience=0, out=str(work / label.replace(" ", "_").replace(",", "")),
                          progress=False, **options)
        n = int(json.loads((result.run_dir / "finetune.json").read_text())["result"]["n_test"])
        low, high = wilson_interval(round((result.test_accuracy or 0) * n), n)
        out.append({"recipe": f"finetune --strategy 3: {label}, {epochs} epochs",
                    "best_epoch": f"{result.best_epoch} of {epochs}",
                    "final_train_loss": result.history[-1].train_loss,
                    "val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
                    "test_95ci": f"{low:.3f}-{high:.3f}", "n_test": n,
                    "seconds": round(result.seconds)})
        print(out[-1], file=sys.stderr)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--with-finetune", action="store_true",
                        help="also real strategy-3 runs (augmentation on and off; minutes)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the real runs")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"Fashion-MNIST not found in {FASHION_MNIST}")
    texts = []
    data = rows(fashion_store(), args.train, args.test)
    texts.append("## The head on stored codes: Fashion-MNIST\n\n" + format_table(table_for(
        f"fashion-mnist {args.train} train (20 % val) / {args.test} test", data), "md"))
    hymenoptera = hymenoptera_rows()
    if hymenoptera is not None:
        texts.append("## The head on stored codes: hymenoptera (val is the scored split)\n\n"
                     + format_table(table_for("hymenoptera 244 train / 153 val", hymenoptera),
                                    "md"))
    if args.with_finetune:
        with tempfile.TemporaryDirectory(prefix="strategy3-") as work:
            texts.append(
                "## Real runs: cnncodes finetune --strategy 3 on the same Fashion-MNIST images "
                "(seed 0, patience 0; final_train_loss of the last epoch)\n\n"
                + format_table(finetuned(args.train, args.epochs, Path(work)), "md"))
    text = "\n\n".join(texts)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Strategy 3's head on stored codes: which recipe change closes the gap to strategy 1",
        "",
        f"`python bench/compare_strategy3.py --train {args.train} --test {args.test}`: "
        "EfficientNet-Lite0 penultimate codes (1280-d) from code stores; Fashion-MNIST's val "
        "carved as compare carves it (20 % of each class, seed 0), hymenoptera's val is its "
        "own (no test: val is the scored split, and it also picks C and the best epoch, so "
        "it is optimistic). The head is trained with cnncodes' own optimizer (AdamW), "
        "warm-up + cosine schedule and epoch loop, batch 32, best epoch by val accuracy "
        f"(as strategy 3 keeps it); head rows are means over seeds {SEEDS}, their best "
        "epochs listed per seed. The interval is the 95 % Wilson interval of the row's "
        "accuracy.",
        "",
        text,
        "",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch "
        f"{torch.__version__}; load average {os.getloadavg()[0]:.1f} at the end.",
        "",
    ]
    (RESULTS / "compare_strategy3.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
