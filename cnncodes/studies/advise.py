"""Which of the four strategies to try first, from a few hundred images: the advisor.

The rule of thumb of DESIGN.md (small + similar data -> 1, small + different -> 2, large
-> 3 or 4) needs two facts about the data. :func:`advise` measures them instead of asking:

- **size**: training images per class, counted from the listing (nothing decoded);
- **distance from the backbone's training domain**, two ways, on a small stratified sample
  of the non-test images (one extraction pass of the penultimate code and the earlier
  layers ``compare`` tries, the very store a later ``compare`` with the same ``--limit``
  reads): the backbone's own ImageNet confidence (mean top-1 softmax probability, the
  baseline out-of-distribution score of Hendrycks & Gimpel, 2017), and how much better an
  earlier layer's codes separate the classes than the penultimate code
  (cross-validated logistic regression, the same probe as strategies 1 and 2).

:func:`decide` turns the measurements into a strategy and a layer, with one line of reason
per step; it is a pure function, tested on controlled inputs. Test images are never
probed: they are extracted with the sample (the store ``compare`` reads) and left out.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.sources import ImageSource, open_source
from ..data.store import CodeStore
from ..errors import CnnCodesError
from ..nets.backbones import DEFAULT_MODEL
from ..progress import log
from .significance import wilson_interval

__all__ = ["STRATEGY_NAMES", "AdviseConfig", "Advice", "Evidence", "advise", "decide"]

STRATEGY_NAMES = {
    1: "penultimate codes + linear",
    2: "earlier codes + linear",
    3: "frozen body + new head",
    4: "fine-tune top layers + new head",
}
# Inverse regularisation strengths tried per layer (standardised codes); a decade apart is
# enough to rank layers, and five values keep the whole probe to seconds.
PROBE_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class AdviseConfig:
    """What :func:`advise` measures and how it decides.

    Attributes:
        source: labelled images (folder, CSV manifest, idx folder, tar shards), as for
            ``compare``; a test split is never probed.
        model, weights, pool: the backbone and pooling you mean to use.
        layers: earlier layers to probe; None: those ``compare`` tries for strategy 2.
        limit: the data you will train on (``compare --limit``): images per class are
            counted in it.
        sample: most images of each split extracted for the probe (its non-test rows are
            probed); when every split is smaller the whole source is extracted.
        folds: cross-validation folds of the probe.
        large_per_class: median training images per class from which data counts as large.
        min_confidence: below this mean ImageNet top-1 probability the data counts as
            different from the backbone's training domain.
        margin: an earlier layer whose probe accuracy beats the penultimate code's by more
            than this also makes the data count as different.
        device: ``auto``, ``cpu``, ``cuda`` ...
        seed: folds of the probe.
        progress: the reasons and progress lines on stderr.
    """

    source: str
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    pool: str = "avg"
    layers: tuple[str, ...] | None = None
    limit: int | None = None
    sample: int = 400
    folds: int = 5
    large_per_class: int = 1000
    min_confidence: float = 0.5
    margin: float = 0.02
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("sample", self.sample, 20, "--sample 400"),
            ("folds", self.folds, 2, "--folds 5"),
            ("large_per_class", self.large_per_class, 1, "--large-per-class 1000"),
        )
        for name, value, least, example in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise CnnCodesError(
                    f"{name} must be a whole number of at least {least}, e.g. {example}; "
                    f"got {value!r}."
                )
        if not isinstance(self.min_confidence, (int, float)) or not 0 <= self.min_confidence <= 1:
            raise CnnCodesError(
                f"min_confidence must be in [0, 1], e.g. 0.5; got {self.min_confidence!r}."
            )
        if not isinstance(self.margin, (int, float)) or not 0 <= self.margin < 1:
            raise CnnCodesError(f"margin must be in [0, 1), e.g. 0.02; got {self.margin!r}.")
        if self.layers is not None and not self.layers:
            raise CnnCodesError("layers must name at least one earlier layer, or be None.")


@dataclass(frozen=True)
class Evidence:
    """What the decision rests on (every number is measured by :func:`advise`).

    Attributes:
        images_per_class: median labelled training images per class.
        cv_accuracy: probe accuracy of each layer's codes, penultimate code first.
        imagenet_confidence: mean top-1 probability of the backbone's own classifier on
            the sample; None where it could not be measured.
        unfreeze_from: where strategy 4 starts training (``compare``'s default).
    """

    images_per_class: float
    cv_accuracy: dict[str, float]
    imagenet_confidence: float | None = None
    unfreeze_from: str = ""

    @property
    def penultimate(self) -> str:
        return next(iter(self.cv_accuracy))

    @property
    def best_earlier(self) -> str | None:
        earlier = list(self.cv_accuracy)[1:]
        return max(earlier, key=self.cv_accuracy.__getitem__) if earlier else None

    @property
    def layer_gain(self) -> float:
        """Best earlier layer's probe accuracy minus the penultimate code's."""
        best = self.best_earlier
        if best is None:
            return 0.0
        return self.cv_accuracy[best] - self.cv_accuracy[self.penultimate]


@dataclass
class Advice:
    """The advised strategy and layer, the numbers behind them, and the reasons.

    Attributes:
        strategy: 1-4 as in DESIGN.md (:data:`STRATEGY_NAMES`).
        layer: the code layer (1, 2), the layer the new head sits on (3), or the first
            layer that trains (4, as ``--unfreeze-from``).
        table: one row: the advice, every measured number and the reasons (``why``).
        layers: one row per probed layer: code size, probe accuracy and its interval.
        reasons: the decision step by step, one line each.
        store_path: the code store of the sample (``cnncodes fit`` reads it as it is).
        seconds: wall time of the whole advice.
        counts: labelled training images per class name (what ``images_per_class`` is
            the median of).
    """

    strategy: int
    layer: str
    evidence: Evidence
    table: pd.DataFrame
    layers: pd.DataFrame
    reasons: list[str]
    store_path: Path
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def decide(evidence: Evidence, *, large_per_class: int = 1000, min_confidence: float = 0.5,
           margin: float = 0.02) -> tuple[int, str, list[str]]:
    """The rule of thumb on measured inputs: ``(strategy, layer, reasons)``.

    The data is *different* from the backbone's training domain when the ImageNet
    confidence is below ``min_confidence`` or an earlier layer's codes beat the penultimate
    code by more than ``margin``; otherwise *similar*. It is *large* from a median of
    ``large_per_class`` training images per class. Small data keeps the backbone frozen and
    trains a linear probe: on the earlier layer that separated the sample best when it beat
    the penultimate code by more than ``margin`` (2), else on the penultimate code (1): the
    rule of thumb's "small and different -> earlier codes" is followed where the probe
    shows it, not on a difference inside the noise of a few hundred images. Large data
    trains a new head on the frozen body when similar (3) and fine-tunes the top layers
    with it when different (4).
    """
    if not evidence.cv_accuracy:
        raise CnnCodesError("Evidence.cv_accuracy needs the penultimate code's probe accuracy "
                            "(first) and those of any earlier layers; got none.")
    reasons: list[str] = []
    large = evidence.images_per_class >= large_per_class
    reasons.append(
        f"{evidence.images_per_class:g} training images per class (median) is "
        f"{'large' if large else 'small'}: {'>=' if large else '<'} {large_per_class}"
    )
    confidence, gain, best = evidence.imagenet_confidence, evidence.layer_gain, evidence.best_earlier
    unsure = confidence is not None and confidence < min_confidence
    if confidence is None:
        reasons.append("ImageNet confidence not measured (no linear classifier on the code)")
    else:
        reasons.append(
            f"the backbone's mean ImageNet top-1 probability is {confidence:.3f}, "
            f"{'below' if unsure else 'at or above'} {min_confidence:g}"
        )
    penultimate = evidence.penultimate
    if best is not None:
        reasons.append(
            f"best earlier layer {best} probes {evidence.cv_accuracy[best]:.3f} vs "
            f"{evidence.cv_accuracy[penultimate]:.3f} for the penultimate {penultimate} "
            f"({gain * 100:+.1f} points)"
        )
    different = unsure or gain > margin
    reasons.append(f"so the data is {'different from' if different else 'similar to'} "
                   "the backbone's training domain")
    if not large:
        if best is not None and gain > margin:
            reasons.append(f"small data and {best}'s codes separate the sample better by more "
                           f"than {margin * 100:g} points: keep the backbone frozen and probe "
                           "them -> strategy 2")
            return 2, best, reasons
        if different:
            reasons.append(f"small and different, but no earlier layer separates the sample "
                           f"better by more than {margin * 100:g} points: keep the backbone "
                           "frozen and probe the penultimate code -> strategy 1")
        else:
            reasons.append("small and similar: keep the backbone frozen and probe the "
                           "penultimate code -> strategy 1")
        return 1, penultimate, reasons
    if different:
        reasons.append("large and different: fine-tune the top layers with a new head "
                       f"-> strategy 4 from {evidence.unfreeze_from or 'its default layer'}")
        return 4, evidence.unfreeze_from, reasons
    reasons.append("large and similar: train a new head on the frozen body -> strategy 3")
    return 3, penultimate, reasons


def _log(config: AdviseConfig, message: str) -> None:
    log("advise", message, enabled=config.progress)


def _class_counts(config: AdviseConfig) -> tuple[ImageSource, dict[str, int]]:
    """The source as you will train on it and its labelled training images per class."""
    source = open_source(config.source, limit=config.limit, require_labels=True)
    train = Counter(
        item.label for item in source.items
        if item.label >= 0 and not item.skip_reason and item.split in ("", "train")
    )
    if not train:
        raise CnnCodesError(
            f"advise needs labelled training images; {config.source!r} has none. Give class "
            "folders (optionally under train/), or a CSV manifest with a label column."
        )
    if len(train) < 2:
        only = source.classes[next(iter(train))]
        raise CnnCodesError(
            f"advise needs at least two classes; {config.source!r} has training images of "
            f"one class only ({only!r}). Add a folder (or label) per class."
        )
    return source, {source.classes[label]: count for label, count in sorted(train.items())}


def _sample_limit(config: AdviseConfig, source: ImageSource) -> int | None:
    """The extraction's ``limit``: the source as given when every split fits the sample
    (so that ``compare`` with the same ``--limit`` finds the store), else ``sample``."""
    per_split = Counter(item.split for item in source.items)
    return config.limit if max(per_split.values()) <= config.sample else config.sample


def _extract_sample(config: AdviseConfig, limit: int | None) -> tuple[Any, list[str], str]:
    """One pass of the penultimate code and the earlier layers ``compare`` tries; also the
    layer group strategy 4 trains from by default."""
    from ..extraction.extract import extract
    from .compare import body_layout

    earlier, unfreeze_from = body_layout(config.model)
    candidates = list(config.layers) if config.layers else earlier
    _log(config, f"codes of -2 and {', '.join(candidates)} for up to {limit or 'all'} images "
         "per split (cached when extracted before)")
    extracted = extract(
        source=config.source, model=config.model, weights=config.weights,
        layers=("-2", *candidates), pool=config.pool, limit=limit, device=config.device,
        progress=config.progress,
    )
    return extracted, list(extracted.layers), unfreeze_from


def _probe_rows(store: CodeStore) -> np.ndarray:
    """Rows the probe may use: labelled and not test."""
    keep = store.labels >= 0
    split = store.split
    if split is not None:
        keep &= split != "test"
    return np.flatnonzero(keep)


def _cv_accuracy(codes: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    """Stratified k-fold accuracy of standardised codes + logistic regression at the best
    of :data:`PROBE_C` on the same folds: optimistic by that choice, alike for every layer,
    so it ranks layers; its Wilson interval treats it as one measurement."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    correct = np.zeros(len(PROBE_C))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held in splitter.split(codes, labels):
        scaler = StandardScaler().fit(codes[train])
        fitted, held_out = scaler.transform(codes[train]), scaler.transform(codes[held])
        model = LogisticRegression(max_iter=300, tol=1e-3, warm_start=True)
        for position, c in enumerate(PROBE_C):  # weak to strong, each from the last
            model.set_params(C=c)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(fitted, labels[train])
            correct[position] += np.sum(model.predict(held_out) == labels[held])
    return float(correct.max() / len(labels))


def _imagenet_confidence(config: AdviseConfig, codes: np.ndarray) -> float | None:
    """Mean top-1 softmax probability of the backbone's own classifier on the codes, when
    the penultimate code feeds one linear layer (EfficientNet, ResNet, VGG ...)."""
    import torch
    from torch import nn

    from ..nets.backbones import load_backbone
    from ..nets.layers import node_names

    backbone = load_backbone(config.model, config.weights)
    names = node_names(backbone)
    classifier = dict(backbone.model.named_modules()).get(names[-1])
    if not isinstance(classifier, nn.Linear) or classifier.in_features != codes.shape[1]:
        return None
    with torch.no_grad():
        logits = classifier(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32)))
        return float(torch.softmax(logits, dim=1).max(dim=1).values.mean())


