"""Layers: list a model's tap points, resolve a user's layer spec, pool maps to codes.

FX node names are canonical. An integer is a Python index into the model's eval node list
(``-1`` the logits, ``-2`` the penultimate code, lower numbers earlier layers). A spec is
resolved once, to a node name, and that name is what the code store records.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CnnCodesError
from .backbones import Backbone

__all__ = [
    "POOLINGS",
    "LayerInfo",
    "CodeExtractor",
    "check_pool",
    "is_spatial",
    "list_layers",
    "node_names",
    "parse_index",
    "pool_codes",
    "resolve_layer",
    "resolve_layers",
]

POOLINGS = ("avg", "max", "avgmax", "none")
LARGE_CODE_DIM = 100_000


@dataclass(frozen=True)
class LayerInfo:
    """One tap point: its index in the eval node list, FX name and output shape."""

    index: int
    name: str
    shape: tuple[int, ...] | None


def check_pool(pool: str) -> str:
    """``pool`` itself when it is one of :data:`POOLINGS`.

    Raises:
        CnnCodesError: any other value, naming the allowed ones.
    """
    if pool not in POOLINGS:
        raise CnnCodesError(f"Pooling {pool!r} is not one of {', '.join(POOLINGS)}.")
    return pool


def is_spatial(shape: Sequence[int] | None) -> bool:
    """Whether a per-image output shape is a map ``C x H x W`` with more than one location."""
    return shape is not None and len(shape) == 3 and shape[1] * shape[2] > 1


def parse_index(text: str | int) -> int | None:
    """``text`` as an integer layer index, or None when it is a name."""
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def node_names(backbone: Backbone) -> list[str]:
    """The eval-mode FX node names of the backbone, in graph order."""
    return _fx(backbone).get_graph_node_names(backbone.model)[1]


def _fx(backbone: Backbone):  # noqa: ANN202 - a module
    # timm's wrappers register its leaf modules (same-padding convs, ...) with torch.fx;
    # torchvision's work for torchvision models.
    if backbone.family == "timm":
        from timm.models import _features_fx

        return _features_fx
    from torchvision.models import feature_extraction

    return feature_extraction


def resolve_layer(backbone: Backbone, spec: int | str, names: Sequence[str] | None = None) -> str:
    """Turn ``-2``, ``"-2"`` or ``"layer4"`` into the FX node name it denotes.

    Raises:
        CnnCodesError: index out of range or unknown name, with the valid range.
    """
    names = list(names) if names is not None else node_names(backbone)
    text = str(spec).strip()
    index = parse_index(text)
    if index is not None:
        if not -len(names) <= index < len(names):
            raise CnnCodesError(
                f"Layer {index} is out of range for {backbone.name} (valid "
                f"{-len(names)}..{len(names) - 1}); run 'cnncodes layers {backbone.name}'."
            )
        return names[index]
    if text in names:
        return text
    # A container module (``layer4``, ``features``, ``blocks.5``): its output is the last
    # node inside it, which is what users mean by "the output of layer4".
    inside = [n for n in names if n.startswith(text + ".")]
    if inside:
        return inside[-1]
    close = [n for n in names if n.startswith(text)][:4]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CnnCodesError(
        f"Layer {text!r} is not a node of {backbone.name}{hint}; give a node name or an index "
        f"in {-len(names)}..{len(names) - 1}; run 'cnncodes layers {backbone.name}'."
    )


def resolve_layers(backbone: Backbone, specs: Sequence[int | str],
                   names: Sequence[str] | None = None) -> list[str]:
    """Resolve several specs, keeping order and dropping repeats of the same node.

    ``names`` is :func:`node_names` of the backbone when the caller already traced it.
    """
    if not specs:
        raise CnnCodesError("No layer given; pass at least one, e.g. --layer -2.")
    names = list(names) if names is not None else node_names(backbone)
    resolved: list[str] = []
    for spec in specs:
        name = resolve_layer(backbone, spec, names)
        if name not in resolved:
            resolved.append(name)
    return resolved


def pool_codes(tensor: torch.Tensor, pool: str) -> torch.Tensor:
    """Reduce a batch of activations to one vector per image.

    ``[N, C, H, W]`` maps are pooled over space; ``[N, T, C]`` token sequences over tokens;
    ``[N, D]`` vectors are returned as they are. ``none`` flattens everything.
    """
    check_pool(pool)
    if tensor.ndim <= 2:
        return tensor.reshape(tensor.shape[0], -1)
    if pool == "none":
        return tensor.flatten(1)
    dims = tuple(range(2, tensor.ndim)) if tensor.ndim == 4 else (1,)
    if pool == "avg":
        return tensor.mean(dim=dims)
    if pool == "max":
        return tensor.amax(dim=dims)
    return torch.cat([tensor.mean(dim=dims), tensor.amax(dim=dims)], dim=1)


class CodeExtractor(nn.Module):
    """One forward pass -> pooled codes of several layers, as ``{node name: [N, D]}``."""

    def __init__(self, backbone: Backbone, layers: Sequence[str], pool: str = "avg") -> None:
        super().__init__()
        check_pool(pool)
        self.layers = list(layers)
        self.pool = pool
        self.body = _fx(backbone).create_feature_extractor(
            backbone.model, return_nodes={name: name for name in self.layers}
        ).eval()

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.body(images)
        return {name: pool_codes(outputs[name], self.pool) for name in self.layers}

    def folded(self) -> tuple[CodeExtractor, int]:
        """A copy with every eval batch norm that follows a convolution folded into it.

        An eval batch norm is a fixed per-channel scale and shift, so it can be applied
        to the convolution's weights and bias once instead of to every activation map:
        the same function, rounded differently (codes within 1e-5 of the largest unfolded
        code, tests/test_execution.py), and a forward pass that skips one full read and write
        of each of those maps. A norm is folded only when its convolution feeds nothing
        else and is not itself a tapped layer, so every returned code keeps its meaning.
        The copy is for inference only. Returns it and the number of norms folded.
        """
        copy = deepcopy(self).eval()  # a deep-copied GraphModule comes back in train mode
        count = fold_batch_norms(copy.body)
        return copy, count


def list_layers(backbone: Backbone, *, with_shapes: bool = True) -> list[LayerInfo]:
    """Every eval node with its index and (optionally) output shape for one image."""
    names = node_names(backbone)
    shapes: dict[str, tuple[int, ...] | None] = {}
    if with_shapes:
        body = _fx(backbone).create_feature_extractor(
            backbone.model, return_nodes={n: n for n in names}
        ).eval()
        size = backbone.input_size
        with torch.inference_mode():
            outputs = body(torch.zeros(1, 3, size, size))
        for name in names:
            value = outputs.get(name)
            shapes[name] = tuple(value.shape[1:]) if isinstance(value, torch.Tensor) else None
    return [LayerInfo(i, name, shapes.get(name)) for i, name in enumerate(names)]


def code_dim(shape: tuple[int, ...] | None, pool: str) -> int | None:
    """Length of the code a layer of ``shape`` gives under ``pool``."""
    if shape is None:
        return None
    if len(shape) <= 1 or pool == "none":
        dim = 1
        for size in shape:
            dim *= size
        return dim
    channels = shape[0] if len(shape) == 3 else shape[-1]
    return channels * (2 if pool == "avgmax" else 1)


# Convolutions whose forward is F.conv2d with their own weight and bias (timm's "same"
# convolutions pad first), and norms that are BatchNorm2d's eval formula (timm's
# BatchNormAct2d then runs its dropout and activation): what fold_batch_norms may rewrite.
_FOLDABLE_CONVS = {"Conv2d", "Conv2dSame", "Conv2dSameExport"}
_FOLDABLE_NORMS = {"BatchNorm2d", "BatchNormAct2d"}


def fold_batch_norms(graph_module: torch.fx.GraphModule) -> int:
    """Fold, in place, each eval batch norm of ``graph_module`` whose only input is a
    convolution that feeds nothing else (see :meth:`CodeExtractor.folded`); returns how
    many were folded."""
    modules = dict(graph_module.named_modules())
    uses: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            uses[str(node.target)] = uses.get(str(node.target), 0) + 1
    count = 0
    for node in list(graph_module.graph.nodes):
        pair = _conv_norm_pair(node, modules, uses)
        if pair is None:
            continue
        conv, norm = pair
        _fold_into(conv, norm)
        graph_module.set_submodule(str(node.target), _after_norm(norm))
        count += 1
    graph_module.recompile()
    return count


def _conv_norm_pair(node: torch.fx.Node, modules: dict[str, nn.Module], uses: dict[str, int]
                    ) -> tuple[nn.Conv2d, nn.BatchNorm2d] | None:
    norm = modules.get(str(node.target)) if node.op == "call_module" else None
    if type(norm).__name__ not in _FOLDABLE_NORMS or not isinstance(norm, nn.BatchNorm2d):
        return None
    if norm.training or norm.running_mean is None or norm.running_var is None:
        return None
    if len(node.args) != 1 or node.kwargs or uses.get(str(node.target)) != 1:
        return None
    source = node.args[0]
    if not isinstance(source, torch.fx.Node) or source.op != "call_module":
        return None
    conv = modules.get(str(source.target))
    if type(conv).__name__ not in _FOLDABLE_CONVS or not isinstance(conv, nn.Conv2d):
        return None
    if len(source.users) != 1 or uses.get(str(source.target)) != 1:  # tapped, or used twice
        return None
    return conv, norm


def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    assert norm.running_mean is not None and norm.running_var is not None
    with torch.no_grad():  # in float64, rounded once to the weights' dtype
        mean, var = norm.running_mean.double(), norm.running_var.double()
        scale = torch.rsqrt(var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
        dtype = conv.weight.dtype
        conv.weight.copy_((conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
        conv.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What is left of ``norm`` once its formula is in the convolution."""
    if type(norm).__name__ == "BatchNormAct2d":
        drop, act = norm.drop, norm.act
        assert isinstance(drop, nn.Module) and isinstance(act, nn.Module)
        return nn.Sequential(drop, act)
    return nn.Identity()
