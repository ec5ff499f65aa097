"""Model surgery for fine-tuning: a new head, layer groups, and what to freeze.

Strategies 3 and 4 of DESIGN.md start from a pretrained backbone and differ only in what
is trained. This module turns a user's options into that plan: which module becomes the
new head (:func:`install_head`), how the body splits into layer groups for discriminative
learning rates (:func:`layer_groups`), and which parameters an ``--unfreeze-from`` spec
leaves trainable (:func:`unfrozen_groups`). No training happens here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from ..errors import CnnCodesError
from .backbones import Backbone
from .layers import parse_index, resolve_layer

__all__ = ["HEAD_GROUP", "LayerGroup", "install_head", "layer_groups", "unfrozen_groups"]

HEAD_GROUP = "head"
# A top-level Sequential with at least this many sub-containers is a chain of stages
# (timm's ``blocks``, torchvision's ``features``): each stage becomes its own group.
MIN_STAGES = 4


@dataclass
class LayerGroup:
    """Parameters that share a learning rate and are frozen or unfrozen together.

    Attributes:
        name: the module path that names the group (``blocks.5``, ``layer4``, ``head``).
        params: parameter names (``model.named_parameters()`` keys), in model order.
        positions: FX node position of each parameter (empty for the new head).
    """

    name: str
    params: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)


def _owns_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_container(module: nn.Module) -> bool:
    return any(_owns_parameters(child) for child in module.children())


def install_head(
    model: nn.Module, num_classes: int, *, hidden: Sequence[int] = (), replace_fc: int = 1,
    dropout: float = 0.2,
) -> str:
    """Replace the classifier of ``model`` (in place) with a new, randomly initialised head.

    The classifier is the last ``nn.Linear`` of the model. With ``replace_fc=N`` the last N
    linear layers (and whatever sits between them, ReLU, Dropout) are rebuilt from scratch,
    as in the classic AlexNet exercise; they must be siblings in one ``nn.Sequential``.
    ``hidden`` puts a small MLP (Linear-ReLU-Dropout per size) before the output layer.

    Returns:
        The module path of the new head (``classifier``, ``fc``, ``classifier.4``).

    Raises:
        CnnCodesError: no linear classifier, or ``replace_fc`` larger than the model allows.
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise CnnCodesError(
            f"{type(model).__name__} has no nn.Linear classifier to replace; fine-tuning "
            "needs a model with a linear head (see 'cnncodes models')."
        )
    if not 1 <= replace_fc <= len(linears):
        raise CnnCodesError(
            f"--replace-fc {replace_fc} is not possible: {type(model).__name__} has "
            f"{len(linears)} linear layer(s); give 1..{len(linears)}."
        )
    chosen = linears[-replace_fc:]
    first = chosen[0]
    old_first = model.get_submodule(first)
    assert isinstance(old_first, nn.Linear)  # chosen among the model's nn.Linear modules
    in_features = old_first.in_features
    parent_path, _, first_name = first.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if replace_fc == 1:
        head = _mlp(in_features, num_classes, hidden, dropout)
        setattr(parent, first_name, head)
        return first
    siblings = [name for name in chosen if name.rpartition(".")[0] == parent_path]
    if not isinstance(parent, nn.Sequential) or len(siblings) != len(chosen):
        raise CnnCodesError(
            f"--replace-fc {replace_fc} needs the last {replace_fc} linear layers in one "
            f"nn.Sequential, but they are {', '.join(chosen)}; use --replace-fc 1."
        )
    children = list(parent.children())
    start = int(first_name)
    # Keep the original layout (Linear, ReLU, Dropout, ..., Linear) with fresh linears.
    layout: list[nn.Module] = []
    for index, module in enumerate(children[start:]):
        if isinstance(module, nn.Linear):
            is_last = index == len(children[start:]) - 1
            layout.append(
                _mlp(module.in_features, num_classes, hidden, dropout) if is_last
                else nn.Linear(module.in_features, module.out_features)
            )
        else:
            layout.append(copy.deepcopy(module))  # ReLU, Dropout: nothing to learn
    new_parent = nn.Sequential(*children[:start], nn.Sequential(*layout))
    if parent_path:
        model.set_submodule(parent_path, new_parent)
        return f"{parent_path}.{start}"
    raise CnnCodesError("--replace-fc above 1 needs the classifier inside a sub-module.")