def _measure(config: AdviseConfig, store_path: Path, layers: list[str]
             ) -> tuple[dict[str, float], float | None, pd.DataFrame, int]:
    """Probe accuracy per layer, ImageNet confidence, the per-layer table, rows probed."""
    with CodeStore(store_path) as store:
        rows = _probe_rows(store)
        labels = store.labels[rows]
        counts = Counter(labels.tolist())
        if len(counts) < 2 or min(counts.values()) < 2:
            raise CnnCodesError(
                f"the sample of {config.source!r} has too few images per class to "
                f"cross-validate ({dict(counts)}); raise --sample or add images."
            )
        folds = min(config.folds, min(counts.values()))
        accuracy: dict[str, float] = {}
        confidence: float | None = None
        table = []
        for layer in layers:
            codes = store.codes(layer)[rows]
            accuracy[layer] = _cv_accuracy(codes, labels, folds, config.seed)
            low, high = wilson_interval(round(accuracy[layer] * len(rows)), len(rows))
            table.append({"layer": layer, "code_dim": codes.shape[1],
                          "cv_accuracy": accuracy[layer], "cv_95ci": f"{low:.3f}-{high:.3f}",
                          "n": len(rows), "folds": folds})
            _log(config, f"{layer} ({codes.shape[1]}-d): probe accuracy {accuracy[layer]:.3f} "
                 f"({low:.3f}-{high:.3f}, n={len(rows)}, {folds}-fold CV, the best of "
                 f"{len(PROBE_C)} C values on the same folds: optimistic alike for every layer)")
            if layer == layers[0]:
                confidence = _imagenet_confidence(config, codes)
    return accuracy, confidence, pd.DataFrame(table), len(rows)


