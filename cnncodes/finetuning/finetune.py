"""Strategies 3 and 4: fine-tune a pretrained backbone in PyTorch.

Strategy 3 freezes every pretrained layer and trains a new classifier head from the
pretrained starting point (``replace_fc=2`` rebuilds the last two FC layers, the AlexNet
exercise). Strategy 4 also fine-tunes the later layers (``unfreeze_from``), puts a small
MLP head on top, gives earlier layer groups lower learning rates, and can unfreeze them
one group per epoch. A run folder holds ``model.pt`` (best epoch), ``metrics.csv``,
``finetune.json`` and ``curves.png``; :func:`load_run` and :func:`predict_run` read it back.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._version import __version__
from ..data.decode import display_path
from ..data.sources import ImageDataset, ImageSource, collate_items, open_source
from ..data.splits import carve_validation, split_positions, validation_record
from ..errors import CnnCodesError
from ..nets.backbones import DEFAULT_MODEL, Backbone, load_backbone
from ..nets.layers import node_names
from ..nets.surgery import (
    HEAD_GROUP,
    LayerGroup,
    install_head,
    layer_groups,
    unfrozen_groups,
)
from ..paths import FINETUNE_FILE, PREDICTIONS_FILE, default_runs_dir
from ..progress import Progress, log
from ..runtime import amp_dtype, resolve_device, setup_runtime
from ..scoring import balanced_weights, check_class_weight, check_scoring, score
from .trainer import (
    EpochRecord,
    ImageBank,
    build_optimizer,
    build_scheduler,
    evaluate,
    head_features,
    plot_curves,
    set_train_mode,
    sized_transform,
    train_epoch,
    transform_from_spec,
    transform_spec,
    write_metrics,
)

__all__ = [
    "FINETUNE_FILE",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "load_run",
    "parse_head",
    "parse_sizes",
    "predict_run",
]

CHECKPOINT_FILE = "model.pt"
STRATEGIES = (3, 4)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
# A new linear layer on a frozen body is a convex problem far from its optimum at 1e-3
# after a few epochs (train loss 0.44 vs 0.11 at 1e-2 on Fashion-MNIST codes).
LINEAR_HEAD_LR = 1e-2
DEFAULT_HEAD = {3: (), 4: (256,)}
MIN_SIZE = 32  # the last feature map of a 1/32-resolution network stays one pixel or more


def _int_list(text: str, option: str, what: str, example: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise CnnCodesError(
            f"{option} {text!r} is not a comma-separated list of {what}; give e.g. {example}."
        ) from None


def parse_head(text: str | None) -> tuple[int, ...] | None:
    """``"512,256"`` -> ``(512, 256)``; ``""``/``"none"`` -> ``()``; ``None`` -> ``None``."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none", "linear"):
        return ()
    return _int_list(text, "--head", "layer sizes",
                     "--head 512,256 (or --head none for a single linear layer)")


def parse_sizes(text: str | None) -> tuple[int, ...] | None:
    """``"128,160,224"`` -> ``(128, 160, 224)``; ``None`` or ``""`` -> ``None`` (one size)."""
    if text is None or not text.strip():
        return None
    return _int_list(text, "--sizes", "image sizes in pixels", "--sizes 128,160,224")


def stage_epochs(sizes: tuple[int, ...], epochs: int) -> list[int]:
    """Progressive resizing: ``epochs`` shared out over the ``sizes`` as evenly as possible,
    the remainder to the last (largest) stages: 7 over 3 sizes -> 2, 2, 3."""
    share, extra = divmod(epochs, len(sizes))
    return [share + (index >= len(sizes) - extra) for index in range(len(sizes))]