def _mlp(in_features: int, num_classes: int, hidden: Sequence[int], dropout: float) -> nn.Module:
    if not hidden:
        return nn.Linear(in_features, num_classes)
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    units: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        is_list = isinstance(child, (nn.Sequential, nn.ModuleList))
        parts = list(child.named_children()) if is_list else []
        if len(parts) >= MIN_STAGES and all(_is_container(part) for _, part in parts):
            units += [(f"{name}.{part_name}", part) for part_name, part in parts]
        else:
            units.append((name, child))
    return units


def layer_groups(model: nn.Module, head_path: str, names: Sequence[str]) -> list[LayerGroup]:
    """Split ``model`` into body groups, earliest first, then the head group last.

    A group is a stage of the backbone (``blocks.5``, ``layer3``, ``features.6``); small
    modules on their own (stem conv, final norm) join the nearest stage, so that "the last
    two groups" means the last two stages and what follows them.

    Args:
        model: the backbone's model after :func:`install_head`.
        head_path: what :func:`install_head` returned.
        names: the FX node names of the backbone *before* the head was installed
            (:func:`cnncodes.layers.node_names`), which give each parameter its position.
    """
    positions = _node_positions(model, names)
    head_prefix = head_path + "."

    def in_head(param: str) -> bool:
        return param == head_path or param.startswith(head_prefix)

    groups: list[LayerGroup] = []
    pending: list[str] = []  # leaf modules before the first stage join that stage
    for name, module in _units(model):
        params = [f"{name}.{p}" for p, _ in module.named_parameters()]
        params = [p for p in params if not in_head(p)]
        if not params:
            continue
        if _is_container(module):
            groups.append(LayerGroup(name, pending + params))
            pending = []
        elif groups:
            groups[-1].params += params
        else:
            pending += params
    if pending:
        groups.append(LayerGroup(pending[0].rpartition(".")[0] or pending[0], pending))
    head = LayerGroup(HEAD_GROUP, [n for n, _ in model.named_parameters() if in_head(n)])
    for group in groups:
        group.positions = [positions.get(p, -1) for p in group.params]
    return [*groups, head]


def _node_positions(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """FX node position of the module that owns each parameter.

    A parameter whose module is never called as a node (a ViT class token) takes the
    position of the parameter before it, so that positions follow model order.
    """
    first_node: dict[str, int] = {}
    for index, node in enumerate(names):
        parts = node.split(".")
        for depth in range(1, len(parts) + 1):
            first_node.setdefault(".".join(parts[:depth]), index)
    positions: dict[str, int] = {}
    previous = 0
    for param_name, _ in model.named_parameters():
        path = param_name.rpartition(".")[0]
        while path and path not in first_node:
            path = path.rpartition(".")[0]
        previous = first_node.get(path, previous) if path else previous
        positions[param_name] = previous
    return positions


def unfrozen_groups(
    backbone: Backbone, groups: Sequence[LayerGroup], unfreeze_from: str | int | None,
    names: Sequence[str], *, default_groups: int = 2,
) -> tuple[dict[str, list[str]], str]:
    """The trainable parameters of each body group for strategy 4.

    Args:
        backbone: names the model in error messages.
        groups: from :func:`layer_groups` (head last).
        unfreeze_from: node name, index into the eval node list, or container module name
            (``layer4``, ``blocks.5``), resolved with the rules of ``--layer``, except that
            a container means its *first* node, so that the whole container trains.
            ``None`` unfreezes the last ``default_groups`` body groups.
        names: the backbone's FX node names before the head was installed.

    Returns:
        ``{group name: trainable parameter names}`` for the body groups with any trainable
        parameter, and the node name where training starts.

    Raises:
        CnnCodesError: an unknown node or an index out of range (one line, with the fix).
    """
    body = list(groups[:-1])
    if unfreeze_from is None:
        if not default_groups or not body:
            return {}, "(head only)"
        chosen = body[-default_groups:][0]
        start = min(chosen.positions) if chosen.positions else 0
    else:
        text = str(unfreeze_from).strip()
        resolved = resolve_layer(backbone, text, names)
        inside = [i for i, n in enumerate(names) if n.startswith(text + ".")]
        is_container = text not in names and inside and parse_index(text) is None
        start = inside[0] if is_container else list(names).index(resolved)
    trainable: dict[str, list[str]] = {}
    for group in body:
        params = [p for p, at in zip(group.params, group.positions, strict=True) if at >= start]
        if params:
            trainable[group.name] = params
    return trainable, names[start]

