"""The training loop behind ``cnncodes finetune``: data, epochs, metrics, curves, memory.

Kept apart from :mod:`cnncodes.finetune` (which decides *what* trains) so that each reads
in one sitting. Images are decoded once and kept in memory at the size the transforms
need; the pretrained body that stays frozen runs without autograd (its parameters do not
require gradients), and with the whole body frozen the validation features are computed
once and only the head runs afterwards.
"""

from __future__ import annotations

import csv
import math
import os
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from ..data.sources import ImageSource
from ..progress import Progress
from ..runtime import amp_dtype

__all__ = [
    "EpochRecord",
    "ImageBank",
    "MemoryMonitor",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "head_features",
    "plot_curves",
    "set_train_mode",
    "sized_transform",
    "train_epoch",
    "train_transform",
    "transform_from_spec",
    "transform_spec",
    "write_metrics",
]

# Milder than torchvision's default (0.08, 1): with a few epochs on a few hundred images,
# crops that keep most of the object train faster and generalise as well.
CROP_SCALE = (0.35, 1.0)
BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


@dataclass
class EpochRecord:
    """One row of ``metrics.csv``."""

    epoch: int
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float
    trainable_groups: str
    size: int = 0  # the training images' side in pixels (progressive resizing: per stage)
    val_score: float | None = None  # the val score selection uses, when not accuracy

    @property
    def rank(self) -> tuple[float, float]:
        """What the best epoch maximises: the val score (accuracy unless the run scores
        otherwise), then the lower val loss."""
        return (self.val_accuracy if self.val_score is None else self.val_score, -self.val_loss)


class ImageBank:
    """Decodes each image once and keeps it, shorter side resized to ``side`` pixels.

    ``side=None`` keeps the decoded image as it is, so that the eval transform sees
    exactly what it sees at prediction time (val and test images).

    Unreadable images are skipped and reported in :attr:`skipped` as (path, reason), by
    the bad-image policy of :meth:`cnncodes.sources.ImageSource.read`.
    """

    def __init__(self, source: ImageSource, positions: Sequence[int], side: int | None,
                 *, progress: bool = True, desc: str = "decode") -> None:
        self.source = source
        self.images: dict[int, Image.Image] = {}
        self.skipped: list[tuple[str, str]] = []
        self.positions: list[int] = []
        with Progress(positions, desc=desc, unit="img", enabled=progress, leave=False) as bar:
            for position in bar:
                item = source.items[position]
                image, reason = source.read(item)
                if image is None:
                    self.skipped.append((item.path, reason))
                    bar.set_postfix(skipped=len(self.skipped))
                    continue
                scale = side / min(image.size) if side else 1.0
                if side and scale < 1:
                    size = (max(side, round(image.width * scale)),
                            max(side, round(image.height * scale)))
                    image = image.resize(size, Image.Resampling.BICUBIC)
                self.images[position] = image
                self.positions.append(position)

    def drop(self, positions: Collection[int]) -> None:
        """Forget the images at ``positions`` (moved to another bank)."""
        for position in positions:
            self.images.pop(position, None)
        self.positions = [p for p in self.positions if p in self.images]

    def dataset(self, positions: Sequence[int], transform: Callable) -> torch.utils.data.Dataset:
        """(tensor, label) pairs of the kept images among ``positions`` under ``transform``."""
        return _BankDataset(self, [p for p in positions if p in self.images], transform)


class _BankDataset(torch.utils.data.Dataset):
    def __init__(self, bank: ImageBank, positions: list[int], transform: Callable) -> None:
        self.bank, self.positions, self.transform = bank, positions, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        position = self.positions[index]
        label = self.bank.source.items[position].label
        return self.transform(self.bank.images[position]), label


def transform_spec(transform: Any) -> dict[str, Any]:
    return {
        "crop_size": int(transform.crop_size[0]),
        "resize_size": int(transform.resize_size[0]),
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation.value,
    }


def transform_from_spec(spec: dict[str, Any]) -> ImageClassification:
    return ImageClassification(
        crop_size=spec["crop_size"], resize_size=spec["resize_size"], mean=spec["mean"],
        std=spec["std"], interpolation=InterpolationMode(spec["interpolation"]),
    )


