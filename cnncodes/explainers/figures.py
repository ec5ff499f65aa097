"""Matplotlib figures for :mod:`cnncodes.explain` and :mod:`cnncodes.sweep` (Agg, PNG files).

Every figure has a title and a colour bar or a labelled second axis, and is written with
``savefig`` then closed, so that long sessions do not accumulate open figures.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window, also on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# Titles name the user's files; a name in a script the font lacks (CJK, ...) shows boxes
# for those letters instead of a warning per letter on stderr.
warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")

if TYPE_CHECKING:
    import pandas as pd


__all__ = [
    "displayable",
    "plot_activation_grid",
    "plot_attribution",
    "plot_filters",
    "plot_sweep",
]


def _normalisation(transform: Any) -> tuple[Any, Any] | None:
    """``(mean, std)`` of a torchvision preset or of a ``Normalize`` inside a ``Compose``."""
    if getattr(transform, "mean", None) is not None and getattr(transform, "std", None) is not None:
        return transform.mean, transform.std
    for step in getattr(transform, "transforms", []):
        found = _normalisation(step)
        if found is not None:
            return found
    return None


def displayable(image: torch.Tensor, transform: Any) -> np.ndarray:
    """Undo the input normalisation: ``[3, H, W]`` tensor -> ``[H, W, 3]`` floats in [0, 1]."""
    pixels = image.detach().float()
    stats = _normalisation(transform)
    if stats is not None:
        mean = torch.tensor(stats[0], dtype=torch.float32)[:, None, None]
        std = torch.tensor(stats[1], dtype=torch.float32)[:, None, None]
        pixels = pixels * std + mean
    else:  # unknown preprocessing: stretch to the visible range
        pixels = (pixels - pixels.min()) / max(float(pixels.max() - pixels.min()), 1e-12)
    return pixels.clamp(0, 1).permute(1, 2, 0).numpy()


def plot_attribution(
    image: np.ndarray, heat: np.ndarray, path: Path, *, kind: str, title: str, layer: str = ""
) -> None:
    """The network input beside its saliency map, or under its Grad-CAM heat map.

    Args:
        image: the network input as an H x W x 3 array in [0, 1].
        heat: the H x W map (saliency magnitudes, or Grad-CAM scaled to [0, 1]).
        path: the PNG to write.
        kind: ``saliency``, ``integrated-gradients`` or ``gradcam``.
        title: the figure's title.
        layer: the Grad-CAM layer, named in the panel title.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    left.imshow(image)
    left.set_title("network input")
    if kind == "saliency":
        shown = right.imshow(heat, cmap="hot")
        right.set_title("|d score / d pixel|, max over RGB")
        label = "gradient magnitude"
    elif kind == "integrated-gradients":
        shown = right.imshow(heat, cmap="hot")
        right.set_title("|integrated gradients|, summed over RGB")
        label = "attribution magnitude"
    else:
        right.imshow(image)
        shown = right.imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        right.set_title(f"Grad-CAM, layer {layer}")
        label = "Grad-CAM (1 = strongest)"
    figure.colorbar(shown, ax=right, shrink=0.85, label=label)
    for axis in (left, right):
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _grid(count: int) -> tuple[int, int]:
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def plot_activation_grid(
    maps: np.ndarray, channels: np.ndarray, path: Path, *, title: str
) -> None:
    """Feature maps on one shared colour scale, in the order given (most active first)."""
    rows, columns = _grid(len(maps))
    figure, axes = plt.subplots(
        rows, columns, figsize=(1.7 * columns + 1, 1.8 * rows + 0.8), squeeze=False,
        constrained_layout=True,
    )
    low, high = float(maps.min()), float(maps.max())
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k < len(maps):
            axis.imshow(maps[k], cmap="viridis", vmin=low, vmax=high)
            axis.set_title(f"ch {int(channels[k])}, mean {maps[k].mean():.2g}", fontsize=7)
    scale = plt.cm.ScalarMappable(plt.Normalize(low, high), cmap="viridis")
    figure.colorbar(scale, ax=axes, shrink=0.8, label="activation (one scale for all maps)")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_filters(kernels: np.ndarray, path: Path, *, title: str) -> None:
    """First-layer kernels as tiles: RGB for 3 input channels, else their channel mean.

    All tiles share one scale (weight 0 is mid-grey), so tiles can be compared.
    """
    limit = float(np.abs(kernels).max()) or 1.0
    rgb = kernels.shape[1] == 3
    rows, columns = _grid(len(kernels))
    figure, axes = plt.subplots(
        rows, columns, figsize=(0.9 * columns + 1.5, 0.9 * rows + 0.8), squeeze=False,
        constrained_layout=True,
    )
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k >= len(kernels):
            continue
        if rgb:
            axis.imshow(kernels[k].transpose(1, 2, 0) / (2 * limit) + 0.5, interpolation="nearest")
        else:
            axis.imshow(kernels[k].mean(0), cmap="gray", vmin=-limit, vmax=limit,
                        interpolation="nearest")
    scale = plt.cm.ScalarMappable(plt.Normalize(-limit, limit), cmap="gray")
    label = "weight (each colour channel)" if rgb else "weight (mean over input channels)"
    figure.colorbar(scale, ax=axes, shrink=0.8, label=label)
    size = f"{kernels.shape[2]}x{kernels.shape[3]}"
    figure.suptitle(f"{title}\n{len(kernels)} filters of {kernels.shape[1]}x{size}", fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_sweep(table: pd.DataFrame, path: Path, *, title: str) -> None:
    """Accuracy per layer against depth, with the code dimension on a second (log) axis."""
    figure, axis = plt.subplots(figsize=(max(6.5, 0.9 * len(table) + 3), 4.8),
                                constrained_layout=True)
    x = np.arange(len(table))
    dims = axis.twinx()
    dims.bar(x, table["code_dim"], width=0.5, color="0.85", label="code dimension", zorder=0)
    dims.set_yscale("log")
    dims.set_ylabel("code dimension (log scale)")
    axis.set_zorder(dims.get_zorder() + 1)
    axis.patch.set_visible(False)
    styles = {
        "train_accuracy": ("train", ":", "0.5"),
        "cv_accuracy": ("cross-validation", "-.", "tab:green"),
        "val_accuracy": ("val", "-", "tab:blue"),
        "test_accuracy": ("test", "-", "tab:red"),
    }
    for column, (label, style, colour) in styles.items():
        if column in table and table[column].notna().any():
            axis.plot(x, table[column], style, marker="o", color=colour, label=label)
            for xi, value in zip(x, table[column]):
                if column in ("val_accuracy", "test_accuracy") and np.isfinite(value):
                    axis.annotate(f"{value:.3f}", (xi, value), textcoords="offset points",
                                  xytext=(0, 6), ha="center", fontsize=7, color=colour)
    axis.set_xticks(x, [f"{name}\n({dim})" for name, dim in zip(table["layer"], table["code_dim"])],
                    rotation=30, ha="right", fontsize=8)
    axis.set_xlabel("layer, shallow to deep (code dimension)")
    axis.set_ylabel("accuracy")
    axis.grid(axis="y", alpha=0.3)
    handles, labels = axis.get_legend_handles_labels()
    more_handles, more_labels = dims.get_legend_handles_labels()
    axis.legend(handles + more_handles, labels + more_labels, loc="lower right", fontsize=8)
    axis.set_title(title, fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
