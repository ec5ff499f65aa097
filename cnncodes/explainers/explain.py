"""Seeing inside the network: saliency, Grad-CAM, activation grids and first-layer filters.

The computations take a :class:`~cnncodes.backbones.Backbone` (or a fine-tuned run loaded
as one) and a preprocessed image tensor and return plain arrays; :func:`explain` ties them
to image files and writes one titled PNG per image (see :mod:`cnncodes.figures`).

- Saliency follows Simonyan, Vedaldi & Zisserman (2014): the gradient of the unnormalised
  class score (the logit, not the softmax) with respect to the input pixels, its absolute
  value, and the maximum over the colour channels.
- Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially averaged gradients of
  the class score with respect to a conv layer's maps; the map is the ReLU of their weighted
  sum, upsampled to the input size.
- Integrated gradients (Sundararajan, Taly & Yan 2017): the input minus a baseline, times
  the average gradient of the class score along the straight path from the baseline to
  the input (trapezoid rule over ``steps`` intervals); the map is the absolute attribution
  summed over colour. The attributions add up to the score difference between input and
  baseline, up to the quadrature error (:attr:`Attribution.delta`).

``--run`` takes a fine-tuned run or a ``cnncodes fit`` run: a fit run is explained through
its backbone, pooling, scaler and linear probe as one torch module
(:func:`cnncodes.probe.torch_probe.load_run_net`), its classes as the targets.
"""

from __future__ import annotations

import difflib
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import nn

from ..errors import CnnCodesError
from ..nets.backbones import DEFAULT_MODEL, Backbone, load_backbone
from ..nets.layers import _fx, is_spatial, list_layers, node_names, parse_index, resolve_layer
from ..paths import default_dir, safe_name

__all__ = [
    "EXPLAIN_KINDS",
    "Attribution",
    "ExplainConfig",
    "activation_maps",
    "backbone_from_run",
    "explain",
    "first_conv_filters",
    "input_normalisation",
    "traced_names",
    "gradcam",
    "ig_baseline",
    "integrated_gradients",
    "last_spatial_layer",
    "load_image",
    "preprocess",
    "resolve_target",
    "saliency",
]

EXPLAIN_KINDS = ("saliency", "gradcam", "integrated-gradients", "activations", "filters")
IG_BASELINES = ("black", "mean", "noise")
"""Integrated-gradients baselines: black pixels, the normalisation mean (an all-zero input),
or seeded uniform noise pixels."""


@dataclass
class Attribution:
    """A map over the input image for one class.

    Attributes:
        map: ``[H, W]`` float array at the network's input resolution.
        target: class index the map explains.
        score: the unnormalised class score (logit) for ``target``.
        probability: softmax probability of ``target``.
        predicted: the arg-max class index.
        layer: the FX node the map was taken at (Grad-CAM), ``""`` for saliency.
        delta: integrated gradients only: the sum of the attributions minus the score
            difference between the input and the baseline (0 for exact integration).
    """

    map: np.ndarray
    target: int
    score: float
    probability: float
    predicted: int
    layer: str = ""
    delta: float | None = None


# --- inputs --------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file to RGB.

    Raises:
        CnnCodesError: the file does not exist or is not an image PIL can decode.
    """
    path = Path(path)
    if not path.is_file():
        raise CnnCodesError(
            f"Image {str(path)!r} does not exist or is not a file; give the path of a "
            "JPEG/PNG/... image."
        )
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        reason = (str(error).split("\n")[0] or error.__class__.__name__).replace(str(path), "")
        raise CnnCodesError(
            f"Image {str(path)!r} cannot be read ({reason.strip(' :')}); give a JPEG, PNG, "
            "GIF, BMP or other file that PIL can decode."
        ) from None


def preprocess(backbone: Backbone, image: Image.Image) -> torch.Tensor:
    """The network input for ``image``: ``[1, 3, H, W]``, with the weights' own transform."""
    return backbone.transform(image).unsqueeze(0)