def _check_sizes(sizes: tuple[int, ...], epochs: int) -> None:
    """One error naming the fix for sizes that are not ascending sizes of enough pixels,
    or more stages than epochs."""
    shown = ",".join(map(str, sizes))
    if not sizes or any(not isinstance(s, int) or s < MIN_SIZE for s in sizes):
        raise CnnCodesError(
            f"--sizes must be image sizes of at least {MIN_SIZE} pixels, e.g. 128,160,224; "
            f"got {shown!r}."
        )
    if any(later <= earlier for earlier, later in zip(sizes, sizes[1:], strict=False)):
        raise CnnCodesError(
            f"--sizes must go up, smallest first, each size once, e.g. 128,160,224; got {shown!r}."
        )
    if len(sizes) > epochs:
        raise CnnCodesError(
            f"--sizes {shown} has {len(sizes)} stages but --epochs is {epochs}; give --epochs "
            f"{len(sizes)} or more (the epochs are shared out over the stages)."
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """What :func:`finetune` trains, how, and where the run goes.

    Attributes:
        source: image folder, CSV manifest or idx folder (see :func:`open_source`). Its
            ``val`` split is used for early stopping; without one (only ``train`` and
            ``test``, or no split at all), ``val_fraction`` of the readable training images
            is held out, stratified by class and chosen by ``seed`` (see
            :func:`cnncodes.data.splits.carve_validation`; ``compare`` holds out the same).
        strategy: 3 (frozen body, new head) or 4 (later layers fine-tuned, MLP head).
        model, weights: the backbone, as for ``cnncodes extract``.
        unfreeze_from: strategy 4: the first node that trains (node name, index into the
            eval node list, or a container module such as ``layer4``/``blocks.5``, whose
            first node is meant). None: the last two layer groups.
        head: hidden sizes of the MLP head; ``()`` a single linear layer; None the
            strategy's default (3: linear, 4: one hidden layer of 256).
        replace_fc: how many of the last linear layers to rebuild (AlexNet: 2 or 3).
        dropout: dropout between the hidden layers of the head.
        epochs: most epochs to train (early stopping may end sooner).
        batch_size: images per step.
        lr: learning rate of the head; default 1e-3 (AdamW) or 1e-2 (SGD), and 1e-2 with
            AdamW for strategy 3's single linear layer, which at 1e-3 was still far from
            trained after 5 epochs (bench/results/compare_strategy3.md).
        lr_decay: each layer group below the head gets ``lr_decay`` times the rate of the
            group above it (discriminative learning rates).
        optimizer: ``adamw`` or ``sgd`` (Nesterov momentum 0.9).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        schedule: ``cosine`` (warm-up then cosine decay), ``onecycle`` or ``constant``.
        augment: random resized crop + horizontal flip for training images; None: on for
            strategy 4, off for 3 (whose head then trains on the frozen body's codes of
            the images as they are predicted, computed once; crops cost strategy 3 1.2-1.5
            points of test accuracy on Fashion-MNIST, bench/results/compare_strategy3.md).
        patience: stop after this many epochs without a better val score (0: never).
        scoring: what the best epoch maximises on val: ``accuracy``, ``balanced_accuracy``
            or ``macro_f1`` (:mod:`cnncodes.scoring`); ties go to the lower val loss.
        class_weight: ``balanced``: a cross-entropy weighted by ``n / (classes * count)``
            of the training images per class; ``none``: every image alike.
        progressive: strategy 4: train the head alone first, then unfreeze one more layer
            group (from the top) at the start of each epoch.
        sizes: progressive resizing: train at each of these image sizes in turn (ascending,
            pixels), the same model, optimizer and learning-rate schedule carried across;
            ``epochs`` is shared out over the stages (:func:`stage_epochs`). Validation,
            test, the checkpoint and predictions stay at the model's own size, so the best
            epoch is chosen over every stage on one footing; early stopping acts only in
            the last stage. None: every epoch at the model's own size.
        freeze_bn: keep the BatchNorm statistics of trainable layers as pretrained.
        val_fraction: share of the training images held out when the source has no val.
        val_paths: the images to hold out instead (paths relative to the source, as in a
            code store; ``compare`` passes its carve-out); only for sources without val.
        limit: first N images of each split only (quick experiments).
        out: run folder; default ``cache/runs/<source>-<model>-strategy<N>-<time>``.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
        amp: mixed precision; default on for CUDA.
        seed: makes CPU runs repeatable (initialisation, shuffling, augmentation) and
            chooses the held-out validation images when the source has no val.
        progress: show progress bars.
    """

    source: str
    strategy: int = 3
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    unfreeze_from: str | None = None
    head: tuple[int, ...] | None = None
    replace_fc: int = 1
    dropout: float = 0.2
    epochs: int = 5
    batch_size: int = 32
    lr: float | None = None
    lr_decay: float = 0.3
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    schedule: str = "cosine"
    augment: bool | None = None
    patience: int = 3
    scoring: str = "accuracy"
    class_weight: str = "none"
    progressive: bool = False
    sizes: tuple[int, ...] | None = None
    freeze_bn: bool = True
    val_fraction: float = 0.2
    val_paths: tuple[str, ...] | None = None
    limit: int | None = None
    out: str | None = None
    device: str = "auto"
    amp: bool | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise CnnCodesError(
                f"strategy must be 3 (frozen body, new head) or 4 (fine-tune later layers); "
                f"got {self.strategy!r}. Strategies 1 and 2 are 'cnncodes fit' on codes."
            )
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise CnnCodesError(f"--epochs must be at least 1; got {self.epochs!r}.")
        if self.head is not None and any(not isinstance(s, int) or s < 1 for s in self.head):
            raise CnnCodesError(
                f"--head sizes must be positive integers, e.g. 512,256; got "
                f"{','.join(map(str, self.head))!r}."
            )
        if self.strategy == 3 and (self.unfreeze_from is not None or self.progressive):
            raise CnnCodesError(
                "--unfreeze-from and --progressive apply to strategy 4; strategy 3 keeps "
                "every pretrained layer frozen. Use --strategy 4."
            )
        if self.sizes is not None:
            object.__setattr__(self, "sizes", tuple(self.sizes))
            _check_sizes(self.sizes, self.epochs)
        if not isinstance(self.replace_fc, int) or self.replace_fc < 1:
            raise CnnCodesError(f"--replace-fc must be 1 or more; got {self.replace_fc!r}.")
        if self.batch_size < 1:
            raise CnnCodesError(f"--batch-size must be at least 1; got {self.batch_size!r}.")
        if self.lr is not None and not self.lr > 0:
            raise CnnCodesError(f"--lr must be a positive number; got {self.lr!r}.")
        if not 0 < self.lr_decay <= 1:
            raise CnnCodesError(f"--lr-decay must be in (0, 1]; got {self.lr_decay!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise CnnCodesError(
                f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}."
            )
        if self.schedule not in SCHEDULES:
            raise CnnCodesError(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}.")
        if not 0 <= self.dropout < 1:
            raise CnnCodesError(f"--dropout must be in [0, 1); got {self.dropout!r}.")
        if self.patience < 0:
            raise CnnCodesError(f"--patience must be 0 (off) or more; got {self.patience!r}.")
        check_scoring(self.scoring)
        check_class_weight(self.class_weight)
        if self.augment is None:
            object.__setattr__(self, "augment", self.strategy == 4)
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise CnnCodesError(
                f"--val-fraction must be in (0, 1), e.g. 0.2; got {self.val_fraction!r}."
            )
        if self.val_paths is not None:
            if isinstance(self.val_paths, str) or not self.val_paths:
                raise CnnCodesError(
                    "val_paths must be a non-empty sequence of image paths (relative to the "
                    f"source), or None; got {self.val_paths!r}."
                )
            object.__setattr__(self, "val_paths", tuple(sorted(map(str, self.val_paths))))

    @property
    def head_sizes(self) -> tuple[int, ...]:
        return DEFAULT_HEAD[self.strategy] if self.head is None else tuple(self.head)

    @property
    def head_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        linear = self.strategy == 3 and not self.head_sizes and self.replace_fc == 1
        return LINEAR_HEAD_LR if linear and self.optimizer == "adamw" else DEFAULT_LR[self.optimizer]


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes:
        run_dir: the run folder.
        strategy: 3 or 4.
        trained: what was trained, in words (``head Linear(1280->2)``, ``blocks.5.. + head``).
        trainable_params, total_params: parameter counts of the final model.
        groups: per layer group: name, learning rate, trainable parameter count.
        history: one :class:`EpochRecord` per epoch run.
        best_epoch: the epoch whose weights were kept (1-based).
        val_accuracy, val_loss, train_accuracy: at the best epoch.
        test_accuracy: on the test split with the best weights, None without one.
        seconds: wall time of the whole run (decoding, training, evaluation).
        skipped: (path, reason) of images that could not be used.
        validation: what early stopping and the best epoch were chosen on (see
            :func:`cnncodes.data.splits.validation_record`; the paths when carved or given).
        stages: per training size, in order (one without ``sizes``): ``size``, ``epochs``
            planned, ``epochs_run``, ``first_epoch``, ``last_epoch``, ``val_accuracy`` (the
            stage's best), ``last_val_accuracy``, ``seconds``; see :func:`stage_records`.
    """

    run_dir: Path
    strategy: int
    trained: str
    trainable_params: int
    total_params: int
    groups: list[dict[str, Any]]
    history: list[EpochRecord]
    best_epoch: int
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def curves_path(self) -> Path:
        return self.run_dir / "curves.png"


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _run_dir(config: FinetuneConfig, source: ImageSource) -> Path:
    if config.out:
        return Path(config.out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{source.name}-{config.model.replace(':', '_')}-strategy{config.strategy}-{stamp}"
    return default_runs_dir() / name


def _describe(model: nn.Module, head_path: str, trainable_groups: list[str], start: str) -> str:
    head = model.get_submodule(head_path)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    shape = "->".join([str(linears[0].in_features)] + [str(m.out_features) for m in linears])
    body = f"{start}.. ({', '.join(trainable_groups)}) + " if trainable_groups else ""
    return f"{body}head MLP {shape}" if len(linears) > 1 else f"{body}head Linear {shape}"


@dataclass
class _Built:
    """The backbone with its new head, on its source, and which of its layers may train.

    Attributes:
        source, splits: the opened source and its labelled positions per split.
        backbone: the pretrained network; ``backbone.model`` carries the new head.
        head_path: where the head sits in the model.
        groups: the layer groups, earliest first, the head last.
        body_trainable: the parameter names that train, per body layer group (strategy 4).
        start: the first node that trains, ``(head only)`` for strategy 3.
        order: the body groups that train, nearest the head first (unfreezing order).
        params: the model's parameters by name.
    """

    source: ImageSource
    splits: dict[str, list[int]]
    backbone: Backbone
    head_path: str
    groups: list[LayerGroup]
    body_trainable: dict[str, list[str]]
    start: str
    order: list[str]
    params: dict[str, nn.Parameter]

    @property
    def model(self) -> nn.Module:
        return self.backbone.model


class _Plan(NamedTuple):
    """How the model trains: a learning rate and parameters per group, where, with what."""

    learning_rates: dict[str, float]
    trainable_by_group: dict[str, list[str]]
    device: torch.device
    amp: bool
    optimizer: torch.optim.Optimizer


@dataclass
class _Images:
    """The decoded images of every split, and what became of them."""

    banks: dict[str, ImageBank]
    splits: dict[str, list[int]]
    validation: dict[str, Any]
    skipped: list[tuple[str, str]]
    sizes: dict[str, int]
    eval_transform: Any
    batch_size: int
    generator: torch.Generator

    def loader(self, split: str, transform: Any, shuffle: bool) -> torch.utils.data.DataLoader:
        """``split`` shuffled by the seeded generator in ``batch_size`` batches (no last batch
        of one), or in order, 64 at a time."""
        dataset = self.banks[split].dataset(self.splits[split], transform)
        n = len(dataset)  # type: ignore[arg-type]  # map-style datasets have __len__
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.batch_size if shuffle else 64,
            shuffle=shuffle, generator=self.generator if shuffle else None,
            drop_last=shuffle and n > self.batch_size and n % self.batch_size == 1,
        )


class _Batches(NamedTuple):
    """What each epoch trains and validates on.

    ``head`` is set when the body never trains: ``val_batches`` (and, without
    augmentation, ``train_batches``, with ``train_model`` the head) then hold head features.
    """

    train_model: nn.Module
    train_batches: Any
    val_batches: Any
    head: nn.Module | None
    size: int = 0  # the training images' side in pixels


class _Training(NamedTuple):
    """The epochs run, and the one whose weights the checkpoint holds."""

    history: list[EpochRecord]
    best_epoch: int
    checkpoint: Path


def finetune(config: FinetuneConfig | None = None, /, **options: Any) -> FinetuneResult:
    """Fine-tune a pretrained backbone on ``config.source`` with strategy 3 or 4.

    Call as ``finetune(FinetuneConfig(...))`` or ``finetune(source=..., strategy=4, ...)``.

    Raises:
        CnnCodesError: bad options, an unknown ``unfreeze_from`` layer, a source without
            labelled images, a model without a linear classifier.
    """
    if config is None:
        config = FinetuneConfig(**options)
    elif options:
        raise TypeError("Pass either a FinetuneConfig or keyword options, not both.")
    started = time.perf_counter()
    generator = _seed_everything(config.seed)
    built = _build(config)
    plan = _plan(config, built)
    run_dir = _run_dir(config, built.source)
    run_dir.mkdir(parents=True, exist_ok=True)
    images = _decode(config, built, generator)
    training = _train(config, built, plan, images, run_dir)
    _load_best(built, plan, training.checkpoint)
    scores, test_accuracy = _write_predictions(built, plan, images, run_dir)
    result = _result(config, built, plan, images, training, test_accuracy,
                     run_dir=run_dir, started=started)
    _save_run(config, built, plan, images, result, scores)
    return result


def _build(config: FinetuneConfig) -> _Built:
    """Open the source, load the backbone, put the new head on it and pick what trains.

    Raises:
        CnnCodesError: ``val_paths`` for a source with its own val split, an unknown
            ``unfreeze_from`` layer, a model without a linear classifier.
    """
    source = open_source(config.source, limit=config.limit, require_labels=True)
    splits = split_positions(source)
    if splits["val"] and config.val_paths is not None:
        raise CnnCodesError(
            f"val_paths hold images out of the training set, but {config.source!r} has its "
            "own val split; leave val_paths out to use it."
        )
    backbone = load_backbone(config.model, config.weights)
    names = node_names(backbone)
    model = backbone.model
    head_path = install_head(
        model, len(source.classes), hidden=config.head_sizes, replace_fc=config.replace_fc,
        dropout=config.dropout,
    )
    groups = layer_groups(model, head_path, names)
    if config.strategy == 4:
        body_trainable, start = unfrozen_groups(backbone, groups, config.unfreeze_from, names)
    else:
        body_trainable, start = {}, "(head only)"
    # Unfreezing order for progressive training: the group nearest the head first.
    order = [g.name for g in reversed(groups[:-1]) if g.name in body_trainable]
    return _Built(source, splits, backbone, head_path, groups, body_trainable, start, order,
                  dict(model.named_parameters()))


def _plan(config: FinetuneConfig, built: _Built) -> _Plan:
    """Discriminative learning rates per group, the device, and the optimizer.

    Every parameter is frozen here; each epoch unfreezes those that train (:func:`_unfreeze`).
    """
    learning_rates = {HEAD_GROUP: config.head_lr}
    for depth, name in enumerate(built.order, start=1):
        learning_rates[name] = config.head_lr * config.lr_decay**depth
    trainable_by_group = {HEAD_GROUP: built.groups[-1].params, **built.body_trainable}

    runtime = setup_runtime(config.device, config.amp)  # the same set-up as extraction
    device, amp = runtime.device, runtime.precision != torch.float32
    model = runtime.place(built.model)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    optimizer = build_optimizer(
        [([built.params[p] for p in trainable_by_group[g]], learning_rates[g])
         for g in [*reversed(built.order), HEAD_GROUP]],
        name=config.optimizer, weight_decay=config.weight_decay,
    )
    return _Plan(learning_rates, trainable_by_group, device, amp, optimizer)


def _decode(config: FinetuneConfig, built: _Built, generator: torch.Generator) -> _Images:
    """Decode every split (holding a validation set out when needed) and log the sizes."""
    eval_transform = built.backbone.transform
    splits = built.splits
    banks, validation = _decode_splits(built.source, splits, config, _bank_side(config, eval_transform))
    kept = {p for bank in banks.values() for p in bank.positions}
    skipped = [entry for bank in banks.values() for entry in bank.skipped]
    sizes = {split: len([p for p in splits[split] if p in kept]) for split in splits}
    log("finetune", f"strategy {config.strategy}: {sizes['train']} training, {sizes['val']} "
        f"validation ({validation['origin']}), {sizes['test']} test images",
        enabled=config.progress)
    return _Images(banks, splits, validation, skipped, sizes, eval_transform,
                   config.batch_size, generator)


def _bank_side(config: FinetuneConfig, eval_transform: Any) -> int:
    """The shorter side training images are decoded to: the eval transform's resize, or
    more when a stage of ``sizes`` crops larger than the eval transform does."""
    resize, crop = int(eval_transform.resize_size[0]), int(eval_transform.crop_size[0])
    return max(resize, math.ceil(max(config.sizes or (crop,)) * resize / crop))


def _epoch_sizes(config: FinetuneConfig, eval_transform: Any) -> list[int]:
    """The training size of each epoch: the stages of ``sizes`` in turn, else the eval crop."""
    if not config.sizes:
        return [int(eval_transform.crop_size[0])] * config.epochs
    counts = stage_epochs(config.sizes, config.epochs)
    return [size for size, count in zip(config.sizes, counts, strict=True) for _ in range(count)]


def _batches(config: FinetuneConfig, built: _Built, plan: _Plan, images: _Images, size: int,
             val_batches: Any = None) -> _Batches:
    """The train batches at ``size`` pixels and the val batches (at the eval transform's
    size; ``val_batches`` when given, from an earlier stage); with the body frozen
    throughout, head features instead."""
    train_loader = images.loader(
        "train", sized_transform(images.eval_transform, size, augment=bool(config.augment)), True
    )
    if built.order:  # the body trains: every epoch runs the whole model
        if val_batches is None:
            val_batches = images.loader("val", images.eval_transform, False)
        return _Batches(built.model, train_loader, val_batches, None, size)
    model, head = built.model, built.model.get_submodule(built.head_path)
    # the body never changes: its val features are computed once
    if val_batches is None:
        val_loader = images.loader("val", images.eval_transform, False)
        val_batches = head_features(model, head, val_loader, device=plan.device, amp=plan.amp)
    if config.augment:
        return _Batches(model, train_loader, val_batches, head, size)
    # nor do its train features without augmentation
    features = head_features(model, head, train_loader, device=plan.device, amp=plan.amp)
    dataset = torch.utils.data.TensorDataset(
        torch.cat([f for f, _ in features]).cpu(), torch.cat([y for _, y in features]).cpu()
    )
    train_batches = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, generator=images.generator
    )
    return _Batches(head, train_batches, val_batches, head, size)


def _train(
    config: FinetuneConfig, built: _Built, plan: _Plan, images: _Images, run_dir: Path,
) -> _Training:
    """Run the epochs, stage by stage with ``sizes``; keep the best checkpoint (by the val
    ``config.scoring``, then val loss) over every stage, all validated at the model's own size.

    Writes ``metrics.csv`` after every epoch; stops after ``config.patience`` epochs
    without improvement (when not 0). With ``sizes`` the count starts again at the last
    stage, and earlier stages always run their epochs: the run ends at the final size. The
    optimizer and one learning-rate schedule over all the epochs carry across stages (a
    stage has as many steps as any epoch: the same images, a new size).
    """
    epoch_sizes = _epoch_sizes(config, images.eval_transform)
    batches = _batches(config, built, plan, images, epoch_sizes[0])
    steps = config.epochs * len(batches.train_batches)
    scheduler = build_scheduler(plan.optimizer, name=config.schedule, total_steps=steps)
    # Loss scaling is for float16 only; bfloat16 has float32's range.
    scaler = (torch.amp.GradScaler("cuda")
              if plan.amp and amp_dtype(plan.device) == torch.float16 else None)
    history: list[EpochRecord] = []
    best: tuple[float, float] = (-1.0, -float("inf"))  # EpochRecord.rank of the best epoch
    best_epoch, waited = 0, 0
    checkpoint = run_dir / CHECKPOINT_FILE
    weights, val_labels = _class_weights(config, built, images), _labels(built, images, "val")
    for epoch, size in enumerate(epoch_sizes, start=1):
        if size != batches.size:  # the next stage of progressive resizing
            batches, waited = _batches(config, built, plan, images, size, batches.val_batches), 0
        record = _epoch(config, built, plan, batches, epoch, scheduler=scheduler, scaler=scaler,
                        class_weights=weights, val_labels=val_labels)
        history.append(record)
        write_metrics(run_dir / "metrics.csv", history)
        if record.rank > best:
            best, best_epoch, waited = record.rank, epoch, 0
            _save(built.model, checkpoint)
        else:
            waited += 1
            if config.patience and waited >= config.patience and size == epoch_sizes[-1]:
                break
    return _Training(history, best_epoch, checkpoint)


def _labels(built: _Built, images: _Images, split: str) -> np.ndarray:
    """Class indices of a split's decoded images, in the order its loaders give them."""
    bank = images.banks[split]
    return np.array([built.source.items[p].label for p in images.splits[split]
                     if p in bank.images], dtype=np.int64)


def _class_weights(config: FinetuneConfig, built: _Built, images: _Images) -> torch.Tensor | None:
    """``balanced`` weights of the training images' classes, or None (``class_weight`` none)."""
    if config.class_weight == "none":
        return None
    labels = _labels(built, images, "train")
    return torch.as_tensor(balanced_weights(labels, len(built.source.classes)), dtype=torch.float32)


def _unfreeze(config: FinetuneConfig, built: _Built, plan: _Plan, epoch: int) -> list[str]:
    """Make the head and the body groups this epoch trains trainable; return those groups.

    With ``progressive``, epoch N trains the N-1 body groups nearest the head.
    """
    unfrozen = built.order[: epoch - 1] if config.progressive else built.order
    active = set(plan.trainable_by_group[HEAD_GROUP])
    for name in unfrozen:
        active.update(plan.trainable_by_group[name])
    for name, parameter in built.params.items():
        parameter.requires_grad_(name in active)
    set_train_mode(built.model, active, freeze_bn=config.freeze_bn)
    return unfrozen


def _epoch(
    config: FinetuneConfig, built: _Built, plan: _Plan, batches: _Batches, epoch: int,
    *, scheduler: Any, scaler: Any, class_weights: torch.Tensor | None = None,
    val_labels: np.ndarray | None = None,
) -> EpochRecord:
    """Train one epoch, then score it on the val split (``val_score`` by ``config.scoring``
    when that is not accuracy; ``val_labels`` are the val images' classes)."""
    epoch_started = time.perf_counter()
    unfrozen = _unfreeze(config, built, plan, epoch)
    device, amp = plan.device, plan.amp
    desc = f"strategy {config.strategy} epoch {epoch}/{config.epochs}"
    desc += f" at {batches.size}px" if config.sizes else ""
    # One bar per epoch on a terminal; elsewhere one line per epoch, with its scores.
    with Progress(total=len(batches.train_batches), unit="step", enabled=config.progress,
                  desc=desc) as bar:
        train_loss, train_accuracy = train_epoch(
            batches.train_model, batches.train_batches, plan.optimizer, scheduler,
            device=device, amp=amp, scaler=scaler, bar=bar, class_weights=class_weights,
        )
        val_loss, val_accuracy, probabilities = evaluate(
            built.model, batches.val_batches, device=device, amp=amp, head=batches.head
        )
        val_score = None if config.scoring == "accuracy" or val_labels is None else score(
            config.scoring, val_labels, probabilities.argmax(1).numpy())
        bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_accuracy:.3f}",
                        val_loss=f"{val_loss:.3f}", val_acc=f"{val_accuracy:.3f}")
    return EpochRecord(
        epoch, plan.optimizer.param_groups[-1]["lr"], train_loss, train_accuracy, val_loss,
        val_accuracy, time.perf_counter() - epoch_started,
        "+".join([*reversed(unfrozen), HEAD_GROUP]), batches.size, val_score,
    )


