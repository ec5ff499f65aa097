"""Images a network responds to: activation maximisation and DeepDream.

**Activation maximisation** (Erhan et al. 2009; Olah, Mordvintsev & Schubert 2017, "Feature
Visualization") starts from seeded noise and follows the gradient of one channel's mean
activation (or one class logit) with respect to the input. Left alone, that gradient
builds high-frequency patterns no photo contains, so three regularisers shape it:

- a **Fourier parametrisation**: the optimised numbers are the image's 2-D spectrum, each
  frequency scaled by 1/frequency, so that a step of the optimiser changes coarse structure
  as easily as fine detail (gradient descent on raw pixels favours the finest);
- **decorrelated colour**: the three parameter planes are mapped to RGB through the square
  root of ImageNet's colour covariance, so the optimiser works in independent colour axes;
  a sigmoid keeps every pixel in [0, 1];
- **jitter**: every step the image is shifted by up to ``jitter`` pixels and rescaled by up
  to 5 %, so only patterns that survive small shifts keep growing.

The network sees the pixels after its own normalisation (the weights' mean and std), the
input it was trained on. Activations are those of the node ``cnncodes layers`` lists; many
such nodes end in a ReLU or ReLU6 (in EfficientNet-Lite every ``bn1``/``bn2`` and the head
``bn2`` clamp to [0, 6]), so their channel means are non-negative and at most 6 there.

**DeepDream** (Mordvintsev, Olah & Tyka 2015) starts from a real photo instead and
amplifies whatever a layer already sees: gradient ascent on the mean square of the layer's
activations, normalised steps, random shifts, and *octaves*: the photo is processed from a
small scale up, the detail added at each scale carried to the next.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..errors import CnnCodesError
from ..nets.backbones import DEFAULT_MODEL, Backbone, load_backbone
from ..nets.layers import _fx, resolve_layer
from ..paths import default_dir, safe_name
from ..progress import Progress, log
from .explain import _traces, input_normalisation, traced_names

__all__ = [
    "DreamConfig",
    "DreamResult",
    "MaximizeConfig",
    "MaximizeResult",
    "deep_dream",
    "dream",
    "layer_tap",
    "maximize",
    "maximize_activation",
    "parse_channels",
    "unit_means",
]

# Square root of ImageNet's RGB covariance (its columns are the principal colour axes
# scaled by the square root of their variance), as used by Olah et al. (2017).
_COLOUR_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
_SCALES = (0.95, 0.975, 1.0, 1.025, 1.05)


@dataclass
class MaximizeResult:
    """Images optimised to excite one unit each, and how much they excite it.

    Attributes:
        layer: the FX node whose units were maximised (the logits node for classes).
        units: the channel (or class) index of each image.
        labels: a short name per image (``"channel 3"``, ``"tabby cat"``).
        start: each unit's activation (channel mean, or logit) on its starting noise.
        final: the same on the optimised image.
        images: ``[N, H, W, 3]`` float pixels in [0, 1].
    """

    layer: str
    units: list[int]
    labels: list[str]
    start: np.ndarray
    final: np.ndarray
    images: np.ndarray


@dataclass
class DreamResult:
    """A photo before and after DeepDream at one layer.

    Attributes:
        layer: the FX node amplified.
        original: ``[H, W, 3]`` pixels in [0, 1] at the processing size.
        dreamed: the dreamed image, same size.
        start: root mean square of the layer's activations on ``original``.
        final: the same on ``dreamed``.
        sizes: the ``(height, width)`` of each octave, smallest first.
    """

    layer: str
    original: np.ndarray
    dreamed: np.ndarray
    start: float
    final: float
    sizes: list[tuple[int, int]] = field(default_factory=list)


# --- layers, channels and the network input ---------------------------------------------------


def layer_tap(backbone: Backbone, layer: int | str) -> tuple[str, nn.Module]:
    """The resolved node name and a module mapping an input batch to that node's output.

    The traced graph stops at the node, so an early layer costs only the layers before it;
    node names and taps are traced once per model (the explainers' trace cache).

    Raises:
        CnnCodesError: unknown layer name or index out of range.
    """
    cache = _traces(backbone)
    name = resolve_layer(backbone, layer, traced_names(backbone))
    if ("output", name) not in cache:
        body = _fx(backbone).create_feature_extractor(backbone.model, return_nodes={name: "out"})
        body = body.eval()
        for parameter in body.parameters():
            parameter.requires_grad_(False)
        cache["output", name] = _Output(body)
    return name, cache["output", name]


class _Output(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)["out"]
        if not isinstance(out, torch.Tensor):
            raise CnnCodesError(
                f"The chosen layer gives a {type(out).__name__}, not a tensor; pick another "
                "node from 'cnncodes layers'."
            )
        return out


def unit_means(activation: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` per-channel means: over space for ``[N, C, H, W]`` maps, over tokens for
    ``[N, T, C]`` sequences; ``[N, C]`` vectors (pooled codes, logits) as they are."""
    if activation.ndim == 4:
        return activation.mean(dim=(2, 3))
    if activation.ndim == 3:
        return activation.mean(dim=1)
    return activation.reshape(activation.shape[0], -1)


def parse_channels(text: str, count: int, layer: str, model: str = "") -> list[int]:
    """``"0-7"``, ``"3"`` or ``"1,4,9-12"`` as a list of channel indices (in order, no repeats).

    Raises:
        CnnCodesError: bad syntax, or an index outside the layer's ``count`` channels.
    """
    chosen: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise CnnCodesError(
                f"Channels {text!r} are not a list of indices or ranges; write e.g. '0-7' or "
                "'3,5,10-12'."
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise CnnCodesError(f"Channel range {part.strip()!r} runs backwards; write it as "
                                f"'{last}-{first}'.")
        if last >= count:
            where = f" of {model}" if model else ""
            raise CnnCodesError(
                f"Channel {last} is out of range: layer {layer!r}{where} has {count} channels "
                f"(0..{count - 1}); see 'cnncodes layers {model or 'MODEL'}'."
            )
        chosen.extend(c for c in range(first, last + 1) if c not in chosen)
    return chosen


# --- activation maximisation --------------------------------------------------------------------


class FourierImage(nn.Module):
    """``count`` images of ``size`` x ``size`` pixels parametrised by a scaled spectrum in
    decorrelated colour (see the module docstring); calling it gives pixels in [0, 1]."""

    scale: torch.Tensor

    def __init__(self, count: int, size: int, generator: torch.Generator, noise: float = 0.05):
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        frequency = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / size)
        self.register_buffer("scale", 1.0 / frequency)
        shape = (count, 3, size, size // 2 + 1, 2)
        self.spectrum = nn.Parameter(noise * torch.randn(shape, generator=generator))
        self.size = size

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        planes = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        colour = _COLOUR_SQRT / _COLOUR_SQRT.norm(dim=0).max()
        rgb = torch.einsum("ij,njhw->nihw", colour, planes)
        return torch.sigmoid(rgb)


def _jitter(pixels: torch.Tensor, jitter: int, generator: torch.Generator) -> torch.Tensor:
    """Shift by up to ``jitter`` pixels (wrapping round) and rescale by up to 5 %."""
    if jitter <= 0:
        return pixels
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
    shifted = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3))
    scale = _SCALES[int(torch.randint(len(_SCALES), (1,), generator=generator))]
    if scale == 1.0:
        return shifted
    return F.interpolate(shifted, scale_factor=scale, mode="bilinear", align_corners=False)