def backbone_from_run(run: str | os.PathLike[str]) -> Backbone:
    """Wrap a run so that the explainers can use it, detected as ``cnncodes predict`` does.

    A fine-tuned run (``cnncodes finetune``) is its own model; a ``cnncodes fit`` run is
    its backbone up to the code layer, the pooling, and the fitted scaler and linear (or
    MLP) probe as one module whose softmax equals the pipeline's ``predict_proba``. Its
    classes become the categories, so that targets are the run's own classes.

    Raises:
        CnnCodesError: the folder is not a run, or a fit run's pipeline is not linear.
    """
    from ..probe.torch_probe import load_run_net

    if not Path(run).is_dir():
        raise CnnCodesError(
            f"Run {str(run)!r} is not a folder; give a run folder written by 'cnncodes fit' "
            "or 'cnncodes finetune'."
        )
    return load_run_net(run).backbone


def resolve_target(
    target: int | str | None, logits: torch.Tensor, categories: Sequence[str]
) -> int:
    """Class index to explain: the prediction when ``target`` is None, else an index or name.

    Names match case-insensitively, first exactly, then as a unique part of a class name
    (ImageNet names such as ``"tiger cat"``).

    Raises:
        CnnCodesError: the index is out of range or the name matches no class or several.
    """
    n_classes = int(logits.shape[-1])
    if target is None:
        return int(logits.reshape(-1, n_classes)[0].argmax())
    text = str(target).strip()
    index = parse_index(text)
    if index is not None:
        if not 0 <= index < n_classes:
            raise CnnCodesError(
                f"Target class {index} is out of range; the model has {n_classes} classes "
                f"(0..{n_classes - 1})."
            )
        return index
    if not categories:
        raise CnnCodesError(
            f"Target {text!r} is a name, but this model's class names are unknown; give a "
            f"class index 0..{n_classes - 1}."
        )
    lowered = [c.lower() for c in categories]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    partial = [i for i, c in enumerate(lowered) if text.lower() in c]
    if len(partial) == 1:
        return partial[0]
    options = [categories[i] for i in partial[:5]] or difflib.get_close_matches(
        text, categories, n=5
    )
    hint = f" (did you mean {', '.join(repr(o) for o in options)}?)" if options else ""
    what = "several classes" if len(partial) > 1 else "no class"
    raise CnnCodesError(
        f"Target {text!r} matches {what}{hint}; give an exact class name or an index "
        f"0..{n_classes - 1}."
    )


# --- the maps --------------------------------------------------------------------------------


def _scores(logits: torch.Tensor, target: int) -> tuple[float, float, int]:
    row = logits.detach().reshape(-1, logits.shape[-1])[0].float()
    return float(row[target]), float(row.softmax(0)[target]), int(row.argmax())


def saliency(
    model: nn.Module,
    image: torch.Tensor,
    target: int | str | None = None,
    categories: Sequence[str] = (),
) -> Attribution:
    """Image-specific class saliency (Simonyan et al. 2014).

    Args:
        model: any classifier mapping ``[1, 3, H, W]`` to logits ``[1, K]`` (eval mode).
        image: the preprocessed input, ``[3, H, W]`` or ``[1, 3, H, W]``.
        target: class index or name; default the predicted class.
        categories: class names, for ``target`` given as a name.

    Returns:
        The ``[H, W]`` map ``max_c |d score_target / d image[c]|``.
    """
    x = image.detach().reshape(1, *image.shape[-3:]).clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        index = resolve_target(target, logits, categories)
        (gradient,) = torch.autograd.grad(logits.reshape(-1, logits.shape[-1])[0, index], x)
    score, probability, predicted = _scores(logits, index)
    heat = gradient[0].abs().amax(dim=0).numpy()
    return Attribution(heat, index, score, probability, predicted)


# Tracing a network with FX takes seconds; explaining many images reuses one trace per
# (model, layer). Weak keys: a model that is dropped frees its traces.
_TRACES: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _traces(backbone: Backbone) -> dict[Any, Any]:
    return _TRACES.setdefault(backbone.model, {})