def _load_best(built: _Built, plan: _Plan, checkpoint: Path) -> None:
    """Load the best checkpoint into the model, frozen and in eval mode."""
    model = built.model
    model.load_state_dict(torch.load(checkpoint, map_location=plan.device, weights_only=True))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()


def _write_predictions(built: _Built, plan: _Plan, images: _Images, run_dir: Path
                       ) -> tuple[dict[str, float], float | None]:
    """The best model's predictions on val and test into ``predictions.csv`` (what
    ``cnncodes report --per-class --confusion`` reads). Returns the per-class scores on
    test, else val, and the test accuracy (None without test images)."""
    classes, items, rows = built.source.classes, built.source.items, []
    test_accuracy = None
    for split in ("val", "test"):
        bank = images.banks.get(split)
        if bank is None or not images.splits.get(split):
            continue
        positions = [p for p in images.splits[split] if p in bank.images]
        _, accuracy, probabilities = evaluate(
            built.model, images.loader(split, images.eval_transform, False),
            device=plan.device, amp=plan.amp,
        )
        if split == "test":
            test_accuracy = accuracy
        predicted = probabilities.argmax(1).tolist() if len(positions) else []
        rows += [{"path": display_path(items[p].path), "split": split,
                  "label": classes[items[p].label], "predicted": classes[k]}
                  for p, k in zip(positions, predicted, strict=True)]
    frame = pd.DataFrame(rows, columns=["path", "split", "label", "predicted"])
    frame.to_csv(run_dir / PREDICTIONS_FILE, index=False)
    scored = frame[frame["split"] == ("test" if (frame["split"] == "test").any() else "val")]
    if scored.empty:
        return {}, test_accuracy
    return {
        "mean_per_class_accuracy": score("balanced_accuracy", scored["label"], scored["predicted"]),
        "macro_f1": score("macro_f1", scored["label"], scored["predicted"]),
    }, test_accuracy