def maximize_activation(
    backbone: Backbone,
    layer: int | str | None = None,
    units: Sequence[int] = (0,),
    *,
    labels: Sequence[str] = (),
    steps: int = 128,
    lr: float = 0.05,
    size: int | None = None,
    jitter: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> MaximizeResult:
    """Optimise one image per unit so that the unit's mean activation is as high as it gets.

    Args:
        backbone: the network.
        layer: node name or index (``cnncodes layers``); ``None`` or ``-1`` means the logits,
            whose units are classes.
        units: channel (or class) indices, one image each, optimised together in one batch.
        labels: a name per unit for figures; default ``"channel K"``.
        steps: Adam steps.
        lr: Adam's learning rate on the spectrum parameters.
        size: image side in pixels; default the network's input size.
        jitter: largest random shift per step, in pixels (0: no jitter and no rescaling).
        seed: seeds the starting noise and the jitter: the same seed gives the same images.
        progress: a progress bar (or one summary line) on stderr.

    Raises:
        CnnCodesError: unknown layer, a unit out of range, or a non-positive steps/size/lr.
    """
    size = size or backbone.input_size
    _check_positive(steps=steps, size=size, lr=lr)
    name, tap = layer_tap(backbone, -1 if layer is None else layer)
    mean, std = input_normalisation(backbone)
    generator = torch.Generator().manual_seed(seed)
    image = FourierImage(len(units), size, generator)
    index = torch.tensor(list(units))
    rows = torch.arange(len(units))

    def objective(pixels: torch.Tensor) -> torch.Tensor:
        return unit_means(tap((pixels - mean) / std))[rows, index]

    with torch.no_grad():
        start = objective(image())
    optimiser = torch.optim.Adam(image.parameters(), lr=lr)
    with torch.enable_grad(), Progress(total=steps, desc="maximize", unit="step",
                                       enabled=progress) as bar:
        for _ in range(steps):
            optimiser.zero_grad()
            values = objective(_jitter(image(), jitter, generator))
            (-values.sum()).backward()
            optimiser.step()
            bar.update()
            bar.set_postfix(mean=f"{float(values.detach().mean()):.3g}")
    with torch.no_grad():
        pixels = image()
        final = objective(pixels)
    return MaximizeResult(
        layer=name, units=[int(u) for u in units],
        labels=list(labels) or [f"channel {u}" for u in units],
        start=start.numpy().astype(np.float64), final=final.numpy().astype(np.float64),
        images=pixels.permute(0, 2, 3, 1).numpy(),
    )


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise CnnCodesError(f"--{key} must be positive; got {value!r}.")


# --- DeepDream -----------------------------------------------------------------------------------


def _resize(pixels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(pixels, size=shape, mode="bilinear", align_corners=False)


def deep_dream(
    backbone: Backbone,
    image: Image.Image,
    layer: int | str,
    *,
    octaves: int = 3,
    octave_scale: float = 1.4,
    steps: int = 10,
    lr: float = 0.02,
    size: int | None = None,
    jitter: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> DreamResult:
    """Amplify what ``layer`` sees in ``image`` (DeepDream).

    Args:
        backbone: the network.
        image: an RGB photo.
        layer: node name or index, as ``cnncodes layers`` shows.
        octaves: number of scales, each ``octave_scale`` times the previous one.
        octave_scale: ratio between successive scales.
        steps: gradient-ascent steps per octave.
        lr: step length in pixel units ([0, 1]) per step; each step's gradient is divided
            by its mean absolute value first.
        size: longer side of the processed photo; default 1.5 x the network's input size.
        jitter: largest random shift per step, in pixels.
        seed: seeds the shifts.
        progress: a progress bar (or one summary line) on stderr.

    Raises:
        CnnCodesError: unknown layer or non-positive settings.
    """
    _check_positive(octaves=octaves, steps=steps, lr=lr, octave_scale=octave_scale)
    size = size or round(1.5 * backbone.input_size)
    _check_positive(size=size)
    name, tap = layer_tap(backbone, layer)
    mean, std = input_normalisation(backbone)
    generator = torch.Generator().manual_seed(seed)
    ratio = size / max(image.size)
    full = (max(1, round(image.height * ratio)), max(1, round(image.width * ratio)))
    base = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    base = _resize(base.permute(2, 0, 1)[None], full).clamp(0, 1)
    sizes = [
        (max(16, round(full[0] / octave_scale**k)), max(16, round(full[1] / octave_scale**k)))
        for k in reversed(range(int(octaves)))
    ]

    def energy(pixels: torch.Tensor) -> torch.Tensor:
        return tap((pixels - mean) / std).float().pow(2).mean()

    detail = torch.zeros(1, 3, *sizes[0])
    with Progress(total=len(sizes) * steps, desc="dream", unit="step", enabled=progress) as bar:
        for shape in sizes:
            scaled = _resize(base, shape)
            pixels = (scaled + _resize(detail, shape)).clamp(0, 1)
            for _ in range(steps):
                pixels = _ascend(pixels, energy, jitter, lr, generator)
                bar.update()
            detail = pixels - scaled
    with torch.no_grad():
        start, final = (float(energy(p).sqrt()) for p in (base, pixels))
    return DreamResult(
        layer=name, original=base[0].permute(1, 2, 0).numpy(),
        dreamed=pixels[0].permute(1, 2, 0).numpy(), start=start, final=final, sizes=sizes,
    )


def _ascend(pixels: torch.Tensor, energy, jitter: int, lr: float,  # noqa: ANN001
            generator: torch.Generator) -> torch.Tensor:
    """One normalised gradient-ascent step on a randomly shifted copy of ``pixels``."""
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
    shifted = torch.roll(pixels, shifts=(dy, dx), dims=(2, 3)).requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(energy(shifted), shifted)
    gradient = torch.roll(gradient, shifts=(-dy, -dx), dims=(2, 3))
    step = lr * gradient / gradient.abs().mean().clamp_min(1e-12)
    return (pixels + step).clamp(0, 1).detach()


# --- files in, PNGs out --------------------------------------------------------------------------


@dataclass(frozen=True)
class MaximizeConfig:
    """What ``cnncodes explain maximize`` optimises.

    Attributes:
        model: backbone name (ignored with ``run``).
        weights: weights name, ``none`` or a state-dict path.
        run: a run folder whose network and classes replace ``model``.
        layer: node name or index; default the last conv map. Not with ``classes``.
        channels: channel list such as ``"0-7"`` or ``"3,5"``; default ``"0-7"``.
        classes: class names or indices: maximise these logits instead of channels.
        steps, lr, size, jitter, seed: see :func:`maximize_activation`.
        out: folder for the PNG grid and its CSV table.
        progress: progress and a summary on stderr.
    """

    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    run: str | None = None
    layer: str | None = None
    channels: str | None = None
    classes: tuple[str, ...] = ()
    steps: int = 128
    lr: float = 0.05
    size: int | None = None
    jitter: int = 8
    seed: int = 0
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.classes and (self.layer is not None or self.channels is not None):
            raise CnnCodesError(
                "--class maximises class logits, so --layer and --channels do not apply; "
                "give either --class or --layer/--channels."
            )
        _check_positive(steps=self.steps, lr=self.lr, size=1 if self.size is None else self.size)
        if self.jitter < 0:
            raise CnnCodesError(f"--jitter must be 0 or more pixels; got {self.jitter!r}.")


def _load(model: str, weights: str, run: str | None) -> Backbone:
    from .explain import backbone_from_run

    return backbone_from_run(run) if run else load_backbone(model, weights)


def _units(backbone: Backbone, config: MaximizeConfig) -> tuple[str, list[int], list[str]]:
    """The node, unit indices and labels that ``config`` asks for, checked against the
    layer's real width (one forward pass of a blank image)."""
    from .explain import last_spatial_layer, resolve_target

    if config.classes:
        layer: int | str = -1
    else:
        layer = config.layer if config.layer is not None else last_spatial_layer(backbone)
    names = traced_names(backbone)
    name, tap = layer_tap(backbone, layer)
    size = config.size or backbone.input_size
    with torch.inference_mode():
        width = int(unit_means(tap(torch.zeros(1, 3, size, size))).shape[1])
    if config.classes:
        logits = torch.zeros(1, width)
        units = []
        for text in config.classes:  # in order, a class named twice drawn once
            index = resolve_target(text, logits, backbone.categories)
            units += [] if index in units else [index]
    else:
        units = parse_channels(config.channels or "0-7", width, name, backbone.name)
    cats = backbone.categories
    if name == names[-1] and len(cats) == width:  # the logits: channels are classes
        return name, units, [f"{cats[u]} ({u})" for u in units]
    return name, units, [f"channel {u}" if name != names[-1] else f"class {u}" for u in units]


def maximize(config: MaximizeConfig | None = None, /, **options: object) -> list[Path]:
    """Optimise one image per channel (or class), draw them as a labelled grid; return the
    paths of the PNG and of a CSV with each unit's start and final activation.

    Raises:
        CnnCodesError: unknown model, layer or class, channels out of range, bad settings.
    """
    if config is None:
        config = MaximizeConfig(**options)  # type: ignore[arg-type]
    backbone = _load(config.model, config.weights, config.run)
    name, units, labels = _units(backbone, config)
    result = maximize_activation(
        backbone, name, units, labels=labels, steps=config.steps, lr=config.lr,
        size=config.size, jitter=config.jitter, seed=config.seed, progress=config.progress,
    )
    out = Path(config.out) if config.out else default_dir("explain")
    out.mkdir(parents=True, exist_ok=True)
    what = "classes" if config.classes else safe_name(name)
    stem = f"{safe_name(backbone.name)}-maximize-{what}"
    png, table = out / f"{stem}.png", out / f"{stem}.csv"
    _write_table(result, table)
    unit = "mean activation" if result.labels[0].startswith("channel ") else "logit"
    plot_maximized(
        result, png, title=f"{backbone.name}, layer {name!r}: images maximising each {unit}\n"
        f"{config.steps} Adam steps, lr {config.lr}, jitter {config.jitter} px, seed "
        f"{config.seed}; tile title: start -> final",
    )
    for label, start, final in zip(result.labels, result.start, result.final):
        log("maximize", f"{label}: {start:.3g} -> {final:.3g}", enabled=config.progress)
        if final <= 0 < config.steps and not config.classes:
            log("maximize", f"{label} stayed at {final:.3g}: no gradient reached it from "
                "this noise (a ReLU that never opened); try another --seed or more --steps.")
    return [png, table]


def _write_table(result: MaximizeResult, path: Path) -> None:
    """One row per unit: ``layer, unit, label, start, final, ratio`` (ratio empty when the
    start is not positive, where a ratio means nothing)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "unit", "label", "start", "final", "ratio"])
        for unit, label, start, final in zip(result.units, result.labels, result.start,
                                             result.final):
            ratio = f"{final / start:.6g}" if start > 0 else ""
            writer.writerow([result.layer, unit, label, f"{start:.6g}", f"{final:.6g}", ratio])


def plot_maximized(result: MaximizeResult, path: Path, *, title: str) -> None:
    """The optimised images as a grid, each titled with its unit and start -> final value."""
    from .figures import _grid, plt

    rows, columns = _grid(len(result.images))
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.2 * columns + 0.4, 2.4 * rows + 0.9), squeeze=False,
        constrained_layout=True,
    )
    for k, axis in enumerate(axes.flat):
        axis.axis("off")
        if k < len(result.images):
            axis.imshow(result.images[k])
            axis.set_title(f"{result.labels[k]}\n{result.start[k]:.3g} -> {result.final[k]:.3g}",
                           fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100)
    plt.close(figure)


@dataclass(frozen=True)
class DreamConfig:
    """What ``cnncodes explain dream`` amplifies.

    Attributes:
        image: the photo.
        layer: node name, index or container (``blocks.3``).
        model, weights, run: the network, as for :class:`MaximizeConfig`.
        octaves, octave_scale, steps, lr, size, jitter, seed: see :func:`deep_dream`.
        out: folder for the PNGs.
        progress: progress and a summary on stderr.
    """

    image: str
    layer: str
    model: str = DEFAULT_MODEL
    weights: str = "DEFAULT"
    run: str | None = None
    octaves: int = 3
    octave_scale: float = 1.4
    steps: int = 10
    lr: float = 0.02
    size: int | None = None
    jitter: int = 16
    seed: int = 0
    out: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check_positive(octaves=self.octaves, steps=self.steps, lr=self.lr,
                        size=1 if self.size is None else self.size)
        if not self.octave_scale > 1:
            raise CnnCodesError(
                f"--octave-scale must be above 1 (each octave larger); got {self.octave_scale!r}."
            )
        if self.jitter < 0:
            raise CnnCodesError(f"--jitter must be 0 or more pixels; got {self.jitter!r}.")


def dream(config: DreamConfig | None = None, /, **options: object) -> list[Path]:
    """DeepDream ``config.image`` at ``config.layer``; return the paths of the dreamed image
    (plain pixels) and of a figure with the photo beside it.

    Raises:
        CnnCodesError: unreadable image, unknown model or layer, bad settings.
    """
    from .explain import load_image

    if config is None:
        config = DreamConfig(**options)  # type: ignore[arg-type]
    photo = load_image(config.image)
    backbone = _load(config.model, config.weights, config.run)
    result = deep_dream(
        backbone, photo, config.layer, octaves=config.octaves,
        octave_scale=config.octave_scale, steps=config.steps, lr=config.lr, size=config.size,
        jitter=config.jitter, seed=config.seed, progress=config.progress,
    )
    out = Path(config.out) if config.out else default_dir("explain")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{safe_name(Path(config.image).stem)}-dream-{safe_name(result.layer)}"
    plain, beside = out / f"{stem}.png", out / f"{stem}-beside.png"
    Image.fromarray(_to_bytes(result.dreamed)).save(plain)
    change = f"activation RMS {result.start:.3g} -> {result.final:.3g}"
    plot_dream(result, beside, title=f"{Path(config.image).name}: DeepDream at "
               f"{result.layer!r} of {backbone.name}\n{config.octaves} octaves x "
               f"{config.steps} steps, lr {config.lr}; {change}")
    log("dream", f"layer {result.layer}: {change}", enabled=config.progress)
    return [plain, beside]


def _to_bytes(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def plot_dream(result: DreamResult, path: Path, *, title: str) -> None:
    """The photo and its dream side by side."""
    from .figures import plt

    height, width = result.original.shape[:2]
    figure, axes = plt.subplots(1, 2, figsize=(2 * 4.5 * width / max(height, width) + 0.4,
                                               4.5 * height / max(height, width) + 0.9),
                                constrained_layout=True)
    for axis, pixels, caption in zip(axes, (result.original, result.dreamed),
                                     ("photo", "dreamed")):
        axis.imshow(pixels)
        axis.set_title(caption, fontsize=9)
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=100)
    plt.close(figure)
