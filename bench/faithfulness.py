"""Faithfulness of saliency, Grad-CAM and integrated gradients: deletion and insertion AUC.

Two models are explained on the first N hymenoptera val photos (taken in turn from ants
and bees): a real ``cnncodes fit`` run (logreg on EfficientNet-Lite0 codes of the train
photos, C chosen on val) as one torch module (``explain --run``), and Lite0's own ImageNet
head (1,000 classes, sharper probabilities). For each photo and map the pixels are
ranked by the map, most important first (ties broken by a seeded random order), and:

- deletion: the top k % of pixels are set to the mean colour (an all-zero network input)
  for k = 0, 4, ..., 100; the curve is the probability of the predicted class; a faithful
  map makes it fall fast (lower AUC is better);
- insertion: starting from a heavily blurred photo (Gaussian, sigma 10 px), the top k % of
  the original pixels are put back; a faithful map makes it rise fast (higher AUC is
  better) (Petsiuk, Das & Saenko 2018, RISE).

The random-map baseline ranks the pixels by a seeded random permutation per photo. AUC is
the trapezoid area under the curve over the deleted/inserted fraction. The table gives the
mean over photos with a 95 % t interval, and the share of photos on which the map beats
the random map (with a 95 % Wilson interval). Timing is reported, never asserted.

Run: python bench/faithfulness.py [--images 40] [--steps 25] [--ig-steps 64]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF

from cnncodes import extract, fit_pipeline, load_backbone
from cnncodes.data.decode import decode_image
from cnncodes.data.store import CodeStore
from cnncodes.explainers.explain import ExplainConfig, attribute, backbone_from_run
from cnncodes.nets.backbones import Backbone

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
METHODS = ("saliency", "gradcam", "integrated-gradients", "random")


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def curves(model: torch.nn.Module, x: torch.Tensor, blurred: torch.Tensor, order: torch.Tensor,
           target: int, steps: int) -> tuple[float, float]:
    """Deletion and insertion AUC for one pixel ranking (``order``: flat indices, best first)."""
    n_pixels = order.numel()
    ranks = torch.empty(n_pixels, dtype=torch.long)
    ranks[order] = torch.arange(n_pixels)
    fractions = torch.linspace(0, 1, steps + 1)
    masks = (ranks[None, :] < (fractions[:, None] * n_pixels).round()).view(-1, 1, *x.shape[-2:])
    masks = masks.to(x.dtype)
    deleted = x * (1 - masks)  # deleted pixels become 0: the normalisation's mean colour
    inserted = blurred * (1 - masks) + x * masks
    with torch.no_grad():
        probabilities = [model(batch).softmax(1)[:, target] for batch in
                         torch.cat([deleted, inserted]).split(13)]
    values = torch.cat(probabilities).double().numpy()
    dx = 1.0 / steps
    auc = [float(np.trapezoid(values[i * (steps + 1):(i + 1) * (steps + 1)], dx=dx)) for i in (0, 1)]
    return auc[0], auc[1]


def ranking(heat: np.ndarray, generator: np.random.Generator) -> torch.Tensor:
    flat = heat.reshape(-1).astype(np.float64)
    jitter = generator.random(flat.size)  # ties broken at random, never by position
    return torch.from_numpy(np.lexsort((jitter, -flat)).copy())


def fit_run(work: Path) -> Path:
    store = extract(source=str(HYMENOPTERA), out=str(work / "codes.h5"), progress=False).path
    return fit_pipeline(store, clf="logreg", out=work / "run", progress=False).run_dir


def val_photos(run: Path, n: int) -> list[Path]:
    with CodeStore(run.parent / "codes.h5") as store:
        paths = [p for p, s in zip(store.file_paths, np.asarray(store.split).astype(str), strict=True)
                 if s == "val"]
    ants = [p for p in paths if "/ants/" in p]
    bees = [p for p in paths if "/bees/" in p]
    mixed = [p for pair in zip(ants, bees, strict=False) for p in pair]
    return [HYMENOPTERA / p for p in mixed[:n]]


def measure(backbone: Backbone, photos: list[Path], steps: int,
            ig_steps: int) -> dict[str, dict[str, list[float]]]:
    model = backbone.model
    generator = np.random.default_rng(0)
    scores: dict[str, dict[str, list[float]]] = {m: {"deletion": [], "insertion": [], "seconds": []}
                                                 for m in METHODS}
    for number, photo in enumerate(photos, 1):
        x = backbone.transform(decode_image(photo)).unsqueeze(0)
        blurred = TF.gaussian_blur(x, kernel_size=61, sigma=10.0)
        with torch.no_grad():
            target = int(model(x).argmax(1))
        for method in METHODS:
            started = time.perf_counter()
            if method == "random":
                heat = generator.random(x.shape[-2:])
            else:
                config = ExplainConfig(kind=method, images=(str(photo),), target=str(target),
                                       steps=ig_steps)
                heat = attribute(config, backbone, x).map
            scores[method]["seconds"].append(time.perf_counter() - started)
            deletion, insertion = curves(model, x, blurred, ranking(heat, generator), target, steps)
            scores[method]["deletion"].append(deletion)
            scores[method]["insertion"].append(insertion)
        print(f"  {number}/{len(photos)} {photo.name}", flush=True)
    return scores


def mean_ci(values: np.ndarray) -> str:
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ({values.mean() - half:.3f}-{values.mean() + half:.3f})"


def share(wins: int, n: int) -> str:
    low, high = wilson(wins, n)
    return f"{wins}/{n} ({low:.2f}-{high:.2f})"


def table(scores: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| map | deletion AUC (lower is better) | beats random (deletion) | "
             "insertion AUC (higher is better) | beats random (insertion) | s per map |",
             "|:--|--:|--:|--:|--:|--:|"]
    random_del = np.asarray(scores["random"]["deletion"])
    random_ins = np.asarray(scores["random"]["insertion"])
    for method in METHODS:
        deletion = np.asarray(scores[method]["deletion"])
        insertion = np.asarray(scores[method]["insertion"])
        n = len(deletion)
        beat_del = "-" if method == "random" else share(int((deletion < random_del).sum()), n)
        beat_ins = "-" if method == "random" else share(int((insertion > random_ins).sum()), n)
        seconds = np.mean(scores[method]["seconds"])
        lines.append(f"| {method} | {mean_ci(deletion)} | {beat_del} | {mean_ci(insertion)} | "
                     f"{beat_ins} | {seconds:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40, help="val photos (half ants, half bees)")
    parser.add_argument("--steps", type=int, default=25, help="points of each curve minus one")
    parser.add_argument("--ig-steps", type=int, default=64, help="integrated-gradients steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    sections, timings = [], []
    with tempfile.TemporaryDirectory(prefix="faithfulness-") as scratch:
        run = fit_run(Path(scratch))
        photos = val_photos(run, args.images)
        models = {"fit run: logreg on Lite0 codes (ants, bees)": backbone_from_run(run),
                  "Lite0 ImageNet head (1,000 classes)": load_backbone()}
        for title, backbone in models.items():
            started = time.perf_counter()
            print(f"{title}:", flush=True)
            scores = measure(backbone, photos, args.steps, args.ig_steps)
            timings.append(f"{title}: {time.perf_counter() - started:.0f} s")
            sections.append(f"## {title}\n\n{table(scores)}")
    notes = (
        f"n = {len(photos)} hymenoptera val photos; target: each model's predicted class; "
        f"curves of {args.steps + 1} points; integrated gradients: {args.ig_steps} steps from "
        f"black; Grad-CAM at the last conv map. Intervals: mean with 95 % t interval; shares "
        f"with 95 % Wilson interval.\n\nMachine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"shared with other jobs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{'; '.join(timings)} (timings are load-dependent)."
    )
    out = "# Faithfulness: deletion and insertion AUC\n\n" + "\n\n".join(sections) + f"\n\n{notes}\n"
    print(out)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "faithfulness.md").write_text(out, encoding="utf-8")


if __name__ == "__main__":
    main()