def _result(
    config: FinetuneConfig, built: _Built, plan: _Plan, images: _Images, training: _Training,
    test_accuracy: float | None, *, run_dir: Path, started: float,
) -> FinetuneResult:
    """What the run did: parameter counts and rates per group, the scores of the best epoch."""
    params, by_group = built.params, plan.trainable_by_group
    counts = {g: sum(params[p].numel() for p in by_group[g]) for g in by_group}
    group_rows = [
        {"group": g.name, "lr": plan.learning_rates.get(g.name, 0.0),
         "trainable_params": counts.get(g.name, 0),
         "total_params": sum(params[p].numel() for p in g.params)}
        for g in built.groups
    ]
    best_record = training.history[training.best_epoch - 1]
    return FinetuneResult(
        run_dir=run_dir, strategy=config.strategy,
        trained=_describe(built.model, built.head_path, list(reversed(built.order)), built.start),
        trainable_params=sum(counts.values()),
        total_params=sum(p.numel() for p in built.model.parameters()),
        groups=group_rows, history=training.history, best_epoch=training.best_epoch,
        val_accuracy=best_record.val_accuracy, val_loss=best_record.val_loss,
        train_accuracy=best_record.train_accuracy, test_accuracy=test_accuracy,
        seconds=time.perf_counter() - started, skipped=images.skipped,
        validation=images.validation,
        stages=stage_records(_epoch_sizes(config, images.eval_transform), training.history),
    )