def traced_names(backbone: Backbone) -> list[str]:
    """:func:`~cnncodes.nets.layers.node_names` of ``backbone``, traced once per model."""
    cache = _traces(backbone)
    if "names" not in cache:
        cache["names"] = node_names(backbone)
    return cache["names"]


def last_spatial_layer(backbone: Backbone) -> str:
    """The last node whose output is a spatial map: the usual Grad-CAM layer."""
    cache = _traces(backbone)
    if "last spatial" not in cache:
        spatial = [info.name for info in list_layers(backbone)[1:] if is_spatial(info.shape)]
        if not spatial:
            raise CnnCodesError(
                f"{backbone.name} has no layer with a spatial map; Grad-CAM and activation "
                "grids need a convolutional network."
            )
        cache["last spatial"] = spatial[-1]
    return cache["last spatial"]


def _tap(backbone: Backbone, layer: int | str | None) -> tuple[str, nn.Module]:
    """The layer's node name and an FX module returning ``{"layer", "logits"}``."""
    cache, names = _traces(backbone), traced_names(backbone)
    name = last_spatial_layer(backbone) if layer is None else resolve_layer(backbone, layer, names)
    if ("tap", name) not in cache:
        # The logits node itself (a layer without a map, refused later) is asked for once.
        nodes = {name: "layer", names[-1]: "logits"} if name != names[-1] else {name: "logits"}
        cache["tap", name] = _fx(backbone).create_feature_extractor(
            backbone.model, return_nodes=nodes
        ).eval()
    return name, cache["tap", name]


