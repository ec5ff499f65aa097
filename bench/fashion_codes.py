"""The Fashion-MNIST code store shared by the fit benchmarks (extracted once, then cached).

10,000 train + 10,000 test images (``limit=10000`` per split), EfficientNet-Lite0 codes of
the penultimate layer and three earlier, average-pooled layers. Extraction on a 2-core CPU
takes a long time; it resumes where it stopped when interrupted.
"""

from __future__ import annotations

from pathlib import Path

from cnncodes import extract

__all__ = ["FASHION_MNIST", "FASHION_LAYERS", "fashion_store"]

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# -2 = global_pool.flatten (1280-d); then the last block (320), a mid block expansion (672)
# and the end of stage 4 (112): increasingly generic, less ImageNet-specific features.
FASHION_LAYERS = ("-2", "blocks.6.0.bn3", "blocks.5.0.bn1", "blocks.4.2.add")


def fashion_store(limit: int = 10000, progress: bool = True) -> Path:
    """Path of the cached Fashion-MNIST store, extracting it first when needed."""
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(
            f"Fashion-MNIST not found in {FASHION_MNIST}; "
            "apt-get install dataset-fashion-mnist"
        )
    result = extract(source=str(FASHION_MNIST), limit=limit, layers=FASHION_LAYERS,
                     progress=progress, workers=1, batch_size=64)
    return result.path