def stage_records(epoch_sizes: list[int], history: list[EpochRecord]) -> list[dict[str, Any]]:
    """Per training size, in order: the epochs planned and run, and the val accuracy (at
    the model's own size) of the stage's best and last epochs; the best as the run chooses
    it (by ``val_score`` when the run scores otherwise, then the lower val loss)."""
    stages: list[dict[str, Any]] = []
    for size in dict.fromkeys(epoch_sizes):
        run = [record for record in history if record.size == size]
        entry: dict[str, Any] = {"size": size, "epochs": epoch_sizes.count(size),
                                 "epochs_run": len(run)}
        if run:
            best = max(run, key=lambda record: record.rank)
            if best.val_score is not None:
                entry["val_score"] = best.val_score
            entry.update(first_epoch=run[0].epoch, last_epoch=run[-1].epoch,
                         best_epoch=best.epoch, val_accuracy=best.val_accuracy,
                         last_val_accuracy=run[-1].val_accuracy,
                         seconds=round(sum(record.seconds for record in run), 2))
        stages.append(entry)
    return stages


def stages_text(stages: list[dict[str, Any]]) -> str:
    """``128px x2 val 0.812; 224px x2 val 0.875``: each stage's size, epochs run, best val
    accuracy (the ``stages`` column of a progressive-resizing run's report row)."""
    return "; ".join(f"{s['size']}px x{s['epochs_run']} val {s.get('val_accuracy', float('nan')):.3f}"
                     for s in stages)