def _table(strategy: int, layer: str, evidence: Evidence, counts: dict[str, int],
           probed: int, seconds: float, reasons: list[str]) -> pd.DataFrame:
    best = evidence.best_earlier
    return pd.DataFrame([{
        "strategy": strategy,
        "name": STRATEGY_NAMES[strategy],
        "layer": layer,
        "classes": len(counts),
        "train_images": sum(counts.values()),
        "images_per_class": evidence.images_per_class,
        "min_images_per_class": min(counts.values()),
        "imagenet_confidence": evidence.imagenet_confidence,
        "penultimate_layer": evidence.penultimate,
        "penultimate_cv_accuracy": evidence.cv_accuracy[evidence.penultimate],
        "best_earlier_layer": best,
        "earlier_cv_accuracy": evidence.cv_accuracy[best] if best else None,
        "sample_images": probed,
        "seconds": round(seconds, 1),
        "why": "; ".join(reasons),
    }])


def advise(config: AdviseConfig | None = None, /, **options: Any) -> Advice:
    """Measure the data's size and distance from the backbone's domain; advise a strategy.

    Call as ``advise(AdviseConfig(...))`` or ``advise(source=..., sample=300)``.

    Raises:
        CnnCodesError: unlabeled data, a single class, too few images to cross-validate,
            or any bad option of the extraction (unknown model, layer ...).
    """
    if config is None:
        config = AdviseConfig(**options)
    elif options:
        raise TypeError("Pass either an AdviseConfig or keyword options, not both.")
    started = time.perf_counter()
    source, counts = _class_counts(config)
    extracted, layers, unfreeze_from = _extract_sample(config, _sample_limit(config, source))
    accuracy, confidence, layer_table, probed = _measure(config, extracted.path, layers)
    evidence = Evidence(
        images_per_class=float(statistics.median(counts.values())), cv_accuracy=accuracy,
        imagenet_confidence=confidence, unfreeze_from=unfreeze_from,
    )
    strategy, layer, reasons = decide(
        evidence, large_per_class=config.large_per_class,
        min_confidence=config.min_confidence, margin=config.margin,
    )
    for reason in reasons:
        _log(config, reason)
    seconds = time.perf_counter() - started
    table = _table(strategy, layer, evidence, counts, probed, seconds, reasons)
    return Advice(strategy, layer, evidence, table, layer_table, reasons, extracted.path,
                  seconds, counts)