def _layer_and_logits(
    backbone: Backbone, layer: int | str | None, x: torch.Tensor, purpose: str
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """Forward once, returning the layer's output (in the graph) and the logits."""
    name, body = _tap(backbone, layer)
    outputs = body(x)
    activation = outputs.get("layer", outputs["logits"])
    if not isinstance(activation, torch.Tensor) or not is_spatial(activation.shape[1:]):
        shape = tuple(activation.shape[1:]) if isinstance(activation, torch.Tensor) else None
        raise CnnCodesError(
            f"Layer {name!r} of {backbone.name} gives output shape {shape}, not a conv map "
            f"(C x H x W with H x W > 1); {purpose} needs a conv layer, e.g. "
            f"{last_spatial_layer(backbone)!r}; run 'cnncodes layers {backbone.name}'."
        )
    return name, activation, outputs["logits"]


def gradcam(
    backbone: Backbone,
    image: torch.Tensor,
    layer: int | str | None = None,
    target: int | str | None = None,
) -> Attribution:
    """Grad-CAM of a conv layer for one image.

    Args:
        backbone: the network (any supported family, or a run via :func:`backbone_from_run`).
        image: the preprocessed input, ``[3, H, W]`` or ``[1, 3, H, W]``.
        layer: FX node name, index or container (``layer4``); default the last conv map.
        target: class index or name; default the predicted class.

    Returns:
        A non-negative ``[H, W]`` map at input resolution, scaled so its maximum is 1
        (all zeros when no location speaks for the class).

    Raises:
        CnnCodesError: unknown layer, or a layer without a spatial map (a linear layer, the
            pooled code, the logits).
    """
    # The input requires grad so that the graph exists even when every weight is frozen.
    x = image.detach().reshape(1, *image.shape[-3:]).clone().requires_grad_(True)
    with torch.enable_grad():
        name, activation, logits = _layer_and_logits(backbone, layer, x, "Grad-CAM")
        index = resolve_target(target, logits, backbone.categories)
        score_tensor = logits.reshape(-1, logits.shape[-1])[0, index]
        (gradient,) = torch.autograd.grad(score_tensor, activation)
    weights = gradient[0].mean(dim=(1, 2))
    cam = torch.relu((weights[:, None, None] * activation[0].detach()).sum(0))
    cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[0, 0].clamp_min(0)
    peak = float(cam.max())
    heat = (cam / peak if peak > 0 else cam).numpy()
    score, probability, predicted = _scores(logits, index)
    return Attribution(heat, index, score, probability, predicted, name)


def input_normalisation(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)`` as ``[1, 3, 1, 1]`` tensors: the weights' normalisation of [0, 1]
    pixels (none, i.e. 0 and 1, when the transform names none)."""
    from .figures import _normalisation

    stats = _normalisation(backbone.transform) or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    mean = torch.tensor(stats[0], dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32).reshape(1, 3, 1, 1)
    return mean, std


def ig_baseline(backbone: Backbone, image: torch.Tensor, baseline: str = "black",
                seed: int = 0) -> torch.Tensor:
    """The integrated-gradients starting point for ``image`` (``[1, 3, H, W]``).

    ``black``: black pixels through the weights' normalisation; ``mean``: all zeros, the
    normalisation's mean colour; ``noise``: uniform random pixels from ``seed``.

    Raises:
        CnnCodesError: another baseline name.
    """
    if baseline not in IG_BASELINES:
        raise CnnCodesError(
            f"Baseline {baseline!r} is not one of {', '.join(IG_BASELINES)}."
        )
    if baseline == "mean":
        return torch.zeros_like(image)
    mean, std = (stat.to(image.dtype) for stat in input_normalisation(backbone))
    if baseline == "black":
        pixels = torch.zeros_like(image)
    else:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.rand(image.shape, generator=generator, dtype=image.dtype)
    return (pixels - mean) / std


def integrated_gradients(
    model: nn.Module,
    image: torch.Tensor,
    target: int | str | None = None,
    categories: Sequence[str] = (),
    *,
    baseline: torch.Tensor | None = None,
    steps: int = 64,
    batch_size: int = 16,
) -> Attribution:
    """Integrated gradients (Sundararajan et al. 2017) of the class score.

    Args:
        model: any classifier mapping ``[N, 3, H, W]`` to logits ``[N, K]`` (eval mode).
        image: the preprocessed input, ``[3, H, W]`` or ``[1, 3, H, W]``.
        target: class index or name; default the predicted class.
        categories: class names, for ``target`` given as a name.
        baseline: the starting input (default all zeros; see :func:`ig_baseline`).
        steps: intervals of the trapezoid rule along the path (``steps + 1`` forward passes).
        batch_size: path points per forward pass.

    Returns:
        The ``[H, W]`` map ``sum_c |attribution|``; ``delta`` is the sum of the signed
        attributions minus ``score(image) - score(baseline)``.

    Raises:
        CnnCodesError: ``steps`` or ``batch_size`` below 1.
    """
    if steps < 1 or batch_size < 1:
        raise CnnCodesError(f"steps and batch size must be at least 1; got {steps!r}, {batch_size!r}.")
    x = image.detach().reshape(1, *image.shape[-3:])
    start = torch.zeros_like(x) if baseline is None else baseline.detach().reshape(x.shape)
    with torch.no_grad():
        logits = model(x)
    index = resolve_target(target, logits, categories)
    alphas = torch.linspace(0, 1, steps + 1, dtype=x.dtype)
    weights = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
    weights[0] = weights[-1] = 0.5 / steps
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    path_scores = []
    for chunk in torch.split(torch.arange(steps + 1), batch_size):
        points = (start + alphas[chunk].view(-1, 1, 1, 1) * (x - start)).requires_grad_(True)
        with torch.enable_grad():
            scores = model(points).reshape(len(chunk), -1)[:, index]
            (gradient,) = torch.autograd.grad(scores.sum(), points)
        total += (gradient.double() * weights[chunk].view(-1, 1, 1, 1)).sum(0)
        path_scores.append(scores.detach().double())
    attribution = (x[0] - start[0]).double() * total
    ends = torch.cat(path_scores)
    delta = float(attribution.sum() - (ends[-1] - ends[0]))
    score, probability, predicted = _scores(logits, index)
    heat = attribution.abs().sum(0).float().numpy()
    return Attribution(heat, index, score, probability, predicted, delta=delta)


def activation_maps(
    backbone: Backbone, image: torch.Tensor, layer: int | str | None = None
) -> tuple[str, np.ndarray, np.ndarray]:
    """A layer's feature maps for one image, most active channel first.

    Returns:
        ``(node name, maps [C, h, w] sorted by mean activation descending, channel indices)``.

    Raises:
        CnnCodesError: unknown layer or a layer without a spatial map.
    """
    x = image.detach().reshape(1, *image.shape[-3:])
    with torch.inference_mode():
        name, activation, _ = _layer_and_logits(backbone, layer, x, "an activation grid")
    maps = activation[0].float().numpy()
    order = np.argsort(-maps.mean(axis=(1, 2)), kind="stable")
    return name, maps[order], order


def first_conv_filters(backbone: Backbone) -> tuple[str, np.ndarray]:
    """The first convolution in graph order and its kernels ``[out, in, kh, kw]``.

    Raises:
        CnnCodesError: the model has no 2-D convolution.
    """
    modules = dict(backbone.model.named_modules())
    for name in node_names(backbone):
        module = modules.get(name)
        if isinstance(module, nn.Conv2d):
            return name, module.weight.detach().float().numpy()
    for name, module in modules.items():  # convs that tracing hides inside leaf modules
        if isinstance(module, nn.Conv2d):
            return name, module.weight.detach().float().numpy()
    raise CnnCodesError(
        f"{backbone.name} has no Conv2d layer, so there are no first-layer filters to show."
    )


# --- files in, PNGs out ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainConfig:
    """What ``cnncodes explain KIND`` draws.

    Attributes:
        kind: ``saliency``, ``gradcam``, ``integrated-gradients``, ``activations`` or
            ``filters``.
        images: image files (none for ``filters``).
        model: backbone name (ignored with ``run``).
        weights: weights name, ``none`` or a state-dict path.
        run: a run folder (``cnncodes finetune``, or ``cnncodes fit`` with a linear or MLP
            probe); its model and classes replace ``model``.
        target: class index or name; default the predicted class.
        layer: layer for ``gradcam``/``activations``; default the last conv map.
        out: folder for the PNGs.
        top: number of channels in an activation grid.
        steps: integrated gradients: intervals along the path from the baseline.
        baseline: integrated gradients: ``black``, ``mean`` or ``noise``.
        seed: integrated gradients: the seed of the ``noise`` baseline.
    """

    kind: str
    images: tuple[str, ...] = ()
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    run: str | None = None
    target: str | None = None
    layer: str | None = None
    out: str | None = None
    top: int = 32
    steps: int = 64
    baseline: str = "black"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in EXPLAIN_KINDS:
            raise CnnCodesError(
                f"Explanation {self.kind!r} is not one of {', '.join(EXPLAIN_KINDS)}."
            )
        if self.kind != "filters" and not self.images:
            raise CnnCodesError(f"explain {self.kind} needs at least one IMAGE path.")
        if self.top < 1:
            raise CnnCodesError(f"top must be at least 1 channel; got {self.top!r}.")
        if self.steps < 1:
            raise CnnCodesError(f"steps must be at least 1; got {self.steps!r}.")
        if self.baseline not in IG_BASELINES:
            raise CnnCodesError(
                f"Baseline {self.baseline!r} is not one of {', '.join(IG_BASELINES)}."
            )


def _class_name(backbone: Backbone, index: int) -> str:
    cats = backbone.categories
    return cats[index] if 0 <= index < len(cats) else f"class {index}"


def _unique_path(folder: Path, stem: str, used: set[str]) -> Path:
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return folder / name


def explain(config: ExplainConfig | None = None, /, **options: Any) -> list[Path]:
    """Draw the explanation ``config.kind`` for each image; return the PNG paths.

    Call as ``explain(ExplainConfig(...))`` or ``explain(kind="saliency", images=(...))``.

    Raises:
        CnnCodesError: unreadable image, unknown model/layer/target, or a layer that has no
            spatial map for ``gradcam``/``activations``.
    """
    from . import figures

    if config is None:
        config = ExplainConfig(**options)
    elif options:
        raise TypeError("Pass either an ExplainConfig or keyword options, not both.")
    # Read every image first: a bad path fails before the model is built.
    images = [(Path(p), load_image(p)) for p in config.images]
    backbone = backbone_from_run(config.run) if config.run else load_backbone(
        config.model, config.weights
    )
    out = Path(config.out) if config.out else default_dir("explain")
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    if config.kind == "filters":
        name, kernels = first_conv_filters(backbone)
        path = _unique_path(out, f"{safe_name(backbone.name)}-filters", used)
        title = f"{_model_label(backbone)}: first conv layer {name!r}"
        figures.plot_filters(kernels, path, title=title)
        return [path]
    if config.layer is not None and config.kind in ("gradcam", "activations"):
        resolve_layer(backbone, config.layer)  # a bad name fails before any image runs
    paths = []
    for source, image in images:
        x = preprocess(backbone, image)
        if config.kind == "activations":
            name, maps, channels = activation_maps(backbone, x, config.layer)
            path = _unique_path(out, f"{safe_name(source.stem)}-activations-{safe_name(name)}", used)
            figures.plot_activation_grid(
                maps[: config.top], channels[: config.top], path,
                title=f"{source.name}: {_model_label(backbone)}, layer {name!r} "
                f"({maps.shape[0]} channels of {maps.shape[1]}x{maps.shape[2]}), "
                f"{min(config.top, len(maps))} most active",
            )
        else:
            path = _draw_attribution(config, backbone, source, x, out, used)
        paths.append(path)
    return paths


def attribute(config: ExplainConfig, backbone: Backbone, x: torch.Tensor) -> Attribution:
    """The attribution ``config.kind`` (saliency, gradcam, integrated-gradients) of ``x``."""
    if config.kind == "saliency":
        return saliency(backbone.model, x, config.target, backbone.categories)
    if config.kind == "gradcam":
        return gradcam(backbone, x, config.layer, config.target)
    start = ig_baseline(backbone, x, config.baseline, config.seed)
    return integrated_gradients(backbone.model, x, config.target, backbone.categories,
                                baseline=start, steps=config.steps)


def _draw_attribution(config: ExplainConfig, backbone: Backbone, source: Path, x: torch.Tensor,
                      out: Path, used: set[str]) -> Path:
    from . import figures

    result = attribute(config, backbone, x)
    shown = figures.displayable(x[0], backbone.transform)
    stem = f"{safe_name(source.stem)}-{config.kind}"
    if config.kind == "gradcam":
        stem += f"-{safe_name(result.layer)}"
        what = f"Grad-CAM at {result.layer}"
    elif config.kind == "saliency":
        what = "saliency"
    else:
        what = f"integrated gradients ({config.steps} steps from {config.baseline})"
    path = _unique_path(out, stem, used)
    figures.plot_attribution(
        shown, result.map, path, kind=config.kind, layer=result.layer, title=_title(backbone, source, result, what),
    )
    return path


def _title(backbone: Backbone, source: Path, result: Attribution, what: str) -> str:
    target = _class_name(backbone, result.target)
    predicted = _class_name(backbone, result.predicted)
    line = f"{source.name}: {what} for {target!r} ({result.target}), p={result.probability:.2f}"
    if result.predicted != result.target:
        line += f"; predicted {predicted!r}"
    return f"{line}\n{_model_label(backbone)}"


def _model_label(backbone: Backbone) -> str:
    weights = backbone.weights
    if weights.startswith(("run:", "file:")):  # a path: its last part says enough
        weights = weights.split(":", 1)[0] + ":" + Path(weights.split(":", 1)[1]).name
    return f"{backbone.name}, weights {weights}"