def _save_run(
    config: FinetuneConfig, built: _Built, plan: _Plan, images: _Images, result: FinetuneResult,
    scores: dict[str, float],
) -> None:
    """Write ``curves.png`` and ``finetune.json`` (config, model, head, result, report row)."""
    backbone, sizes, run_dir = built.backbone, images.sizes, result.run_dir
    plot_curves({f"strategy {config.strategy}": result.history}, result.curves_path,
                title=f"{backbone.name} on {built.source.name}: {result.trained}")
    _write_json(run_dir / FINETUNE_FILE, {
        "format": "cnncodes-finetune",
        "cnncodes_version": __version__,
        "torch_version": torch.__version__,
        # the held-out paths, when given, are under "validation"
        "config": {k: v for k, v in asdict(config).items() if k != "val_paths"},
        "validation": result.validation,
        # progressive resizing: per training size (one stage at the model's own without)
        "stages": result.stages,
        "model": backbone.name,
        "weights": backbone.weights,
        "weights_sha256": backbone.weights_sha256,
        "classes": built.source.classes,
        "transform": transform_spec(images.eval_transform),
        "head": {"path": built.head_path, "hidden": list(config.head_sizes),
                 "replace_fc": config.replace_fc, "dropout": config.dropout},
        "unfreeze_from_node": built.start,
        "groups": result.groups,
        "device": str(plan.device),
        "amp": plan.amp,
        "result": {
            "trained": result.trained, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "val_accuracy": result.val_accuracy,
            "val_loss": result.val_loss, "train_accuracy": result.train_accuracy,
            "test_accuracy": result.test_accuracy, "seconds": round(result.seconds, 2),
            "n_train": sizes["train"], "n_val": sizes["val"], "n_test": sizes["test"],
        },
        "skipped": [list(s) for s in result.skipped],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # the columns of 'cnncodes report' (cnncodes.report.RUN_COLUMNS) this run has
        "row": {
            "run": run_dir.name, "backbone": backbone.name, "weights": backbone.weights,
            "layer": built.start, "pipeline": f"finetune strategy {config.strategy}",
            "params": result.trained, "selected_on": "val", "n_train": sizes["train"],
            "train_accuracy": result.train_accuracy, "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy, "fit_seconds": round(result.seconds, 3),
            **{key: round(value, 4) for key, value in scores.items()},
            **({"stages": stages_text(result.stages)} if config.sizes else {}),
        },
    })