def train_transform(eval_transform: Any, *, augment: bool) -> Callable:
    """Random resized crop + horizontal flip at the eval transform's size and normalisation."""
    if not augment:
        return eval_transform
    crop = int(eval_transform.crop_size[0])
    return T.Compose([
        T.RandomResizedCrop(crop, scale=CROP_SCALE, interpolation=eval_transform.interpolation,
                            antialias=True),
        T.RandomHorizontalFlip(),
        T.PILToTensor(),
        T.ConvertImageDtype(torch.float32),
        T.Normalize(eval_transform.mean, eval_transform.std),
    ])


def sized_transform(eval_transform: Any, size: int, *, augment: bool) -> Callable:
    """The training transform at ``size`` pixels (a stage of progressive resizing).

    The eval transform's crop becomes ``size`` and its resize scales with it (256/224 for
    ImageNet presets), so that a stage without augmentation sees what prediction would at
    that size; with augmentation, a random resized crop of ``size`` pixels.
    """
    crop = int(eval_transform.crop_size[0])
    if size != crop:
        resize = int(eval_transform.resize_size[0])
        eval_transform = ImageClassification(
            crop_size=size, resize_size=max(size, round(size * resize / crop)),
            mean=eval_transform.mean, std=eval_transform.std,
            interpolation=eval_transform.interpolation,
        )
    return train_transform(eval_transform, augment=augment)


def set_train_mode(model: nn.Module, trainable: set[str], *, freeze_bn: bool) -> None:
    """Training mode only where something trains; frozen modules stay in eval mode.

    A frozen module in eval mode keeps its BatchNorm statistics bit-identical and its
    dropout off; ``freeze_bn`` keeps the statistics of trainable BatchNorm layers too.
    """
    model.train()
    for name, module in model.named_modules():
        params = [f"{name}.{p}" if name else p for p, _ in module.named_parameters()]
        frozen = bool(params) and not any(p in trainable for p in params)
        if frozen or (freeze_bn and isinstance(module, BATCHNORM_TYPES)):
            module.eval()


def build_optimizer(
    groups: Sequence[tuple[list[nn.Parameter], float]], *, name: str, weight_decay: float,
) -> torch.optim.Optimizer:
    """One optimizer parameter group per layer group, each with its own learning rate."""
    param_groups = [{"params": params, "lr": lr} for params, lr in groups if params]
    if name == "sgd":
        return torch.optim.SGD(param_groups, momentum=0.9, nesterov=True,
                               weight_decay=weight_decay)
    return torch.optim.AdamW(param_groups, weight_decay=weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, *, name: str, total_steps: int) -> Any:
    """Per-step schedule: ``cosine`` (short warm-up, then cosine to zero), ``onecycle``,
    or ``constant`` (None)."""
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(total_steps, 2), pct_start=0.25,
        )
    if name == "cosine":
        warmup = max(1, total_steps // 20)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


def _autocast(device: torch.device, amp: bool) -> Any:
    if not amp:
        return nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(device))