def _decode_splits(
    source: ImageSource, splits: dict[str, list[int]], config: FinetuneConfig, side: int,
) -> tuple[dict[str, ImageBank], dict[str, Any]]:
    """Decode every split once; hold a validation set out of train when there is no val.

    Training images are augmented anyway: they are kept at the resize size. Val and test
    images stay as decoded, so that accuracy here is accuracy at prediction time. A
    carve-out is drawn from the training images that decoded, as a code store of the
    source holds them, so that ``compare``'s strategies 1-2 and 3-4 agree on it; its
    images are then decoded again at full size (a fifth of train, by default).

    Updates ``splits["train"]`` and ``splits["val"]`` in place when it holds images out.
    """
    progress = config.progress
    banks = {"train": ImageBank(source, splits["train"], side, progress=progress,
                                desc="decode train")}
    validation: dict[str, Any] = {}
    if not splits["val"]:
        readable = banks["train"].positions
        paths = [source.items[p].path for p in readable]
        if config.val_paths is not None:
            missing = sorted(set(config.val_paths) - set(paths))
            if missing:
                raise CnnCodesError(
                    f"{len(missing)} of the {len(config.val_paths)} val_paths are not readable "
                    f"training images of {config.source!r} (first: {missing[0]!r}); give paths "
                    "relative to the source, as a code store lists them."
                )
            chosen = list(config.val_paths)
            validation = validation_record(chosen, origin="given")
        else:
            labels = [source.items[p].label for p in readable]
            chosen = carve_validation(paths, labels, config.val_fraction, config.seed)
            validation = validation_record(
                chosen, origin="carved from train" if source.has_split else "carved from all",
                fraction=config.val_fraction, seed=config.seed,
            )
        held_out = set(chosen)
        splits["val"] = [p for p in splits["train"] if source.items[p].path in held_out]
        splits["train"] = [p for p in splits["train"] if source.items[p].path not in held_out]
        banks["train"].drop(splits["val"])
    if not banks["train"].positions or not splits["val"]:
        raise CnnCodesError(
            f"Source {str(source.root)!r} has {len(banks['train'].positions)} readable "
            f"training and {len(splits['val'])} validation images; fine-tuning needs both "
            "(at least two images of a class to hold one out, or a val/ folder)."
        )
    banks["val"] = ImageBank(source, splits["val"], None, progress=progress, desc="decode val")
    banks["test"] = ImageBank(source, splits["test"], None, progress=progress, desc="decode test")
    if not validation:  # the source's own val split: the images of it that decoded
        validation = validation_record(
            [source.items[p].path for p in banks["val"].positions], origin="val split"
        )
    return banks, validation


def _save(model: nn.Module, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)  # a killed run never leaves half a checkpoint


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")


def load_run(run_dir: str | os.PathLike[str]) -> tuple[nn.Module, Any, list[str], dict[str, Any]]:
    """Rebuild a fine-tuned model from its run folder.

    Returns:
        ``(model in eval mode on the CPU, eval transform, class names, finetune.json)``.

    Raises:
        CnnCodesError: the folder is not a fine-tuning run or its checkpoint is missing.
    """
    run = Path(run_dir)
    meta_path, checkpoint = run / FINETUNE_FILE, run / CHECKPOINT_FILE
    if not meta_path.is_file() or not checkpoint.is_file():
        raise CnnCodesError(
            f"{str(run)!r} is not a fine-tuning run (needs {FINETUNE_FILE} and "
            f"{CHECKPOINT_FILE}); make one with 'cnncodes finetune SOURCE'."
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    backbone = load_backbone(meta["model"], "none")  # the checkpoint holds every weight
    head = meta["head"]
    install_head(backbone.model, len(meta["classes"]), hidden=head["hidden"],
                 replace_fc=head["replace_fc"], dropout=head["dropout"])
    try:  # weights_only: a pickle that would run code is refused, nothing runs
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        backbone.model.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable file
        raise CnnCodesError(
            f"Run {str(run)!r}: {CHECKPOINT_FILE} could not be read as a PyTorch state dict "
            f"({error.__class__.__name__}); fine-tune it again."
        ) from None
    return backbone.model.eval(), transform_from_spec(meta["transform"]), meta["classes"], meta


@torch.no_grad()
def predict_run(
    run_dir: str | os.PathLike[str], source: str | os.PathLike[str] | ImageSource,
    *, batch_size: int = 32, device: str = "auto", progress: bool = False,
) -> pd.DataFrame:
    """Classify every image of ``source`` with a fine-tuned run.

    Returns:
        One row per image: ``path``, ``label`` ("" when unknown), ``split`` (when the
        source has one), ``predicted``, ``proba_<class>`` per class. Unreadable images are
        listed in ``frame.attrs["skipped"]`` as (path, reason).
    """
    if not isinstance(source, ImageSource) and str(source).lower().endswith((".h5", ".hdf5")):
        raise CnnCodesError(
            f"{str(run_dir)!r} is a fine-tuned run: it predicts from images, not from a code "
            f"store such as {str(source)!r}; give an image folder or CSV manifest."
        )
    model, transform, classes, _ = load_run(run_dir)
    if not isinstance(source, ImageSource):
        source = open_source(source)
    target = resolve_device(device)
    model.to(target)
    loader = torch.utils.data.DataLoader(
        ImageDataset(source, range(len(source.items)), transform), batch_size=batch_size,
        collate_fn=collate_items, num_workers=0,
    )
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    with Progress(loader, desc="predict", unit="batch", enabled=progress, leave=False) as bar:
        for batch in bar:
            skipped += [(source.items[p].path, reason) for p, reason in batch["skipped"]]
            if batch["images"] is None:
                continue
            probabilities = model(batch["images"].to(target)).float().softmax(1).cpu().numpy()
            for position, row in zip(batch["positions"], probabilities, strict=True):
                item = source.items[position]
                label = source.classes[item.label] if 0 <= item.label < len(source.classes) else ""
                entry: dict[str, Any] = {"path": item.path, "label": label}
                if source.has_split:
                    entry["split"] = item.split
                entry["predicted"] = classes[int(row.argmax())]
                entry.update({f"proba_{name}": float(p) for name, p in zip(classes, row, strict=True)})
                rows.append(entry)
    frame = pd.DataFrame(rows)
    frame.attrs["skipped"] = skipped
    return frame