def train_epoch(
    model: nn.Module, loader: torch.utils.data.DataLoader, optimizer: torch.optim.Optimizer,
    scheduler: Any, *, device: torch.device, amp: bool, scaler: Any, bar: Any,
    class_weights: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One pass over ``loader``; returns (mean loss, accuracy). ``class_weights``: one
    weight per class in the cross-entropy (``class_weight="balanced"``)."""
    loss_fn = nn.CrossEntropyLoss(
        weight=None if class_weights is None else class_weights.to(device))
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = _to_device(images, labels, device)
        with _autocast(device, amp):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += float(loss.detach()) * len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
        bar.update(1)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


def _to_device(images: torch.Tensor, labels: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.to(device, non_blocking=True)
    if device.type == "cuda" and images.dim() == 4:  # not the head's features (--no-augment)
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.as_tensor(labels).to(device)


@torch.no_grad()
def head_features(
    model: nn.Module, head: nn.Module, loader: torch.utils.data.DataLoader,
    *, device: torch.device, amp: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What enters ``head`` for every batch, in eval mode: reused while the body is frozen."""
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    batches = []
    was_training = model.training
    model.eval()
    try:
        for images, labels in loader:
            images, labels = _to_device(images, labels, device)
            with _autocast(device, amp):
                model(images)
            batches.append((captured.pop().float(), labels))
    finally:
        handle.remove()
        model.train(was_training)
    return batches


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Any, *, device: torch.device, amp: bool,
    head: nn.Module | None = None,
) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy and probabilities over ``batches`` in eval mode.

    ``batches`` is a loader of (images, labels), or, with ``head``, the list that
    :func:`head_features` returned (then only the head runs).
    """
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    was_training = model.training
    model.eval()
    total_loss, correct, seen, probabilities = 0.0, 0, 0, []
    try:
        for inputs, labels in batches:
            if head is None:
                inputs, labels = _to_device(inputs, labels, device)
            with _autocast(device, amp):
                logits = (head or model)(inputs).float()
            total_loss += float(loss_fn(logits, labels))
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            probabilities.append(logits.softmax(1).cpu())
    finally:
        model.train(was_training)
    stacked = torch.cat(probabilities) if probabilities else torch.zeros(0)
    return total_loss / max(seen, 1), correct / max(seen, 1), stacked


def write_metrics(path: Path, records: Sequence[EpochRecord]) -> None:
    """Rewrite ``metrics.csv`` with every epoch so far (a killed run keeps its history)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(records[0])))
        writer.writeheader()
        for record in records:
            writer.writerow({k: round(v, 6) if isinstance(v, float) else v
                             for k, v in asdict(record).items()})


def plot_curves(curves: dict[str, Sequence[EpochRecord]], path: Path, *, title: str = "") -> Path:
    """Loss and accuracy per epoch, train dashed and val solid, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for index, (label, records) in enumerate(curves.items()):
        color = f"C{index}"
        epochs = [r.epoch for r in records]
        loss_axis.plot(epochs, [r.train_loss for r in records], "--", color=color,
                       label=f"{label} train")
        loss_axis.plot(epochs, [r.val_loss for r in records], "-o", color=color,
                       label=f"{label} val")
        accuracy_axis.plot(epochs, [r.train_accuracy for r in records], "--", color=color,
                           label=f"{label} train")
        accuracy_axis.plot(epochs, [r.val_accuracy for r in records], "-o", color=color,
                           label=f"{label} val")
        _mark_stages((loss_axis, accuracy_axis), records, color)
    for axis, name in ((loss_axis, "cross-entropy loss"), (accuracy_axis, "accuracy")):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _mark_stages(axes: Sequence[Any], records: Sequence[EpochRecord], color: str) -> None:
    """Progressive resizing: a dotted line and the size where each stage starts."""
    if len({r.size for r in records}) < 2:
        return
    starts = [r for index, r in enumerate(records) if not index or r.size != records[index - 1].size]
    for record in starts:
        for axis in axes:
            axis.axvline(record.epoch - 0.5, color=color, linestyle=":", linewidth=1)
            axis.annotate(f"{record.size}px", (record.epoch - 0.45, 0.98), color=color,
                          xycoords=("data", "axes fraction"), va="top", fontsize=7)


class MemoryMonitor:
    """Peak memory while a block runs: resident set size sampled every 50 ms (CPU) and
    ``torch.cuda.max_memory_allocated`` (GPU), in MiB."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_rss_mib = 0.0
        self.peak_cuda_mib = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mib() -> float:
        try:
            with open("/proc/self/statm", encoding="ascii") as handle:
                pages = int(handle.read().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):  # not Linux: the process-wide maximum
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss_mib = max(self.peak_rss_mib, self.rss_mib())

    @contextmanager
    def track(self) -> Iterator[MemoryMonitor]:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss_mib = self.rss_mib()
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self.peak_rss_mib = max(self.peak_rss_mib, self.rss_mib())
            if torch.cuda.is_available():
                self.peak_cuda_mib = torch.cuda.max_memory_allocated() / 2**20

    def describe(self) -> str:
        text = f"{self.peak_rss_mib:.0f} MiB RSS"
        return text + (f", {self.peak_cuda_mib:.0f} MiB GPU" if self.peak_cuda_mib else "")

